"""The README's recipes, scaled down: the same commands on a tiny network of ours, K=3, 2 seeds, 2 processes."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_edm_net, write_network_pkl

TORCHRUN = [os.path.join(os.path.dirname(sys.executable), 'torchrun'), '--standalone', '--nproc_per_node=2']


def _run(cmd):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_readme_recipes_run_scaled_down(tmp_path):
    readme = (ROOT / 'README.md').read_text()
    recipes = readme[readme.index('## Recipes'):readme.index('## Results')]
    # The recipe commands this test scales down are the ones the README shows.
    for command in ('torchrun --standalone --nproc_per_node=8 train_art.py', 'generate_art.py', 'fid.py -- calc'):
        assert command in recipes
    # One level, no attention: the fewest layers per forward-mode pass (the images preset takes 128 per trajectory).
    flat = dict(channel_mult=[1], attn_resolutions=[])
    cifar = write_network_pkl(tmp_path / 'cifar.pkl', tiny_edm_net(label_dim=10, **flat))
    afhq = write_network_pkl(tmp_path / 'afhq.pkl', tiny_edm_net(img_resolution=16, **flat))

    # 1. Learn the schedules (torchrun, art-rl with the images preset).
    _run(TORCHRUN + ['train_art.py', f'--outdir={tmp_path / "runs"}', '--steps=3', '--method=art-rl', '--preset=images',
                     '--iters=1', '--batch=1', f'--network={cifar}', '--device=cpu'])
    (run,) = os.listdir(tmp_path / 'runs')
    assert re.match(r'00000-art-rl-cifar-k3$', run)
    schedule = tmp_path / 'runs' / run / 'schedule-k3.json'
    # 2. Generate per budget with the learned grid (Heun), seeds split over 2 processes.
    _run(TORCHRUN + ['generate_art.py', f'--outdir={tmp_path / "out"}', '--seeds=0-1', '--subdirs', '--batch=256',
                     '--solver=heun', f'--schedule={schedule}', f'--network={cifar}', '--device=cpu'])
    assert sorted(os.listdir(tmp_path / 'out' / '000000')) == ['000000.png', '000001.png']
    # 3. FID (reference statistics of our own, offline detector), under torchrun with `--` before calc.
    _run([sys.executable, 'fid.py', 'ref', f'--data={tmp_path / "out"}', f'--dest={tmp_path / "ref.npz"}',
          '--detector=offline', '--device=cpu'])
    fid = _run(TORCHRUN + ['fid.py', '--', 'calc', f'--images={tmp_path / "out"}', '--num=2',
                           f'--ref={tmp_path / "ref.npz"}', '--detector=offline', '--device=cpu'])
    assert abs(float(fid.stdout.strip().splitlines()[-1])) < 1e-3       # a set against its own statistics
    # 4. Transfer without retraining: the same file on another network, and to another K.
    _run(TORCHRUN + ['generate_art.py', f'--outdir={tmp_path / "afhq"}', '--seeds=0-1', '--subdirs', '--solver=heun',
                     f'--schedule={schedule}', f'--network={afhq}', '--device=cpu'])
    out = _run([sys.executable, 'generate_art.py', f'--outdir={tmp_path / "k5"}', '--seeds=0', '--steps=5',
                f'--schedule={schedule}', f'--network={cifar}', '--device=cpu'])
    assert 'resampled to K=5' in out.stdout


@pytest.mark.parametrize('command', ['docker build -t edm-art .', 'python -m art.schedule_tool export'])
def test_readme_names_the_tools(command):
    assert command in (ROOT / 'README.md').read_text()
