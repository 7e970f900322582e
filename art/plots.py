"""Presentation of schedules: exports for k-diffusion / diffusers, text tables, and PNG plots (matplotlib, Agg).

Exports hold the plain descending grid of K+1 sigmas ending in 0, written with Python's shortest round-trip float
repr (what json.dumps writes), so parsing an export gives back the identical float64 grid.

- 'list': a JSON list.
- 'diffusers': the same JSON list, what `EulerDiscreteScheduler.set_timesteps(sigmas=...)` (or a pipeline's `sigmas=`
  argument) takes: with custom sigmas diffusers sets num_inference_steps = len(sigmas) - 1, maps sigmas[:-1] to
  timesteps and appends nothing, so the list includes the final 0; it casts to float32. It starts at latents *
  init_noise_sigma, sigma_0 only with timestep_spacing 'linspace' or 'trailing'. Other schedulers read custom values
  differently: with `scheduler=NAME`, the export is the Python that sets up that scheduler for the grid
  (art.diffusers_sched.export_snippet, tested against diffusers' own schedulers).
- 'k-diffusion': a Python snippet `sigmas = torch.tensor([...], dtype=torch.float64)`, the descending tensor ending
  in 0 that k_diffusion.sampling.sample_euler(model, x, sigmas) and the other samplers take.

Plots write atomically (temporary file in the target folder, then os.replace). matplotlib is imported lazily so
that exports and tables do not pay for it.
"""

import json
import math
import re
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

import dnnlib
from art import diffusers_sched

PathLike = Union[str, Path]
EXPORT_FORMATS = ('k-diffusion', 'diffusers', 'list')
LOG_AXIS_NOTE = 'final sigma = 0 not shown (log axis)'

_KDIFF_RE = re.compile(r'torch\.tensor\(\s*(\[[^\]]*\])\s*,\s*dtype\s*=\s*torch\.float64\s*\)')


# ---------------------------------------------------------------------------------------------------------------
# Exports.

def _float_list(sigmas: Sequence[float]) -> List[float]:
    """The grid as a list of Python floats (float64 values, repr-exact)."""
    return [float(s) for s in np.asarray(sigmas, dtype=np.float64).tolist()]


def export_text(sigmas: Sequence[float], fmt: str, comment: Optional[str] = None,
                scheduler: Optional[str] = None) -> str:
    """The grid as text in an export format ('list', 'diffusers', 'k-diffusion'), for 'diffusers' with `scheduler`
    the Python that sets up that diffusers scheduler for it; ends with a newline."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f'unknown export format {fmt!r}; valid formats: {", ".join(EXPORT_FORMATS)}')
    if scheduler is not None:
        if fmt != 'diffusers':
            raise ValueError(f'a scheduler is exported in the diffusers format, not {fmt!r}')
        return diffusers_sched.export_snippet(scheduler, sigmas, comment)
    values = json.dumps(_float_list(sigmas), allow_nan=False)
    if fmt in ('list', 'diffusers'):
        return values + '\n'
    lines = [f'# {line}' for line in (comment or '').splitlines()]
    lines += ['import torch', f'sigmas = torch.tensor({values}, dtype=torch.float64)']
    return '\n'.join(lines) + '\n'


def parse_export(text: str, fmt: str) -> np.ndarray:
    """Read an export back into the float64 grid (inverse of export_text); ValueError if it does not parse."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f'unknown export format {fmt!r}; valid formats: {", ".join(EXPORT_FORMATS)}')
    if fmt == 'k-diffusion':
        match = _KDIFF_RE.search(text)
        if match is None:
            raise ValueError('no `torch.tensor([...], dtype=torch.float64)` literal found')
        text = match.group(1)
    values = json.loads(text)
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in values):
        raise ValueError('expected a list of numbers')
    return np.asarray(values, dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes.

def _save_figure(fig, path: PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt
    try:
        return Path(dnnlib.util.atomic_write(path, lambda fh: fig.savefig(fh, format='png', dpi=120,
                                                                           bbox_inches='tight')))
    finally:
        plt.close(fig)


def _pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use('Agg', force=True)
    import matplotlib.pyplot as plt
    return plt


# ---------------------------------------------------------------------------------------------------------------
# Tables and plots.

def schedule_table(schedules: Mapping[str, Sequence[float]]) -> str:
    """A Markdown table: one row per step index i, one column sigma_i per schedule (blank past a schedule's K)."""
    grids = {name: np.asarray(s, dtype=np.float64) for name, s in schedules.items()}
    if not grids:
        raise ValueError('no schedules to tabulate')
    rows = max(len(g) for g in grids.values())
    lines = ['| i | ' + ' | '.join(f'{name} (K={len(g) - 1})' for name, g in grids.items()) + ' |',
             '|---|' + '---|' * len(grids)]
    for i in range(rows):
        cells = [f'{g[i]:.6g}' if i < len(g) else '' for g in grids.values()]
        lines.append(f'| {i} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot_schedules(schedules: Mapping[str, Sequence[float]], path: PathLike, title: Optional[str] = None) -> Path:
    """Plot sigma against step index for several grids (log y; positive levels only) and write a PNG atomically."""
    if not schedules:
        raise ValueError('no schedules to plot')
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for name, sigmas in schedules.items():
            sigmas = np.asarray(sigmas, dtype=np.float64)
            steps = np.arange(len(sigmas))
            keep = np.isfinite(sigmas) & (sigmas > 0)
            ax.plot(steps[keep], sigmas[keep], marker='o', markersize=3, linewidth=1.2,
                    label=f'{name} (K={len(sigmas) - 1})')
        ax.set_yscale('log')
        ax.set_xlabel('step index i')
        ax.set_ylabel('sigma_i')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=8, title=LOG_AXIS_NOTE, title_fontsize=7)
        ax.set_title(title or 'noise levels per step')
    except BaseException:
        plt.close(fig)
        raise
    return _save_figure(fig, path)


def plot_metric_vs_nfe(rows: Iterable[Mapping], path: PathLike, metric_name: str, title: Optional[str] = None) -> Path:
    """Plot value against NFE, one line per schedule (log y; log x when NFE spans >= 10x), and write a PNG atomically.

    rows are benchmark rows with keys schedule, nfe, value; non-positive or non-finite values cannot be shown on the
    log axis and are left out (the legend says how many).
    """
    series: Dict[str, List[tuple]] = {}
    for row in rows:
        series.setdefault(str(row['schedule']), []).append((float(row['nfe']), float(row['value'])))
    if not series:
        raise ValueError('no rows to plot')
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        nfes = [n for points in series.values() for n, _ in points]
        for i, (name, points) in enumerate(series.items()):
            points.sort()
            shown = [(n, v) for n, v in points if math.isfinite(v) and v > 0]
            hidden = len(points) - len(shown)
            label = f'{name} ({hidden} value(s) <= 0 not shown)' if hidden else name
            xs, ys = zip(*shown) if shown else ((), ())     # a fully hidden series still gets its legend entry
            style = ('-', '--', ':', '-.')[i // 10 % 4]      # past the 10 colours of the cycle, another line style
            ax.plot(xs, ys, marker='o', markersize=4, linewidth=1.2, linestyle=style, label=label)
        ax.set_yscale('log')
        if min(nfes) > 0 and max(nfes) >= 10 * min(nfes):
            ax.set_xscale('log')
        ax.set_xlabel('NFE (network evaluations)')
        ax.set_ylabel(metric_name)
        ax.grid(True, which='both', alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.set_title(title or f'{metric_name} against NFE')
    except BaseException:
        plt.close(fig)
        raise
    return _save_figure(fig, path)
