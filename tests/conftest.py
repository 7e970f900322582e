"""Shared pytest setup: the repository root on sys.path and the location of the upstream fixtures."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tests use tiny tensors: one intra-op thread per process avoids OpenMP threads spinning against each other on the
# 2 CI cores (subprocesses inherit the variable). Set before torch is imported anywhere.
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')   # idle OpenMP threads sleep instead of spinning (2-thread tests)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A copy of ../shared/fixtures (numbers written by upstream EDM), so that a clean clone tests on its own.
FIXTURES = Path(os.environ.get('EDM_ART_FIXTURES', ROOT / 'tests' / 'fixtures'))

# Float32 torch.randn draws of a seed differ in their last bits between CPU code paths (vectorised Box-Muller on AVX2
# and newer, scalar code otherwise): by up to 1.8e-6 for N(0, 1) draws (1e5 draws, ATEN_CPU_CAPABILITY=default against
# avx2; float64 draws agree). Latents written on another machine match ours to this absolute bound, while a wrong seed,
# generator or order of draws moves them by O(1). See docs/edm-compat.md §1.3.
RANDN_FLOAT32_ATOL = 1e-5


@pytest.fixture(scope='session')
def fixtures_dir() -> Path:
    """Directory of the reference numbers produced by upstream EDM."""
    path = FIXTURES / 'edm-compat'
    if not path.is_dir():
        pytest.fail(f'fixtures not found at {path}; set EDM_ART_FIXTURES')
    return path


def tiny_edm_net(label_dim: int = 0, seed: int = 0):
    """A small EDMPrecond(SongUNet) with attention, cheap enough for CPU tests."""
    import torch
    from training.networks import EDMPrecond
    torch.manual_seed(seed)
    net = EDMPrecond(img_resolution=8, img_channels=3, label_dim=label_dim, model_type='SongUNet',
                     model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
    return net.eval().requires_grad_(False)


def write_network_pkl(path, net) -> str:
    """Write `net` as an upstream-style network pickle (dict with ema, loss_fn, augment_pipe, dataset_kwargs)."""
    import pickle
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs=dict()), f)
    return str(path)


@pytest.fixture
def tiny_pkl(tmp_path) -> str:
    """Path of a pickle holding a tiny unconditional network."""
    return write_network_pkl(tmp_path / 'tiny.pkl', tiny_edm_net())


def cli_error(args, cwd=ROOT) -> str:
    """Run `python *args` (a command line given bad input, no GPU) and return its only stderr line, checked to be
    `error: ...` with a non-zero exit and no traceback."""
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
    return lines[0]


def imported_names(path) -> set:
    """Every module (import x) and module.name (from x import name) that the Python file at path imports."""
    import ast
    imported = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f'{node.module}.{alias.name}' for alias in node.names}
    return imported
