"""An ART grid run through diffusers' own schedulers, and the pipeline loop that runs them.

A grid is our descending K + 1 sigmas ending in 0, in EDM's sigma: for a discrete VP model sigma = sqrt((1 - ab) / ab)
of its noise table (edm.diffusers_net). Each supported scheduler (SCHEDULERS, by diffusers class name) reads a custom
grid its own way, read in diffusers 0.42.1's source; `timestep_args` gives what its `set_timesteps` (or a pipeline's
`sigmas=` / `timesteps=` argument) needs, `OVERRIDES` the settings `from_config` needs on top of the model's config:

- EulerDiscreteScheduler: `sigmas=` the grid itself (cast to float32; the UNet sees the timestep interpolated in log
  sigma, as edm.diffusers_net does). timestep_spacing='linspace' makes the start latents * sigma_0 (with 'leading',
  the DDPM default, it is latents * sqrt(sigma_0^2 + 1)). Equals our `euler` to float32 round-off.
- HeunDiscreteScheduler: takes `timesteps=` only and reads sigma linearly in t between its table's entries; the
  fractional timesteps whose interpolation gives the grid's sigmas (to a few float32 ulp: diffusers keeps t in
  float32). clip_sample=False (a DDPM config clips x_0 to [-1, 1]). Same steps as our `heun` (EDM's Heun, Euler to
  0), but the UNet sees those linear-in-sigma timesteps, not the log-sigma ones edm.diffusers_net gives it: equal to
  float32 round-off where the grid's levels are table entries, else apart by the UNet's response to a timestep shift
  of up to (q - 1) / 8 steps (q the ratio of neighbouring table sigmas).
- DPMSolverMultistepScheduler: takes integer `timesteps=` only, so the grid is rounded to the nearest table entries
  (in log sigma), refused where two levels meet; with algorithm_type='dpmsolver++', solver_order=2,
  solver_type='midpoint', final_sigmas_type='zero' (its last step first order) and no thresholding it equals our
  `dpmpp-2m` on the rounded grid (`scheduler_sigmas`) to float32 round-off. It works in x_t = x / sqrt(1 + sigma^2)
  and starts at latents * 1 (`start_scale`).
- EDMEulerScheduler (EDM-parameterised models): reads `sigmas=` as a ramp r through its rho formula,
  sigma = (sigma_max^(1/rho) + r (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, one r per level; the ramp that gives
  the grid's levels (any positive level has one, outside [0, 1] beyond its range). It appends the final 0 itself
  and starts at latents * sqrt(sigma_max^2 + 1). Equals our `euler` to float32 round-off.

Refused in one line (REFUSED): EDMDPMSolverMultistepScheduler (set_timesteps takes a step count only), UniPC (custom
sigmas only with flow sigmas), DDIM / DDPM (a step count only). diffusers is imported inside the functions.
"""

import json
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from dnnlib.util import UserError
from edm.diffusers_net import prediction_type

# Supported schedulers: diffusers class name -> the solver of edm.sampler it runs.
SCHEDULERS: Dict[str, str] = {'EulerDiscreteScheduler': 'euler', 'HeunDiscreteScheduler': 'heun',
                              'DPMSolverMultistepScheduler': 'dpmpp-2m', 'EDMEulerScheduler': 'euler'}
# Settings from_config needs on top of the model's scheduler config for the grid to be stepped as our solver does.
_NO_SPACING = {'use_karras_sigmas': False, 'use_exponential_sigmas': False, 'use_beta_sigmas': False}
OVERRIDES: Dict[str, Dict[str, Any]] = {
    'EulerDiscreteScheduler': {'timestep_spacing': 'linspace'},
    'HeunDiscreteScheduler': {'timestep_spacing': 'linspace', 'clip_sample': False, **_NO_SPACING},
    'DPMSolverMultistepScheduler': {'algorithm_type': 'dpmsolver++', 'solver_order': 2, 'solver_type': 'midpoint',
                                    'final_sigmas_type': 'zero', 'thresholding': False, 'use_lu_lambdas': False,
                                    'use_flow_sigmas': False, **_NO_SPACING},
    'EDMEulerScheduler': {'sigma_schedule': 'karras', 'final_sigmas_type': 'zero'},
}
REFUSED: Dict[str, str] = {
    'EDMDPMSolverMultistepScheduler': 'its set_timesteps takes a step count only (a rho ramp from its config), no '
                                      'custom grid; use EDMEulerScheduler',
    'UniPCMultistepScheduler': 'it takes custom sigmas only with use_flow_sigmas (flow-matching models)',
    'DDIMScheduler': 'its set_timesteps takes a step count only; EulerDiscreteScheduler runs the same first-order '
                     'ODE step on a custom grid',
    'DDPMScheduler': 'it is an ancestral (stochastic) sampler; use EulerDiscreteScheduler',
}
# Slack of the table's ends: diffusers computes its sigma table in float32, the grid may hold the float64 ends.
_RANGE_SLACK = 1e-6


def check_scheduler(name: str) -> str:
    """`name` if it is a supported scheduler; else one UserError line saying why or what is supported."""
    if name in SCHEDULERS:
        return name
    if name in REFUSED:
        raise UserError(f'{name} cannot take an ART grid: {REFUSED[name]}')
    raise UserError(f'unknown scheduler {name!r}; supported: {", ".join(SCHEDULERS)}')


def _positive_levels(sigmas: Sequence[float]) -> np.ndarray:
    """The grid's K positive levels (float64) after checking it descends to a single final 0."""
    grid = np.asarray(sigmas, dtype=np.float64)
    if grid.ndim != 1 or len(grid) < 2 or grid[-1] != 0 or not (grid[:-1] > 0).all() \
            or not (np.diff(grid) < 0).all() or not np.isfinite(grid).all():
        raise UserError('the grid must be K + 1 >= 2 finite, strictly descending sigmas ending in a single 0')
    return grid[:-1]


def _table(scheduler: Any) -> np.ndarray:
    """The scheduler's sigma table sqrt((1 - ab) / ab) as it computes it (float32, ascending in t)."""
    return np.array(((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5)


def _table_timesteps(scheduler: Any, levels: np.ndarray, log: bool) -> np.ndarray:
    """Fractional timesteps of `levels` on the scheduler's table, linear in sigma or in log sigma; UserError outside
    the table."""
    table = _table(scheduler).astype(np.float64)
    if levels.min() < table[0] * (1 - _RANGE_SLACK) or levels.max() > table[-1] * (1 + _RANGE_SLACK):
        raise UserError(f'the grid spans sigma {levels.min():.6g}..{levels.max():.6g}, outside the model\'s noise '
                        f'table {table[0]:.6g}..{table[-1]:.6g}; make the schedule for this network')
    index = np.arange(len(table))
    return np.interp(np.log(levels), np.log(table), index) if log else np.interp(levels, table, index)


def timestep_args(scheduler: Any, sigmas: Sequence[float]) -> Dict[str, Any]:
    """What `scheduler.set_timesteps(**args)` (or a pipeline's same-named argument) needs to step through the grid
    `sigmas`, for a scheduler built with OVERRIDES; UserError if it cannot take this grid."""
    name = check_scheduler(type(scheduler).__name__)
    levels = _positive_levels(sigmas)
    if name == 'EulerDiscreteScheduler':
        return {'sigmas': np.append(levels, 0.0).tolist()}
    if name == 'HeunDiscreteScheduler':
        return {'timesteps': _table_timesteps(scheduler, levels, log=False).tolist()}
    if name == 'DPMSolverMultistepScheduler':
        timesteps = _table_timesteps(scheduler, levels, log=True).round().astype(np.int64)
        if len(set(timesteps.tolist())) < len(timesteps):
            raise UserError(f'{name} takes integer timesteps only and two of the grid\'s levels round to the same '
                            f'one; use fewer steps or EulerDiscreteScheduler')
        return {'timesteps': timesteps.tolist()}
    config = scheduler.config                                            # EDMEulerScheduler: its rho ramp
    top, bottom = config.sigma_max ** (1 / config.rho), config.sigma_min ** (1 / config.rho)
    return {'sigmas': (top - torch.tensor(levels, dtype=torch.float64) ** (1 / config.rho)) / (top - bottom)}


def build_scheduler(name: str, scheduler_config: Mapping[str, Any], sigmas: Sequence[float]) -> Any:
    """The diffusers scheduler `name` from a model's scheduler config (plus OVERRIDES), set to step through the grid
    `sigmas`; UserError if it cannot take it."""
    import diffusers   # pylint: disable=import-outside-toplevel
    check_scheduler(name)
    prediction_type(scheduler_config, 'the scheduler config')
    scheduler = getattr(diffusers, name).from_config(dict(scheduler_config), **OVERRIDES[name])
    scheduler.set_timesteps(**timestep_args(scheduler, sigmas))
    return scheduler


def scheduler_sigmas(scheduler: Any) -> np.ndarray:
    """The K + 1 levels the scheduler steps through (float64 of its float32 values; Heun's repeats removed): the grid
    to give our sampler for the same run."""
    return torch.unique_consecutive(scheduler.sigmas).double().numpy()


def start_scale(scheduler: Any) -> float:
    """EDM's x at the start of the pipeline loop is latents * start_scale: its init_noise_sigma, times
    sqrt(1 + sigma_0^2) for schedulers that work in x_t (DPM-Solver). Our sampler starts at latents * sigma_0."""
    scale = float(scheduler.init_noise_sigma)
    if type(scheduler).__name__ == 'DPMSolverMultistepScheduler':
        scale *= float(1 + scheduler.sigmas[0].double() ** 2) ** 0.5
    return scale


@torch.no_grad()
def sample_with_scheduler(unet: torch.nn.Module, scheduler: Any, latents: torch.Tensor,
                          class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sample as a diffusers pipeline's loop does, with a scheduler whose timesteps are set: x = latents *
    init_noise_sigma; for each t: scale_model_input, the UNet (class indices `class_labels`; a learned variance's extra
    channels dropped), step. Returns the final sample (x_0; = EDM's x at sigma = 0)."""
    x = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        output = unet(model_input, t, class_labels=class_labels).sample[:, :x.shape[1]]
        x = scheduler.step(output, t, x).prev_sample
    return x


# The export's computation of timestep_args in the user's session, per scheduler: (imports, lines), with `sigmas`
# and `scheduler` defined.
_TABLE = ['table = np.array(((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5)',
          "assert table[0] * (1 - 1e-6) <= sigmas[-2] and sigmas[0] <= table[-1] * (1 + 1e-6), 'grid outside the "
          "noise table: make the schedule for this model'"]
_SNIPPET_ARGS = {
    'EulerDiscreteScheduler': ([], ["timestep_args = {'sigmas': sigmas}"]),
    'HeunDiscreteScheduler': (['import numpy as np'], [
        "# it takes timesteps and reads sigma linearly in t between its table's entries: invert that", *_TABLE,
        "timestep_args = {'timesteps': np.interp(sigmas[:-1], table, np.arange(len(table))).tolist()}"]),
    'DPMSolverMultistepScheduler': (['import numpy as np'], [
        '# it takes integer timesteps only: the levels are rounded to the nearest table entries (in log sigma)',
        *_TABLE,
        'timesteps = np.interp(np.log(sigmas[:-1]), np.log(table), np.arange(len(table))).round().astype(int)',
        "assert len(set(timesteps)) == len(timesteps), 'two levels round to one timestep: use fewer steps'",
        "timestep_args = {'timesteps': timesteps.tolist()}"]),
    'EDMEulerScheduler': (['import torch'], [
        '# it reads sigmas= as a ramp through its rho formula (and appends the 0): pass the ramp of these levels',
        'c = scheduler.config',
        'top, bottom = c.sigma_max ** (1 / c.rho), c.sigma_min ** (1 / c.rho)',
        "timestep_args = {'sigmas': (top - torch.tensor(sigmas[:-1], dtype=torch.float64) ** (1 / c.rho)) "
        "/ (top - bottom)}"]),
}


def export_snippet(name: str, sigmas: Sequence[float], comment: Optional[str] = None) -> str:
    """Python that builds diffusers' `name` for the grid from `pipe.scheduler.config` and sets its timesteps (the
    exact call); ends with a newline."""
    check_scheduler(name)
    values = json.dumps(np.append(_positive_levels(sigmas), 0.0).tolist(), allow_nan=False)
    settings = ', '.join(f'{key}={value!r}' for key, value in OVERRIDES[name].items())
    lines = [f'# {line}' for line in (comment or '').splitlines()]
    imports, args = _SNIPPET_ARGS[name]
    lines += [*imports, f'from diffusers import {name}', f'sigmas = {values}',
              f'scheduler = {name}.from_config(pipe.scheduler.config, {settings})', *args,
              'scheduler.set_timesteps(**timestep_args)',
              '# a pipeline with sigmas=/timesteps=: pipe.scheduler = scheduler; pipe(..., **timestep_args);',
              '# else loop as its pipeline does: x = latents * scheduler.init_noise_sigma, then for t in '
              'scheduler.timesteps: scale_model_input, model, step']
    return '\n'.join(lines) + '\n'
