"""`python -m art.bench`: the JSON output, bad schedules and bad input end in one line and write nothing."""
import json
import subprocess
import sys

import pytest

from art import bench, metrics
from art.analytic import write_random_gmm
from art.schedules import Schedule, save_schedule
from conftest import ROOT, cli_error, run_cli_in_process
from edm.guidance import guided_spec
from tiny_edm2 import TOY, tiny_edm2_net, write_edm2_pkl


def test_cli_writes_json_and_rejects_bad_schedule(tmp_path):
    out = tmp_path / 'r.json'
    code, _, err = run_cli_in_process(['-m', 'art.bench', '--network=analytic:gauss1d', '--steps=2,5',
                                       '--schedules=uniform,edm', '--metric=w2', f'--out={out}'])
    assert code == 0, err
    rows = json.loads(out.read_text())['rows']
    assert [(r['schedule'], r['steps']) for r in rows] == [('uniform', 2), ('uniform', 5), ('edm', 2), ('edm', 5)]
    bad = subprocess.run([sys.executable, '-m', 'art.bench', '--network=analytic:gauss1d', '--schedules=nope.json'],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)   # the real entry point
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode != 0 and lines[0].startswith('error: ') and len(lines) == 1


@pytest.mark.parametrize('args, pattern', [
    (['--network=analytic:nope'], 'unknown analytic spec'),
    (['--network=analytic:gauss1d', '--metric=w2', '--schedules=edm', '--steps=0'], 'steps'),
])
def test_cli_bad_input(args, pattern):
    assert pattern in cli_error(['-m', 'art.bench'] + args)


@pytest.mark.parametrize('args, words', [
    (['--out={file}/rows.json'], '{file} is a file, not a folder'),            # checked before any measurement
    (['--schedules=edm,,uniform'], "'edm,,uniform' has an empty entry"),
    (['--device=cuda'], 'CUDA is not available on this machine; use --device=cpu'),   # CUDA hidden by cli_error
    (['--device=banana'], "'banana' is not a torch device"),
    (['--network=analytic:gmm:{trunc}'], 'truncated or corrupt'),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, args, words):
    paths = dict(file=tmp_path / 'file', trunc=tmp_path / 'trunc.npz')
    paths['file'].write_text('x')
    write_random_gmm(tmp_path / 'mix.npz', k=2, shape=(1, 2, 2))
    paths['trunc'].write_bytes((tmp_path / 'mix.npz').read_bytes()[:300])
    before = sorted(tmp_path.iterdir())
    line = cli_error(['-m', 'art.bench', '--network=analytic:gauss1d', '--steps=2', '--schedules=edm', '--metric=w2',
                      f'--out={tmp_path / "rows.json"}'] + [a.format(**paths) for a in args])   # the last value counts
    assert words.format(**paths) in line
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.slow
def test_cli_on_a_guided_edm2_network(tmp_path):
    net = write_edm2_pkl(tmp_path / 'net.pkl', tiny_edm2_net(seed=1, **TOY))
    guide = write_edm2_pkl(tmp_path / 'guide.pkl', tiny_edm2_net(seed=2, **dict(TOY, model_channels=4)))
    field = guided_spec(net, guide, 2.0)
    for name, made_for in [('same.json', field), ('plain.json', net)]:
        save_schedule(Schedule('test', [80.0, 2.0, 0.0], provenance={'network': made_for}), tmp_path / name)
    out = tmp_path / 'rows.json'
    schedules = f'--schedules=edm,{tmp_path / "same.json"},{tmp_path / "plain.json"}'
    code, _, err = run_cli_in_process(['-m', 'art.bench', f'--network={net}', f'--gnet={guide}', '--guidance=2',
                                       '--steps=2', schedules, '--num=2', f'--out={out}'])
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result['network'] == field and len(result['rows']) == 3
    # Only the schedule made for the unguided network is noted as made for another one.
    notes = [line for line in err.splitlines() if line.startswith('Note:')]
    assert notes == [f'Note: {tmp_path / "plain.json"} was made for {net}, not {field}: it is a valid grid here, but '
                     f'optimised for the other network.']
    line = cli_error(['-m', 'art.bench', f'--network={net}', '--metric=fid', '--ref=ref.npz', '--steps=2',
                      '--schedules=edm'])
    assert 'decoded by its encoder' in line
    line = cli_error(['-m', 'art.bench', f'--network={net}', '--guidance=2', '--steps=2', '--schedules=edm'])
    assert '--guidance needs a guiding network' in line


def test_cli_on_a_diffusers_folder(tmp_path, tiny_diffusers, monkeypatch):
    # A 16-step reference solve instead of 512 keeps it cheap: what is tested is that the command takes the folder.
    reference = metrics.reference_endpoints
    def cheap_reference(*args, **kwargs):
        return reference(*args, **dict(kwargs, steps=16))
    monkeypatch.setattr(metrics, 'reference_endpoints', cheap_reference)
    spec, out = f'diffusers:{tiny_diffusers}', tmp_path / 'rows.json'
    code, stdout, err = run_cli_in_process(['-m', 'art.bench', f'--network={spec}', '--steps=2',
                                            '--schedules=edm,uniform', '--num=2', f'--out={out}'])
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result['network'] == spec and len(result['rows']) == 2 and '| edm |' in stdout
    line = cli_error(['-m', 'art.bench', f'--network=diffusers:{tmp_path / "none"}', '--steps=2', '--schedules=edm'])
    assert 'is not a folder; --network=diffusers:FOLDER takes a folder' in line


@pytest.mark.parametrize('args, words', [
    (['--network=analytic:gmm:{mix}', '--metric=w2'], 'exact only for Gaussian models'),   # after loading, before work
    (['--num=100000', '--repeats=2'], '200,000 latents, more than 100,000'),
    (['--repeats=101'], "'--repeats': 101 is not in the range 1<=x<=100"),
    (['--seed=9223372036854775807'], 'the latents\' seeds would pass 9,223,372,036,854,775,807'),
    (['--seed=9223372036854775808'], "'--seed': 9223372036854775808 is not in the range"),
    (['--steps=2,10001'], 'steps must be integers <= 10,000'),
])
def test_bad_sizes_and_metrics_are_one_line_in_process(tmp_path, capsys, args, words):
    write_random_gmm(tmp_path / 'mix.npz', k=2, shape=(1, 2, 2))
    with pytest.raises(SystemExit) as info:
        bench.main.main(['--network=analytic:gauss1d', '--steps=2', '--schedules=edm', f'--out={tmp_path / "r.json"}']
                        + [a.format(mix=tmp_path / 'mix.npz') for a in args])
    err = capsys.readouterr().err
    assert info.value.code != 0 and err.startswith('error: ') and err.count('\n') == 1 and words in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mix.npz']


def test_art_column_is_the_networks_clock_made_once_for_every_k(tmp_path):
    args = ['-m', 'art.bench', '--network=analytic:gauss1d', '--steps=2,5', '--schedules=edm,art', '--metric=w2',
            f'--cache-dir={tmp_path}']
    code, out, err = run_cli_in_process(args)
    assert code == 0, err
    (path,) = tmp_path.iterdir()
    assert err.count('ART clock for analytic:gauss1d: made in ') == 1 and f'(cached in {path})' in err
    art = next(line for line in out.splitlines() if line.startswith('| art |'))
    edm = next(line for line in out.splitlines() if line.startswith('| edm |'))
    assert all(float(a.strip('* ')) < float(e.strip('* ')) for a, e in zip(art.split('|')[2:-1], edm.split('|')[2:-1]))
    code, _, err = run_cli_in_process(args)
    assert code == 0 and f'from the cache ({path}), no network evaluation' in err, err
