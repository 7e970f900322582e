"""GPU readiness check (`make gpu-check`, scripts/gpu_check.sh): the CUDA paths end to end against the CPU.

Without CUDA it prints one line and exits 0. With CUDA it checks, on the embedded default network and on a tiny EDM2
network written to a temporary folder, and prints a table (check, result, numbers, PASS / FAIL / SKIP):
- generate: the shipped K=10 schedule on 16 seeds, CUDA against CPU, with TF32 off (float32 round-off) and as the
  CLIs leave it (PyTorch's default: TF32 convolutions); the latents are drawn on the CPU for both, since CUDA's
  generators give other numbers for the same seed;
- closed form and ART-RL (`art.train.run_learner`, a few iterations): finite grids close to the CPU's;
- EDM2: the tiny network's forward pass and EDM2's sampler in float16 on CUDA against float32 on the CPU;
- torchrun: `generate_art.py` in two ranks (NCCL) against one process, when there are two GPUs or more.
The exit status is 1 when a check fails.
"""
import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import PIL.Image
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from art.closed_form import closed_form_schedule  # noqa: E402
from art.networks import DEFAULT_NETWORK, load_network_spec, shipped_schedule_path  # noqa: E402
from art.schedules import load_schedule  # noqa: E402
from art.train import rl_config, run_learner  # noqa: E402
from edm.rng import seed_latents  # noqa: E402
from edm.sampler import edm2_sampler, sample  # noqa: E402
from tests.tiny_edm2 import tiny_edm2_net, write_edm2_pkl  # noqa: E402
from torch_utils.misc import module_device  # noqa: E402

NO_GPU = 'gpu-check: no CUDA GPU on this machine; nothing to check.'
NUM_STEPS = 10                 # K of the generate, closed-form and ART-RL checks
SEEDS = list(range(16))
# Tolerances on max |diff| / scale, set from CPU emulations of the effect on the K=10 samples: a relative 1e-6 on
# every network output moves them by 3.4e-6, TF32-rounded convolution inputs by 1.4e-3, a float16 UNet (tiny EDM2
# network) its outputs by 1.5e-3 and its samples by 0.9e-3.
TOL_FP32 = 1e-4                # float32 work, CUDA against CPU
TOL_PNG = 2 / 255              # one PNG level of the [-1, 1] range: what TF32 may move a pixel by
TOL_FP16 = 1e-2                # float16 on CUDA against float32 on the CPU
TOL_LEVELS = 1                 # grey levels two ranks' PNGs may differ by (rounding of round-off)
MAX_RESULT = 100               # characters of an error shown in the table

Outcome = Tuple[str, str, Optional[bool]]    # (result, numbers, passed: None when skipped)


@dataclasses.dataclass
class Row:
    """One line of the table."""
    check: str
    result: str
    numbers: str
    status: str                # PASS, FAIL or SKIP


def compare(x: torch.Tensor, ref: torch.Tensor, tol: float, elementwise: bool = False) -> Tuple[str, bool]:
    """'max |diff|/scale E (tol T)' and whether x is finite and within tol of ref; the scale is max |ref| (images) or
    |ref| itself elementwise (noise levels)."""
    x, ref = x.detach().cpu().double(), ref.detach().cpu().double()
    scale = ref.abs() if elementwise else ref.abs().max()
    err = float(((x - ref).abs() / scale.clamp(min=1e-30)).max()) if torch.isfinite(x).all() else float('nan')
    return f'max |diff|/scale {err:.2e} (tol {tol:.0e})', err <= tol


def format_table(rows: Sequence[Row]) -> str:
    """The rows under a header, in left-aligned columns."""
    cells = [dataclasses.astuple(row) for row in [Row('check', 'result', 'numbers', 'pass/fail'), *rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(4)]
    return '\n'.join('  '.join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)


def run_check(name: str, check: Callable[[], Outcome]) -> Row:
    """Run one check into a row; a check that raises fails with its error, and the others still run."""
    print(f'gpu-check: {name}...', file=sys.stderr, flush=True)
    try:
        result, numbers, passed = check()
    except Exception as exc:  # pylint: disable=broad-except
        message = f'{type(exc).__name__}: {(str(exc).splitlines() or [""])[0]}'
        return Row(name, message[:MAX_RESULT], '', 'FAIL')
    return Row(name, result, numbers, {True: 'PASS', False: 'FAIL', None: 'SKIP'}[passed])


def on_device(net: torch.nn.Module, *tensors: Optional[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    """The tensors (None stays None) on the device of the network."""
    return [None if t is None else t.to(module_device(net)) for t in tensors]


@contextlib.contextmanager
def tf32_off():
    """Plain float32 CUDA convolutions and matmuls inside the block (PyTorch's default allows TF32 convolutions)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check_generate(nets: dict, tol: float) -> Outcome:
    """The shipped schedule's samples on the device against the CPU's, from the same CPU-drawn latents."""
    schedule = load_schedule(shipped_schedule_path(DEFAULT_NETWORK, NUM_STEPS), num_steps=NUM_STEPS, resample=True)
    latents, labels, _ = seed_latents(nets['cpu'], SEEDS, 'cpu')
    images = {}
    for key, net in nets.items():
        latents_on, labels_on = on_device(net, latents, labels)
        images[key] = sample(net, latents_on, schedule.sigmas, labels_on, solver=schedule.solver or 'heun')
    numbers, passed = compare(images['dev'], images['cpu'], tol)
    return f'{schedule.method} K={NUM_STEPS}, {len(SEEDS)} seeds', numbers, passed


def check_closed_form(nets: dict) -> Outcome:
    """The closed-form grid from a small estimate of qbar on the device against the CPU's."""
    sigmas = {key: torch.as_tensor(closed_form_schedule(net, NUM_STEPS, num_samples=8, fine_steps=32,
                                                        batch_size=8).sigmas[:-1]) for key, net in nets.items()}
    return f'K={NUM_STEPS}, 8 samples, 32 levels', *compare(sigmas['dev'], sigmas['cpu'], TOL_FP32, elementwise=True)


def check_art_rl(nets: dict, workdir: str) -> Outcome:
    """ART-RL's images preset for a few iterations on the device against the CPU (train_art.py's learner loop)."""
    cfg = rl_config('images', dict(train_steps=16, batch=4, iters=3), NUM_STEPS)
    sigmas = {}
    for key, net in nets.items():
        learner, _ = run_learner(net, 'images', cfg, tempfile.mkdtemp(dir=workdir), 'clock', cfg.iters,
                                 module_device(net), progress=False)
        sigmas[key] = torch.as_tensor(learner.distill(NUM_STEPS)['sigmas'][:-1])
    result = f'K={NUM_STEPS}, {cfg.iters} iterations of {cfg.batch} trajectories'
    return result, *compare(sigmas['dev'], sigmas['cpu'], TOL_FP32, elementwise=True)


def check_edm2_forward(nets: dict) -> Outcome:
    """D(x; sigma) of the tiny EDM2 network, float16 on the device against float32 on the CPU, at three levels."""
    x, labels, _ = seed_latents(nets['cpu'], SEEDS, 'cpu')
    out = {}
    for key, net in nets.items():
        x_on, labels_on = on_device(net, x, labels)
        out[key] = torch.cat([net(x_on * sigma, sigma, labels_on) for sigma in (0.1, 1.0, 10.0)])
    return 'float16 UNet, sigma 0.1, 1, 10', *compare(out['dev'], out['cpu'], TOL_FP16)


def check_edm2_sampler(nets: dict) -> Outcome:
    """edm2_sampler with the tiny EDM2 network, float16 on the device against float32 on the CPU."""
    noise, labels, _ = seed_latents(nets['cpu'], SEEDS, 'cpu')
    out = {key: edm2_sampler(net, *on_device(net, noise, labels), num_steps=8) for key, net in nets.items()}
    return f'Heun K=8, {len(SEEDS)} seeds', *compare(out['dev'], out['cpu'], TOL_FP16)


def read_pngs(folder: str) -> Tuple[List[str], np.ndarray]:
    """The PNG names of a folder (sorted) and their pixels, stacked as int16."""
    names = sorted(name for name in os.listdir(folder) if name.endswith('.png'))
    return names, np.stack([np.asarray(PIL.Image.open(os.path.join(folder, name)), dtype=np.int16) for name in names])


def check_torchrun(workdir: str, gpus: int) -> Outcome:
    """generate_art.py (default network and schedule) in two ranks against one process: the same PNGs. --batch=4
    gives both the same batches (seeds 0-3 and 4-7)."""
    if gpus < 2:
        return f'{gpus} GPU: needs two', '', None
    args = ['generate_art.py', '--seeds=0-7', '--batch=4', f'--steps={NUM_STEPS}']
    launchers = {'one': [sys.executable], 'two': [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                                                  '--nproc_per_node=2']}
    for name, launcher in launchers.items():
        proc = subprocess.run(launcher + args + [f'--outdir={workdir}/{name}'], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            return f'{name} process(es) failed: {(proc.stderr.strip().splitlines() or [""])[-1]}', '', False
    (names_one, one), (names_two, two) = read_pngs(f'{workdir}/one'), read_pngs(f'{workdir}/two')
    if names_one != names_two:
        return f'different files: {len(names_one)} and {len(names_two)} PNGs', '', False
    diff = int(np.abs(one - two).max())
    return f'{len(names_one)} PNGs, 2 ranks vs 1', f'max |diff| {diff} grey levels (tol {TOL_LEVELS})', \
        diff <= TOL_LEVELS


def load_both(spec: str, device: str) -> dict:
    """The network of spec on the CPU ('cpu') and on the device ('dev'), loaded by the tools' loader."""
    return {'cpu': load_network_spec(spec, device='cpu'), 'dev': load_network_spec(spec, device=device)}


def run_checks(device: str, gpus: int) -> List[Row]:
    """Every check, the device against the CPU, in a temporary folder."""
    default = load_both(DEFAULT_NETWORK, device)
    with tempfile.TemporaryDirectory(prefix='gpu-check-') as workdir:
        edm2 = load_both(write_edm2_pkl(os.path.join(workdir, 'tiny-edm2.pkl'), tiny_edm2_net()), device)
        rows = [run_check('generate, TF32 as the CLIs leave it', lambda: check_generate(default, TOL_PNG))]
        with tf32_off():
            rows += [run_check('generate, TF32 off', lambda: check_generate(default, TOL_FP32)),
                     run_check('closed form', lambda: check_closed_form(default)),
                     run_check('ART-RL (images preset)', lambda: check_art_rl(default, workdir)),
                     run_check('EDM2 forward, float16', lambda: check_edm2_forward(edm2)),
                     run_check('EDM2 sampler, float16', lambda: check_edm2_sampler(edm2))]
        rows.append(run_check('torchrun, NCCL', lambda: check_torchrun(workdir, gpus)))
    return rows


def main() -> int:
    """Print the no-GPU line and return 0 without CUDA; else run the checks, print the table, return 1 on a FAIL."""
    if not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    gpus = torch.cuda.device_count()
    print(f'gpu-check on {torch.cuda.get_device_name(0)} ({gpus} GPU), torch {torch.__version__}, '
          f'CUDA {torch.version.cuda}')
    rows = run_checks('cuda', gpus)
    print(format_table(rows))
    return int(any(row.status == 'FAIL' for row in rows))


if __name__ == '__main__':
    sys.exit(main())
