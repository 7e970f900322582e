"""art.demo (make demo): the shipped ART schedule against EDM's grid on the default network."""
import json
import os

import numpy as np
import PIL.Image
import pytest

import art.demo
from art.demo import common_start, main, run_demo
from art.schedules import Schedule
from dnnlib.util import UserError
from art.networks import DEFAULT_NETWORK, shipped_schedule_path


@pytest.mark.slow
def test_demo_writes_comparison_and_art_beats_edm(tmp_path, monkeypatch):
    assert shipped_schedule_path(DEFAULT_NETWORK, 10) is not None, 'no schedule shipped for the default network'
    # A 32-step Heun reference instead of 128 (a quarter of the cost): rms 2.51 (EDM) and 1.80 (ART) against 2.43 and
    # 1.72, the same order by a wide margin.
    monkeypatch.setattr(art.demo, 'REFERENCE_STEPS', 32)
    summary = run_demo(DEFAULT_NETWORK, 10, str(tmp_path), seeds=[0, 1, 2, 3])
    results = summary['results']
    assert results['art']['rms'] < results['edm']['rms']
    assert results['edm']['sigmas'][0] == results['art']['sigmas'][0] == 80.0
    assert json.loads((tmp_path / 'results.json').read_text())['results']['art']['rms'] == results['art']['rms']
    assert sorted(os.listdir(tmp_path / 'art')) == ['000000.png', '000001.png', '000002.png', '000003.png']
    comparison = PIL.Image.open(tmp_path / 'comparison.png')
    assert comparison.width > 3 * 2 * 32 and comparison.height > 2 * 32


def test_grids_starting_one_ulp_apart_share_their_start():
    ulp_off = np.nextafter(3.0, 4.0)                     # where the 1-D closed form lands: 3.000000000000001
    edm = Schedule('edm', [3.0, 1.0, 0.0])
    assert common_start({'edm': edm, 'art': Schedule('closed-form', [ulp_off, 1.5, 0.0])}) == 3.0
    with pytest.raises(UserError, match="the art schedule starts at sigma = 3.00001, not at EDM's 3"):
        common_start({'edm': edm, 'art': Schedule('closed-form', [3.00001, 1.5, 0.0])})


@pytest.mark.parametrize('args, words', [
    (['--outdir={file}'], '--outdir: {file} is a file, not a folder'),            # checked before any sampling
    (['--outdir={file}/sub'], '{file} is a file, not a folder'),
    (['--seeds=0-1024'], '--seeds gives 1,025 seeds, more than the 1024'),
    (['--steps=10001'], "'--steps': 10001 is not in the range 1<=x<=10000"),
    (['--seeds=9223372036854775808'], 'seeds must be integers <= 9,223,372,036,854,775,807'),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, words):
    paths = dict(file=tmp_path / 'file')
    paths['file'].write_text('x')
    with pytest.raises(SystemExit) as info:
        main.main(['--network=analytic:gauss1d', f'--outdir={tmp_path / "out"}'] + [a.format(**paths) for a in args])
    err = capsys.readouterr().err
    assert info.value.code != 0 and err.startswith('error: ') and err.count('\n') == 1 and words.format(**paths) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file']


def test_a_network_without_shipped_schedules_gets_its_art_clock(tmp_path, capsys):
    network = 'analytic:gauss:std=0.5,shape=1x4x4'
    for outdir in ('a', 'b'):
        main.main([f'--network={network}', '--steps=3', '--seeds=0-1', f'--outdir={tmp_path / outdir}',
                   f'--cache-dir={tmp_path / "c"}'], standalone_mode=False)
    out = capsys.readouterr().out
    assert f'ART clock for {network}: made in ' in out and f'ART clock for {network}: from the cache (' in out
    results = json.loads((tmp_path / 'b' / 'results.json').read_text())['results']
    assert results['art']['method'] == 'closed-form' and results['art']['rms'] < results['edm']['rms']
