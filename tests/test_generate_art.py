"""generate_art.py: sampling with schedule files and baseline grids through the edm.generate code path."""
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

import generate_art
from art.analytic import load_analytic
from art.schedules import Schedule, save_schedule
from conftest import ROOT, cli_error, run_cli_in_process, save_tiny_diffusers
from tiny_edm2 import tiny_edm2_net, write_edm2_pkl


def _run(args, in_process=True):
    """Run generate_art.py on the CPU: its click main in this process (no torch import per run), or in_process=False
    the real entry point in a new process."""
    args = ['generate_art.py', '--device=cpu'] + args
    if in_process:
        return subprocess.CompletedProcess(args, *run_cli_in_process(args))
    return subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))


def test_schedule_file_and_baseline_name(tmp_path, tiny_pkl):
    save_schedule(Schedule('test', [80.0, 5.0, 0.5, 0.0], solver='euler', provenance={'network': 'analytic:gauss1d'}),
                  tmp_path / 's.json')
    out = _run([f'--network={tiny_pkl}', '--seeds=0-2', f'--schedule={tmp_path / "s.json"}',
                f'--outdir={tmp_path / "a"}'])
    assert out.returncode == 0, out.stderr
    assert 'K=3, solver euler' in out.stdout
    assert f'Note: {tmp_path / "s.json"} was made for analytic:gauss1d, not {tiny_pkl}' in out.stdout
    assert sorted(os.listdir(tmp_path / 'a')) == ['000000.png', '000001.png', '000002.png']
    assert PIL.Image.open(tmp_path / 'a-grid.png').size == (2 * 8, 2 * 8)     # 3 images of 8x8 on a 2x2 grid
    # The same file at another K is resampled with a note.
    out = _run([f'--network={tiny_pkl}', '--seeds=0', '--steps=5', f'--schedule={tmp_path / "s.json"}',
                f'--outdir={tmp_path / "b"}'])
    assert out.returncode == 0 and 'resampled to K=5' in out.stdout, out.stderr
    # --schedule=edm at the default solver reproduces python -m edm.generate exactly.
    out = _run([f'--network={tiny_pkl}', '--seeds=0-1', '--steps=4', '--schedule=edm', f'--outdir={tmp_path / "c"}'])
    assert out.returncode == 0, out.stderr
    code, _, err = run_cli_in_process(['-m', 'edm.generate', f'--network={tiny_pkl}', '--seeds=0-1', '--steps=4',
                                       '--device=cpu', f'--outdir={tmp_path / "d"}'])
    assert code == 0, err
    for name in ('000000.png', '000001.png'):
        c, d = (np.asarray(PIL.Image.open(tmp_path / folder / name)) for folder in ('c', 'd'))
        assert np.array_equal(c, d)


@pytest.mark.parametrize('content, pattern', [
    ('{"format": "edm-art-schedule", "version": 1, "method": "x", "num_steps": 2, "sigmas": [1, 2, 0]}', 'descending'),
    ('not json', 'not valid JSON'),
])
def test_bad_schedule_file(tmp_path, tiny_pkl, content, pattern):
    (tmp_path / 'bad.json').write_text(content)
    out = _run([f'--network={tiny_pkl}', '--seeds=0', f'--schedule={tmp_path / "bad.json"}',
                f'--outdir={tmp_path / "o"}'],
               in_process=False)   # the real entry point
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1, out.stderr
    assert lines[0].startswith('error: ') and 'bad.json' in lines[0], out.stderr
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('args, words', [
    (['--outdir={file}/out'], '{file} is a file, not a folder'),      # checked before loading, not after a batch
    (['--network=analytic:gmm:{trunc}'], 'truncated or corrupt'),
    (['--sigma_min=5', '--sigma_max=1'], 'leaves no noise levels'),
    (['--network=analytic:gauss1d', '--schedule={s80}'], "starts at sigma = 80, above the network's highest noise "
                                                         "level 3"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, words):
    paths = dict(file=tmp_path / 'file', trunc=tmp_path / 'trunc.npz', s80=tmp_path / 's80.json')
    paths['file'].write_text('x')
    np.savez(tmp_path / 'mix.npz', mu=np.zeros((2, 1, 4, 4)), std=np.ones(2), weight=np.ones(2))
    paths['trunc'].write_bytes((tmp_path / 'mix.npz').read_bytes()[:300])
    save_schedule(Schedule('test', [80.0, 5.0, 0.5, 0.0]), paths['s80'])
    before = sorted(os.listdir(tmp_path))
    line = cli_error(['generate_art.py', '--device=cpu', '--seeds=0', '--network=analytic:gauss:std=0.5,shape=1x4x4',
                      f'--outdir={tmp_path / "out"}'] + [a.format(**paths) for a in args])   # the last value counts
    assert words.format(**paths) in line
    assert sorted(os.listdir(tmp_path)) == before


def test_edm2_guided_baseline_grid_is_python_m_edm_generate(tmp_path):
    net = write_edm2_pkl(tmp_path / 'net.pkl', tiny_edm2_net(seed=1))
    guide = write_edm2_pkl(tmp_path / 'guide.pkl', tiny_edm2_net(seed=2, label_dim=0, model_channels=8))  # CFG-like
    common = [f'--network={net}', f'--gnet={guide}', '--guidance=1.5', '--seeds=0-1', '--steps=3']
    out = _run(common + ['--schedule=edm', f'--outdir={tmp_path / "a"}'])
    assert out.returncode == 0, out.stderr
    code, _, err = run_cli_in_process(['-m', 'edm.generate', '--device=cpu', f'--outdir={tmp_path / "b"}'] + common)
    assert code == 0, err
    for name in ('000000.png', '000001.png'):
        assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / 'a' / name)),
                              np.asarray(PIL.Image.open(tmp_path / 'b' / name)))
    assert PIL.Image.open(tmp_path / 'a-grid.png').size == (2 * 8, 8)


@pytest.mark.parametrize('args, words', [
    (['--gnet={guide}', '--guidance=0'], '--guidance must be a number > 0'),
    (['--guidance=2'], '--guidance needs a guiding network: give --gnet'),
    (['--gnet={guide}'], '--gnet needs --guidance'),
    (['--gnet=/no/guide.pkl', '--guidance=2'], "'/no/guide.pkl': no such file; the guiding network must be"),
    (['--gnet={big}', '--guidance=2'], 'the guiding network works on 3x16x16 images, the network on 3x8x8'),
    (['--gnet={guide}', '--guidance=2', '--network=analytic:gauss1d'], 'an analytic model takes no guiding network'),
])
def test_edm2_bad_guide_is_one_line_and_writes_nothing(tmp_path, args, words):
    paths = dict(net=write_edm2_pkl(tmp_path / 'net.pkl', tiny_edm2_net(seed=1)),
                 guide=write_edm2_pkl(tmp_path / 'guide.pkl', tiny_edm2_net(seed=2, model_channels=8)),
                 big=write_edm2_pkl(tmp_path / 'big.pkl', tiny_edm2_net(seed=2, img_resolution=16)))
    before = sorted(os.listdir(tmp_path))
    line = cli_error(['generate_art.py', '--device=cpu', '--seeds=0', f'--network={paths["net"]}',
                      f'--outdir={tmp_path / "out"}'] + [a.format(**paths) for a in args])
    assert words in line
    assert sorted(os.listdir(tmp_path)) == before


def test_a_schedule_far_below_the_network_range_gets_a_note(tmp_path, capsys):
    save_schedule(Schedule('test', [0.2, 0.05, 0.0]), tmp_path / 'low.json')
    net = load_analytic('analytic:gauss1d')                                  # T = 3: 0.2 is 15x below
    schedule = generate_art.schedule_grid(str(tmp_path / 'low.json'), net, 'analytic:gauss1d', None)
    assert schedule.num_steps == 2
    assert capsys.readouterr().out == (f'Note: {tmp_path / "low.json"} starts at sigma = 0.2, far below the network\'s '
                                       f'starting level 3: its samples begin with much less noise than the prior and '
                                       f'may be poor.\n')


def test_diffusers_folder_generates_images_of_each_class(tmp_path):
    # The baseline grid ends at the table's sigma_min (0.01 for diffusers' 1,000 linear betas), and --class reaches
    # the UNet's class embedding: the same seeds give other images (x0-predicting, so that the random UNet's images
    # are not all clipped to 0 or 255).
    folder = save_tiny_diffusers(tmp_path / 'model', prediction_type='sample')
    images = {}
    for label in (0, 2):
        code, out, err = run_cli_in_process(['generate_art.py', f'--network=diffusers:{folder}', '--seeds=0-1',
                                             '--schedule=edm', '--steps=3', f'--class={label}',
                                             f'--outdir={tmp_path / str(label)}', '--device=cpu'])
        assert code == 0, err
        assert 'Schedule edm: K=3, solver heun, sigmas [80.0, ' in out and ', 0.01, 0.0]' in out
        images[label] = [(tmp_path / str(label) / name).read_bytes() for name in ('000000.png', '000001.png')]
        assert PIL.Image.open(tmp_path / str(label) / '000000.png').size == (8, 8)
    assert images[0][0] != images[2][0] and images[0][1] != images[2][1]
    line = cli_error(['generate_art.py', f'--network=diffusers:{tmp_path / "0"}', f'--outdir={tmp_path / "out"}'])
    assert f'{tmp_path / "0"}: config.json is missing' in line                 # a folder of images is no model
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('args, words', [
    (['--seeds=9223372036854775808'], 'seeds must be integers <= 9,223,372,036,854,775,807'),   # int64 of the seeds
    (['--seeds=0-99999999999'], 'holds more than 10,000,000 integers'),
    (['--steps=999999999'], "'--steps': 999999999 is not in the range 1<=x<=10000"),
])
def test_unbounded_sizes_are_one_line_before_any_work(tmp_path, capsys, args, words):
    with pytest.raises(SystemExit) as info:                                  # refused by click, before dist.init
        generate_art.main.main(['--network=analytic:gauss1d', f'--outdir={tmp_path / "out"}'] + args)
    err = capsys.readouterr().err
    assert info.value.code != 0 and err.startswith('error: ') and err.count('\n') == 1 and words in err
    assert os.listdir(tmp_path) == []


def test_without_schedule_the_networks_art_clock_is_made_once_then_reused(tmp_path):
    common = ['--network=analytic:gauss:std=0.5,shape=1x4x4', '--seeds=0-1', '--steps=3',
              f'--cache-dir={tmp_path / "c"}']
    first, again = (_run(common + [f'--outdir={tmp_path / name}']) for name in ('a', 'b'))
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    (path,) = (tmp_path / 'c').iterdir()
    assert ' made in ' in first.stdout and f'(cached in {path})' in first.stdout
    assert f'from the cache ({path}), no network evaluation' in again.stdout
    assert all('Schedule closed-form: K=3, solver heun' in out.stdout for out in (first, again))
    for name in ('000000.png', '000001.png'):
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()
    # --disc alone, without --schedule, is python -m edm.generate: no clock.
    out = _run(common + ['--disc=edm', f'--outdir={tmp_path / "d"}'])
    assert out.returncode == 0 and 'ART clock' not in out.stdout and 'Schedule' not in out.stdout, out.stderr
