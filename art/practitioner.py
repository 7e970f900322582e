"""The practitioner's table (issue 21): a diffusers model sampled through diffusers' own schedulers, the spacings a
user gets from them against the project's grids, every cell from the same latents, scored by LeNet-FID and rms.

Rows. DEFAULT_ROWS are diffusers' schedules exactly as a user gets them: the scheduler class built by `from_config`
from the model's own scheduler config (its scheduler_config.json, read as `from_pretrained` reads it: a DDPM config
saved by save_pretrained names timestep_spacing='leading', which each of them then uses) with at most the one setting
a user adds (use_karras_sigmas=True), then `set_timesteps(K)`: DDIM (its x_0 clipped as a DDPM config says), Euler,
Euler with Karras sigmas, DPM-Solver++(2M) (diffusers' default algorithm), the same with Karras sigmas, UniPC. The
project's grids (GRID_METHODS), made on the model: the closed form (its clock from a given file, else the network's
cached adaptive clock, art.auto_clock, as generate_art uses), ART-RL (a given schedule file, else no row), gits
(Euler teacher) and direct (Euler, only at the K of `direct_steps`); each runs through diffusers' Euler and
DPM-Solver++(2M) schedulers (GRID_SCHEDULERS) by art.diffusers_sched.build_scheduler. DPM-Solver takes integer
timesteps, so the grid is rounded to table entries there; a grid two of whose levels round to one timestep is a
skipped cell, with the reason.

Cells. Every row and K samples the same latents and class labels (edm.rng.seed_latents of seeds 0..n-1) in the
pipeline loop (art.diffusers_sched.sample_with_scheduler: x = latents * init_noise_sigma, then scale_model_input, the
UNet, step), in batches, a fresh scheduler each. NFE is measured: the UNet calls of the loop, counted by a wrapper.
Each cell records the levels stepped through (EDM's sigma; DDIM, which has no sigmas, from its alphas_cumprod).

rms: sqrt(E |x - x_ref|^2) over the first `num` latents, x_ref by our sampler's RK4 (fourth order, 4K - 3
evaluations) on EDM's rho = 7 grid of `reference_steps` steps over the model's whole range, from latents * sigma_max
of its noise table (where a pipeline starting at sigma_max starts, to 1/(2 sigma_max^2) relative). A row starting lower
carries that truncation in its rms: with the 'leading' spacing a saved DDPM config names, DDIM, Euler and Euler with
Karras sigmas start at t = T - T/K, DPM-Solver++(2M) and UniPC at t = K floor((T - 1)/(K + 1)) (only DPM-Solver's
Karras sigmas start at the top); the project's grids start at EDM's horizon 80 or at `sigma_max` (an ART-RL file's
clock then read below it, Clock.grid). High accuracy is measured, not assumed: `reference_check` latents are
solved again with twice the steps and their distance is reported beside the cells. (On the tiny random test UNet,
whose field is rough in t, doubling RK4's steps from 16 to 128 moved the endpoints by 5.7, 2.3 and 0.47 in norm, of
about 1,400; with its time embedding silenced, a smooth field, the change shrinks about 20-30-fold a doubling from 8
steps on.)

LeNet-FID: the final images quantised as generate_art writes PNGs (edm.fid.samples_fid), the detector of `fid.py
--detector=lenet`, against the shipped statistics of the 60k training images (edm.lenet.REFERENCE), `fid_num` images a
cell. Costs: each project grid's network evaluations and CPU seconds from its schedule's provenance.
"""

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from dnnlib.util import UserError
from art import metrics
from art.auto_clock import shared_clock
from art.diffusers_sched import build_scheduler, sample_with_scheduler, scheduler_sigmas
from art.methods import ScheduleMaker
from art.networks import ASSETS, load_network_spec
from art.schedules import Schedule, check_network_fit, load_schedule
from edm import fid, lenet
from edm.diffusers_net import PREFIX as DIFFUSERS_PREFIX, model_files
from edm.rng import seed_latents

SHIPPED_MODEL = ASSETS / 'ddpm-fmnist28-cond'      # the diffusers model trained here (scripts/train_ddpm_fmnist.py)
EULER, DPM = 'EulerDiscreteScheduler', 'DPMSolverMultistepScheduler'
REFERENCE_SOLVER = 'rk4'


@dataclasses.dataclass(frozen=True)
class Row:
    """One row: a diffusers scheduler stepping through its own spacing (`grid` None; `settings` on top of the model's
    config) or through a project grid (`grid` the method)."""
    name: str
    scheduler: str
    grid: Optional[str] = None
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)


KARRAS = {'use_karras_sigmas': True}
DEFAULT_ROWS = (Row('DDIM', 'DDIMScheduler'), Row('Euler', EULER), Row('Euler Karras', EULER, settings=KARRAS),
                Row('DPM++(2M)', DPM), Row('DPM++(2M) Karras', DPM, settings=KARRAS),
                Row('UniPC', 'UniPCMultistepScheduler'))
GRID_SCHEDULERS = {'Euler': EULER, 'DPM++(2M)': DPM}            # the schedulers the project's grids run through
GRID_METHODS = ('closed-form', 'art-rl', 'gits', 'direct')


@dataclasses.dataclass
class DiffusersOptions:
    """Sizes and schedule sources of the practitioner's table (the report's --diffusers-* options)."""
    network: str = str(SHIPPED_MODEL)           # the diffusers folder (what save_pretrained wrote)
    steps: Sequence[int] = (5, 10)              # K of the cells: set_timesteps(K), the grids' K
    num: int = 256                              # latents of the rms (the first of the FID images)
    fid_num: int = 1000                         # images per LeNet-FID value (0: no FID)
    batch: int = 32                             # latents per pipeline loop
    reference_steps: int = 64                   # RK4 steps of the rms reference (and of direct's)
    reference_check: int = 16                   # latents solved again with twice the steps (0: no check)
    closed_form_file: Optional[str] = None      # the closed form's clock (None: the network's cached adaptive clock)
    art_rl_file: Optional[str] = None           # an ART-RL schedule of the model (None: no ART-RL rows)
    gits_latents: int = 32                      # gits' teacher trajectories
    gits_levels: int = 60                       # gits' teacher levels
    direct_steps: Sequence[int] = (5,)          # K at which direct is made
    direct_latents: int = 64                    # direct's training (and held-out) latents
    direct_iters: int = 50                      # direct's Adam iterations
    sigma_max: Optional[float] = None           # where the project's grids start (None: min(80, the table's top))


def check_options(opts: DiffusersOptions) -> None:
    """UserError (one line) unless the model folder has a diffusers model's files and the art-rl file (if given) is
    a schedule; reads no weights (art.settings checks the closed-form clock file)."""
    if not os.path.isdir(opts.network):
        shipped = ' (the shipped model is made by scripts/train_ddpm_fmnist.py)' \
            if os.path.abspath(opts.network) == str(SHIPPED_MODEL) else ''
        raise UserError(f'--diffusers-network={opts.network}: no such folder{shipped}; give a folder that '
                        f'save_pretrained wrote, or leave diffusers out of --settings')
    model_files(opts.network)
    if opts.art_rl_file:
        load_schedule(opts.art_rl_file, resample=True, sigma_max=opts.sigma_max)


def scheduler_config(folder: str) -> Dict[str, Any]:
    """The model's scheduler config as `from_pretrained` reads it (diffusers' own reader)."""
    from diffusers import DDPMScheduler   # pylint: disable=import-outside-toplevel
    return dict(DDPMScheduler.load_config(model_files(folder)[2]))


def default_scheduler(row: Row, config: Mapping[str, Any], num_steps: int) -> Any:
    """diffusers' scheduler of a default row as a user builds it: from_config(config, **settings), set_timesteps(K)."""
    import diffusers   # pylint: disable=import-outside-toplevel
    scheduler = getattr(diffusers, row.scheduler).from_config(dict(config), **row.settings)
    scheduler.set_timesteps(num_steps)
    return scheduler


def scheduler_levels(scheduler: Any) -> np.ndarray:
    """EDM's sigma of each level the scheduler steps through, its start first: its sigmas; DDIM's (it has none) from
    alphas_cumprod at its timesteps and final_alpha_cumprod."""
    if hasattr(scheduler, 'sigmas'):
        return scheduler_sigmas(scheduler)
    alphas = torch.cat([scheduler.alphas_cumprod[scheduler.timesteps],
                        torch.as_tensor(scheduler.final_alpha_cumprod).reshape(1)]).double()
    return ((1 - alphas) / alphas).sqrt().numpy()


class CallCounter:
    """The UNet, counting its calls (one call: one network evaluation of each latent of the batch)."""

    def __init__(self, unet: torch.nn.Module):
        self.unet, self.calls = unet, 0

    def __call__(self, *args, **kwargs) -> Any:
        """The UNet's output, one call counted."""
        self.calls += 1
        return self.unet(*args, **kwargs)


@torch.no_grad()
def sample_cell(unet: torch.nn.Module, make_scheduler: Callable[[], Any], latents: torch.Tensor,
                class_labels: Optional[torch.Tensor], batch: int) -> Tuple[torch.Tensor, int]:
    """The final images of the pipeline loop over the latents in batches (a fresh scheduler each; class indices) and
    the measured NFE: UNet calls per latent."""
    counter, chunks = CallCounter(unet), []
    for start in range(0, len(latents), batch):
        labels = None if class_labels is None else class_labels[start:start + batch]
        chunks.append(sample_with_scheduler(counter, make_scheduler(), latents[start:start + batch], labels))
    return torch.cat(chunks), counter.calls // len(chunks)


def _head(labels: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    """The first n labels (None stays None)."""
    return None if labels is None else labels[:n]


def reference_solve(net: torch.nn.Module, latents: torch.Tensor, class_labels: Optional[torch.Tensor],
                    steps: int) -> torch.Tensor:
    """The rms reference: RK4 on EDM's grid of `steps` steps over the model's whole range, from latents * sigma_max."""
    return metrics.reference_endpoints(net, latents, float(net.sigma_max), class_labels, steps=steps,
                                       solver=REFERENCE_SOLVER)


def rms_reference(net: torch.nn.Module, latents: torch.Tensor, class_labels: Optional[torch.Tensor],
                  opts: DiffusersOptions) -> Tuple[torch.Tensor, Optional[float]]:
    """The reference endpoints of the first `num` latents, and their rms distance to a solve with twice the steps
    on the first `reference_check` of them (None: no check)."""
    reference = reference_solve(net, latents[:opts.num], _head(class_labels, opts.num), opts.reference_steps)
    n = min(opts.reference_check, opts.num)
    if not n:
        return reference, None
    finer = reference_solve(net, latents[:n], _head(class_labels, n), 2 * opts.reference_steps)
    return reference, metrics.rms_error(reference[:n], finer)


def grid_makers(net: torch.nn.Module, network: str, opts: DiffusersOptions,
                log: Callable[[str], Any]) -> Dict[str, Callable[[int], Optional[Schedule]]]:
    """The project's grids on the model, by method (GRID_METHODS order; art-rl only when a file is given): each a
    function of K, made once per K (None where not made: direct outside `direct_steps`)."""
    start = {} if opts.sigma_max is None else dict(sigma_max=opts.sigma_max)
    if opts.closed_form_file:
        closed_form = ScheduleMaker('closed-form', net, network, clock=load_schedule(opts.closed_form_file))
    elif start:                                # the cache holds clocks over the default range only
        closed_form = ScheduleMaker('closed-form', net, network, options=start)
    else:
        closed_form = ScheduleMaker('closed-form', net, network, clock=shared_clock(net, network, log=log))
    gits = ScheduleMaker('gits', net, network, 'euler', dict(num_latents=opts.gits_latents,
                                                             fine_steps=opts.gits_levels, **start))
    direct = ScheduleMaker('direct', net, network, 'euler', dict(
        num_latents=opts.direct_latents, num_holdout=opts.direct_latents, iters=opts.direct_iters,
        reference=(REFERENCE_SOLVER, opts.reference_steps), warm_start=[closed_form, gits], **start))
    makers = {'closed-form': closed_form, 'gits': gits,
              'direct': lambda k: direct(k) if k in opts.direct_steps else None}
    if opts.art_rl_file:
        note = check_network_fit(load_schedule(opts.art_rl_file), net, network, opts.art_rl_file)
        if note:
            log(f'Note: {note}')
        makers['art-rl'] = lambda k: load_schedule(opts.art_rl_file, k, resample=True, sigma_max=opts.sigma_max)
    return {method: makers[method] for method in GRID_METHODS if method in makers}


def table_rows(methods: Sequence[str]) -> List[Row]:
    """DEFAULT_ROWS, then each project grid of `methods` through each of GRID_SCHEDULERS."""
    return list(DEFAULT_ROWS) + [Row(f'{label} + {method}', scheduler, grid=method)
                                 for label, scheduler in GRID_SCHEDULERS.items() for method in methods]


def cell_scheduler(row: Row, config: Mapping[str, Any], num_steps: int,
                   schedule: Optional[Schedule]) -> Callable[[], Any]:
    """A function that builds the row's scheduler for K afresh (a project row: for its schedule's grid)."""
    if row.grid is None:
        return lambda: default_scheduler(row, config, num_steps)
    return lambda: build_scheduler(row.scheduler, config, schedule.sigmas)


@dataclasses.dataclass
class CellInputs:
    """What every cell shares: the model, its scheduler config, the latents and labels, the rms reference and the
    FID's detector and reference statistics (None: no FID)."""
    net: torch.nn.Module
    config: Mapping[str, Any]
    latents: torch.Tensor
    class_indices: Optional[torch.Tensor]
    reference: torch.Tensor
    detector: Any = None
    fid_ref: Optional[Mapping[str, np.ndarray]] = None


def run_cell(row: Row, num_steps: int, schedule: Optional[Schedule], inputs: CellInputs, opts: DiffusersOptions,
             log: Callable[[str], Any]) -> Dict[str, Any]:
    """One cell: the row's scheduler at K sampled from every latent, its measured NFE, levels, rms and LeNet-FID;
    `skipped` with the reason where the scheduler cannot take the grid."""
    cell = dict(row=row.name, scheduler=row.scheduler, grid=row.grid or 'diffusers', steps=int(num_steps),
                cost=None if schedule is None else schedule.provenance.get('cost'))
    make = cell_scheduler(row, inputs.config, num_steps, schedule)
    try:
        levels = scheduler_levels(make())
    except UserError as exc:
        log(f'diffusers: {row.name} K={num_steps}: skipped ({exc})')
        return dict(cell, skipped=str(exc))
    start = time.perf_counter()
    images, nfe = sample_cell(inputs.net.unet, make, inputs.latents, inputs.class_indices, opts.batch)
    cell.update(nfe=nfe, levels=levels.tolist(), rms=metrics.rms_error(images[:opts.num], inputs.reference),
                fid=None if inputs.fid_ref is None else
                fid.samples_fid(inputs.detector, images[:opts.fid_num].split(opts.batch), inputs.fid_ref),
                seconds=round(time.perf_counter() - start, 3))
    log(f'diffusers: {row.name} K={num_steps}: NFE {nfe}, rms {cell["rms"]:.4g}'
        + ('' if cell['fid'] is None else f', LeNet-FID {cell["fid"]:.4g}') + f' ({cell["seconds"]:.0f} s)')
    return cell


def practitioner_table(opts: DiffusersOptions, detector: Any = 'lenet', fid_ref: str = lenet.REFERENCE,
                       log: Callable[[str], Any] = functools.partial(print, flush=True)) -> Dict[str, Any]:
    """Every cell of the table (module docstring, run_cell) with the sizes and the reference's check:
    {'cells', 'network', 'num', 'fid_num', 'reference'}. A project row has no cell where its grid is not made
    (direct outside `direct_steps`)."""
    check_options(opts)
    network = DIFFUSERS_PREFIX + opts.network
    net = load_network_spec(network)
    latents, labels, _ = seed_latents(net, list(range(max(opts.num, opts.fid_num))))
    reference, check = rms_reference(net, latents, labels, opts)
    inputs = CellInputs(net, scheduler_config(opts.network), latents,
                        None if labels is None else labels.argmax(dim=1), reference)
    if opts.fid_num:
        inputs.detector = fid.load_detector(detector) if isinstance(detector, str) else detector
        inputs.fid_ref = fid.load_reference(fid_ref, fid.feature_dim(inputs.detector))
    makers = grid_makers(net, network, opts, log)
    cells = []
    for row in table_rows(list(makers)):
        for num_steps in opts.steps:
            schedule = None if row.grid is None else makers[row.grid](num_steps)
            if row.grid is None or schedule is not None:
                cells.append(run_cell(row, num_steps, schedule, inputs, opts, log))
    return dict(cells=cells, network=opts.network, num=opts.num, fid_num=opts.fid_num,
                reference=dict(solver=REFERENCE_SOLVER, steps=opts.reference_steps,
                               check_latents=min(opts.reference_check, opts.num), check_rms=check))
