"""`python -m art.schedule_tool`: export (exact round-trips, resampling) and show (table + PNG), one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

from art import diffusers_sched, plots
from art import schedule_tool as cli
from art.schedules import Clock, Schedule, load_schedule, save_schedule
from conftest import ROOT, cli_error

SIGMAS = [80.0, 0.1 + 0.2 + 10, 1 / 3, 2 ** -30, 0.0]


@pytest.fixture
def sched_file(tmp_path):
    """A K=4 schedule file with repr-hard values and a clock (so resampling uses it)."""
    clock = Clock(np.linspace(0, 1, 5), np.array(SIGMAS))
    return str(save_schedule(Schedule('test', np.array(SIGMAS), 'euler', clock), tmp_path / 'sched.json'))


def invoke(*args):
    """Run the CLI in-process; returns the click Result (stdout and stderr separate)."""
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize('fmt', plots.EXPORT_FORMATS)
def test_export_round_trips_to_identical_grid(sched_file, tmp_path, fmt):
    result = invoke('export', sched_file, f'--format={fmt}')
    assert result.exit_code == 0, result.stderr
    grid = plots.parse_export(result.stdout, fmt)
    assert grid.tobytes() == np.array(SIGMAS).tobytes()
    out = tmp_path / 'out' / f'sigmas.{fmt}'
    assert invoke('export', sched_file, f'--format={fmt}', '--out', out).exit_code == 0
    assert out.read_text() == result.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]     # no temporary file left behind


@pytest.mark.parametrize('fmt', ['list', 'diffusers'])
def test_json_exports_are_descending_lists_ending_in_zero(sched_file, fmt):
    values = json.loads(invoke('export', sched_file, f'--format={fmt}').stdout)
    assert values == SIGMAS and values[-1] == 0.0 and all(a > b for a, b in zip(values, values[1:]))


def test_k_diffusion_export_is_a_float64_tensor(sched_file):
    text = invoke('export', sched_file, '--format=k-diffusion').stdout
    assert 'sigmas = torch.tensor([' in text and 'dtype=torch.float64' in text
    namespace = {}
    exec(text, namespace)  # pylint: disable=exec-used
    assert namespace['sigmas'].tolist() == SIGMAS


@pytest.mark.parametrize('steps', [1, 3, 9])
def test_export_resampled(sched_file, steps):
    for fmt in plots.EXPORT_FORMATS:
        grid = plots.parse_export(invoke('export', sched_file, f'--format={fmt}', f'--steps={steps}').stdout, fmt)
        assert len(grid) == steps + 1 and grid[0] == 80.0 and grid[-1] == 0.0 and (np.diff(grid) < 0).all()


@pytest.mark.parametrize('name', diffusers_sched.SCHEDULERS)
def test_export_for_a_diffusers_scheduler_prints_its_snippet(sched_file, name):
    """The snippet itself is executed against diffusers in tests/test_diffusers_sched.py."""
    result = invoke('export', sched_file, '--format=diffusers', f'--scheduler={name}', '--steps=3')
    assert result.exit_code == 0, result.stderr
    grid = load_schedule(sched_file, num_steps=3, resample=True).sigmas
    assert result.stdout == diffusers_sched.export_snippet(name, grid, f'{sched_file}: method test, K = 3')


def test_export_without_clock_resamples_log_linear(tmp_path):
    path = tmp_path / 'noclock.json'
    save_schedule(Schedule('plain', np.array(SIGMAS)), path)
    grid = json.loads(invoke('export', path, '--format=list', '--steps=6').stdout)
    assert len(grid) == 7 and grid[0] == 80.0 and grid[-2] == 2 ** -30 and grid[-1] == 0.0


def _png_size(path):
    with PIL.Image.open(path) as image:
        image.load()
        assert image.format == 'PNG'
        return image.size


def test_show_one_file_default_out(sched_file):
    result = invoke('show', sched_file)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith('| i | sched.json (K=4) |')
    assert len([row for row in lines if row.startswith('| ')]) == 1 + 5
    png = sched_file[:-len('.json')] + '.png'
    width, height = _png_size(png)
    assert 300 < width < 3000 and 200 < height < 3000


def test_show_several_files_and_baselines(sched_file, tmp_path):
    other = tmp_path / 'other.json'
    save_schedule(Schedule('other', np.array([80.0, 5.0, 0.0])), other)
    out = tmp_path / 'plots' / 'cmp.png'
    result = invoke('show', sched_file, other, '--baselines=edm,uniform,logsnr', '--out', out)
    assert result.exit_code == 0, result.stderr
    header = result.stdout.splitlines()[0]
    for name in ('sched.json (K=4)', 'other.json (K=2)', 'edm (baseline) (K=4)', 'uniform (baseline) (K=4)',
                 'logsnr (baseline) (K=4)'):
        assert name in header
    width, height = _png_size(out)
    assert 300 < width < 3000 and 200 < height < 3000


@pytest.mark.parametrize('args, message', [
    (['export', '{bad}', '--format=list'], 'sigmas must be strictly descending'),
    (['export', '{good}', '--format=npz'], "Invalid value for '--format'"),
    (['export', '{missing}', '--format=list'], 'cannot read schedule file'),
    (['export', '{good}', '--format=list', '--steps=0'], "Invalid value for '--steps'"),
    (['export', '{good}', '--format=list', '--steps=999999999'], 'not in the range 1<=x<=10000'),   # K <= MAX_STEPS
    (['export', '{good}', '--format=list', '--scheduler=EulerDiscreteScheduler'], 'needs --format=diffusers'),
    (['export', '{good}', '--format=diffusers', '--scheduler=EDMDPMSolverMultistepScheduler'], 'a step count only'),
    (['export', '{good}', '--format=diffusers', '--scheduler=Euler'], "unknown scheduler 'Euler'; supported: "),
    (['show', '{good}', '--out={txt}'], "'--out': {txt} does not end in .png; show writes a PNG picture"),
    (['show', '{bad}'], 'sigmas must be strictly descending'),
    (['show', '{good}', '--baselines=edm,nope'], "unknown baseline 'nope'"),
])
def test_errors_are_one_line(sched_file, tmp_path, args, message):
    bad = tmp_path / 'bad.json'
    data = json.loads(open(sched_file).read())
    data['sigmas'] = [80.0, 90.0, 1.0, 0.5, 0.0]
    bad.write_text(json.dumps(data))
    paths = dict(bad=bad, good=sched_file, missing=tmp_path / 'missing.json', txt=tmp_path / 'x.txt')
    result = invoke(*[a.format(**paths) for a in args])
    assert result.exit_code != 0 and result.stdout == ''
    assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1
    assert message.format(**paths) in result.stderr and not paths['txt'].exists()


def test_export_to_a_full_stdout_is_one_line(sched_file, monkeypatch, capsys):
    if not os.path.exists('/dev/full'):
        pytest.skip('no /dev/full here')
    with open('/dev/full', 'w') as full:
        monkeypatch.setattr(sys, 'stdout', full)
        with pytest.raises(SystemExit) as info:
            cli.main.main(['export', sched_file, '--format=list'])
    err = capsys.readouterr().err
    assert info.value.code == 1 and err == 'error: No space left on device; free some space or write elsewhere\n'


def test_cli_subprocess_bad_file(tmp_path):
    """The real entry point: a bad file gives one `error:` line on stderr, nothing on stdout, and exit 1."""
    (tmp_path / 'junk.json').write_text('{"format": "edm-art-schedule", "version": 1,')
    run = subprocess.run([sys.executable, '-m', 'art.schedule_tool', 'export', str(tmp_path / 'junk.json'),
                          '--format=list'],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stdout == ''
    assert run.stderr.startswith('error: ') and 'not valid JSON' in run.stderr and run.stderr.count('\n') == 1


@pytest.mark.parametrize('args, words', [
    (['export', '{good}', '--format=list', '--out={file}/sigmas.json'], '{file} is a file, not a folder'),
    (['show', '{good}', '--out={folder}'], '{folder} is a folder; give a file path'),
])
def test_out_is_checked_first_and_nothing_is_written(sched_file, tmp_path, args, words):
    paths = dict(good=sched_file, file=tmp_path / 'file', folder=tmp_path / 'folder')
    paths['file'].write_text('x')
    paths['folder'].mkdir()
    before = sorted(tmp_path.rglob('*'))
    line = cli_error(['-m', 'art.schedule_tool'] + [a.format(**paths) for a in args])
    assert words.format(**paths) in line
    assert sorted(tmp_path.rglob('*')) == before
