"""Shared pytest setup: the repository root on sys.path and the location of the upstream fixtures."""
import atexit
import collections
import contextlib
import importlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from unittest import mock

import pytest

# Tests use tiny tensors: one intra-op thread per process avoids OpenMP threads spinning against each other on the
# 2 CI cores (subprocesses inherit the variable). Set before torch is imported anywhere.
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')   # idle OpenMP threads sleep instead of spinning (2-thread tests)

# Clocks made by commands under test (art/auto_clock.py) go to a folder of this test process (subprocesses inherit
# it), never into the user's cache.
if 'EDM_ART_CACHE' not in os.environ:
    os.environ['EDM_ART_CACHE'] = tempfile.mkdtemp(prefix='edm-art-test-clocks-')
    atexit.register(shutil.rmtree, os.environ['EDM_ART_CACHE'], ignore_errors=True)

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


def pytest_collection_modifyitems(items: list) -> None:
    """Files holding tests marked slow (several seconds each) run first, most such tests first, each file's tests
    together (its module fixtures are made once), the rest in collection order: with `make test`'s two work-stealing
    workers, no worker is then left with a long test at the end while the other idles."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker('slow'))
    items.sort(key=lambda item: -slow[item.path])


@pytest.fixture(scope='session')
def fixtures_dir() -> Path:
    """Directory of the reference numbers produced by upstream EDM."""
    path = FIXTURES / 'edm-compat'
    if not path.is_dir():
        pytest.fail(f'fixtures not found at {path}; set EDM_ART_FIXTURES')
    return path


def tiny_edm_net(label_dim: int = 0, seed: int = 0, **kwargs):
    """A small EDMPrecond(SongUNet) with attention, cheap enough for CPU tests; kwargs override its settings."""
    import torch
    from training.networks import EDMPrecond
    torch.manual_seed(seed)
    net = EDMPrecond(**dict(dict(img_resolution=8, img_channels=3, label_dim=label_dim, model_type='SongUNet',
                                 model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                                 dropout=0.0), **kwargs))
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


def cli_error(args, cwd=ROOT, in_process: bool = True) -> str:
    """Run `python *args` (a command line given bad input, no GPU) and return its only stderr line, checked to be
    `error: ...` with a non-zero exit and no traceback. in_process: run the command's click `main` here (an exception
    escaping it fails the test as a traceback would), which saves a torch import per case; False: spawn the real
    entry point (keep one such case per command line)."""
    code, stdout, stderr = (run_cli_in_process if in_process else _run_cli_subprocess)(args, cwd)
    assert code != 0, stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), stderr
    return lines[0]


def _run_cli_subprocess(args, cwd) -> Tuple[int, str, str]:
    """Run `python *args` in a new process without CUDA; returns (exit code, stdout, stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def run_cli_in_process(args, cwd=ROOT, env: Optional[Dict[str, str]] = None) -> Tuple[int, str, str]:
    """Run the click command of `python *args` (`-m module ...` or a script of the repository root) in this process
    with CUDA hidden and the variables `env` set; returns (exit code, stdout, stderr). The process-wide setup a command
    line does for itself (process group, start method, environment, working directory) is skipped or undone."""
    import torch
    from torch_utils import distributed
    argv: List[str] = [str(arg) for arg in args]
    if argv[0] == '-m':
        module, argv = argv[1], argv[2:]
    else:
        script = Path(cwd, argv[0]).resolve()
        assert script.parent == ROOT and script.suffix == '.py', f'not a script of the repository root: {script}'
        module, argv = script.stem, argv[1:]
    command = importlib.import_module(module).main
    stdout, stderr = io.StringIO(), io.StringIO()
    environ, old_cwd = dict(os.environ), os.getcwd()
    start_method = torch.multiprocessing.get_start_method(allow_none=True)
    code = 0
    try:
        os.chdir(cwd)
        os.environ.update(env or {})
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
                mock.patch.object(torch.cuda, 'is_available', return_value=False), \
                mock.patch.object(distributed, 'init', lambda *args, **kwargs: None):
            command.main(argv, prog_name=module)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        os.chdir(old_cwd)
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)
        torch.multiprocessing.set_start_method(start_method, force=True)
    return code, stdout.getvalue(), stderr.getvalue()


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


def tiny_unet2d(seed: int = 0, **kwargs):
    """A tiny randomly initialised class-conditional diffusers UNet2DModel (1x8x8, 3 classes, 42k parameters, no
    attention); kwargs override its settings."""
    import torch
    from diffusers import UNet2DModel
    torch.manual_seed(seed)
    unet = UNet2DModel(**dict(dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                   layers_per_block=1, norm_num_groups=4, num_class_embeds=3,
                                   down_block_types=('DownBlock2D', 'DownBlock2D'),
                                   up_block_types=('UpBlock2D', 'UpBlock2D')), **kwargs))
    return unet.eval().requires_grad_(False)


def save_tiny_diffusers(folder, layout: str = 'pipeline', unet=None, **scheduler_kwargs) -> str:
    """Save `unet` (default: tiny_unet2d()) and a DDPMScheduler(**scheduler_kwargs) in `folder` (made if missing) as
    save_pretrained writes them, in one of the layouts diffusers:FOLDER takes: 'pipeline' (DDPMPipeline:
    model_index.json, unet/, scheduler/), 'parts' (unet/ and scheduler/ without model_index.json) or 'flat' (a UNet
    folder with scheduler_config.json beside config.json). Returns the folder as a string."""
    from diffusers import DDPMPipeline, DDPMScheduler
    unet = tiny_unet2d() if unet is None else unet
    scheduler = DDPMScheduler(**scheduler_kwargs)
    folder = Path(folder)
    if layout == 'pipeline':
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    elif layout == 'parts':
        unet.save_pretrained(folder / 'unet')
        scheduler.save_pretrained(folder / 'scheduler')
    elif layout == 'flat':
        unet.save_pretrained(folder)
        scheduler.save_pretrained(folder)
    else:
        raise ValueError(f'unknown layout {layout!r}')
    return str(folder)


@pytest.fixture(scope='session')
def tiny_diffusers(tmp_path_factory) -> str:
    """Folder of a tiny diffusers pipeline (DDPMPipeline.save_pretrained of tiny_unet2d() and a default DDPMScheduler:
    1,000 linear betas, epsilon prediction), for `--network=diffusers:FOLDER`. Shared by the session: do not modify
    it; make variants with save_tiny_diffusers."""
    return save_tiny_diffusers(tmp_path_factory.mktemp('tiny-diffusers') / 'tiny-ddpm')
