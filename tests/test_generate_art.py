"""generate_art.py: sampling with schedule files and baseline grids through the edm.generate code path."""
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from art.schedules import Schedule, save_schedule
from conftest import ROOT


def _run(args):
    return subprocess.run([sys.executable, 'generate_art.py', '--device=cpu'] + args, cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))


def test_schedule_file_and_baseline_name(tmp_path, tiny_pkl):
    save_schedule(Schedule('test', [80.0, 5.0, 0.5, 0.0], solver='euler'), tmp_path / 's.json')
    out = _run([f'--network={tiny_pkl}', '--seeds=0-2', f'--schedule={tmp_path / "s.json"}', f'--outdir={tmp_path / "a"}'])
    assert out.returncode == 0, out.stderr
    assert 'K=3, solver euler' in out.stdout
    assert sorted(os.listdir(tmp_path / 'a')) == ['000000.png', '000001.png', '000002.png']
    assert PIL.Image.open(tmp_path / 'a-grid.png').size == (2 * 8, 2 * 8)     # 3 images of 8x8 on a 2x2 grid
    # The same file at another K is resampled with a note.
    out = _run([f'--network={tiny_pkl}', '--seeds=0', '--steps=5', f'--schedule={tmp_path / "s.json"}', f'--outdir={tmp_path / "b"}'])
    assert out.returncode == 0 and 'resampled to K=5' in out.stdout, out.stderr
    # --schedule=edm at the default solver reproduces python -m edm.generate exactly.
    out = _run([f'--network={tiny_pkl}', '--seeds=0-1', '--steps=4', '--schedule=edm', f'--outdir={tmp_path / "c"}'])
    assert out.returncode == 0, out.stderr
    ref = subprocess.run([sys.executable, '-m', 'edm.generate', f'--network={tiny_pkl}', '--seeds=0-1', '--steps=4',
                          '--device=cpu', f'--outdir={tmp_path / "d"}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    for name in ('000000.png', '000001.png'):
        assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / 'c' / name)), np.asarray(PIL.Image.open(tmp_path / 'd' / name)))


@pytest.mark.parametrize('content, pattern', [
    ('{"format": "edm-art-schedule", "version": 1, "method": "x", "num_steps": 2, "sigmas": [1, 2, 0]}', 'descending'),
    ('not json', 'not valid JSON'),
])
def test_bad_schedule_file(tmp_path, tiny_pkl, content, pattern):
    (tmp_path / 'bad.json').write_text(content)
    out = _run([f'--network={tiny_pkl}', '--seeds=0', f'--schedule={tmp_path / "bad.json"}', f'--outdir={tmp_path / "o"}'])
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1 and lines[0].startswith('error: ') and 'bad.json' in lines[0], out.stderr
    assert not (tmp_path / 'o').exists()
