"""Inspect and export schedule files.

    python -m art.schedule_tool export FILE.json --format=k-diffusion|diffusers|list [--steps=K] [--out=PATH]
        [--scheduler=NAME]
    python -m art.schedule_tool show FILE.json [FILE2.json ...] [--baselines=edm,uniform,logsnr] [--out=plot.png]

`export` prints (or writes atomically to --out) the plain descending grid of K+1 sigmas ending in 0, with exact
float64 values: `list` and `diffusers` as a JSON list (EulerDiscreteScheduler's `set_timesteps(sigmas=...)` takes the
list including the final 0), `k-diffusion` as `sigmas = torch.tensor([...], dtype=torch.float64)` for
k_diffusion.sampling.sample_euler(model, x, sigmas). With `--format=diffusers --scheduler=NAME` (a diffusers class:
EulerDiscreteScheduler, HeunDiscreteScheduler, DPMSolverMultistepScheduler, EDMEulerScheduler) it prints the Python
that builds that scheduler from `pipe.scheduler.config` and sets it to the grid (art.diffusers_sched). `--steps`
resamples to another K first (the file's clock, else log-linear). `show` prints a table of the grids and writes a
PNG of sigma against step index (log y; the final sigma = 0 cannot be drawn); baselines are computed at the K of
the first file on the default EDM range.
"""

import os
from typing import Any, Dict, List, Optional, Tuple

import click

import dnnlib
from art import diffusers_sched, plots
from art.schedules import baseline_schedule, load_schedule
from edm import grids
from edm.cli import STEPS, Group, check_output_file, name_list_callback


def _baselines(ctx: click.Context, param: click.Parameter, value: str) -> List[str]:
    """click callback: a comma-separated list of baseline names (may be empty)."""
    names = name_list_callback(ctx, param, value)
    for name in names:
        if name not in grids.DISCRETIZATIONS:
            raise click.BadParameter(f'unknown baseline {name!r}; valid: {", ".join(grids.DISCRETIZATIONS)}')
    return names


def _labels(paths: Tuple[str, ...]) -> List[str]:
    """Short unique labels for the files: the file name, or the path where names repeat."""
    names = [os.path.basename(p) for p in paths]
    return [name if names.count(name) == 1 else p for name, p in zip(names, paths)]


@click.group(cls=Group)
def main() -> None:
    """Inspect and export ART schedule files."""


@main.command()
@click.argument('file', metavar='FILE.json')
@click.option('--format', 'fmt', type=click.Choice(plots.EXPORT_FORMATS), required=True,
              help='list: JSON list; diffusers: JSON list for EulerDiscreteScheduler.set_timesteps(sigmas=...), '
                   'final 0 included (other schedulers: --scheduler); '
                   'k-diffusion: torch.tensor literal for sample_euler(model, x, sigmas)')
@click.option('--steps', metavar='K', type=STEPS, default=None,
              help='Resample to K steps first (clock, else log-linear)')
@click.option('--out', metavar='PATH', type=str, default=None, help='Write here (atomically) instead of stdout')
@click.option('--scheduler', metavar='NAME', type=str, default=None,
              help=f'With --format=diffusers: Python setting up this diffusers scheduler for the grid '
                   f'({", ".join(diffusers_sched.SCHEDULERS)})')
def export(file: str, fmt: str, steps: Optional[int], out: Optional[str], scheduler: Optional[str]) -> None:
    """Print the K+1 descending sigmas (ending in 0) in the form k-diffusion, diffusers or a plain list takes."""
    if scheduler is not None:
        if fmt != 'diffusers':
            raise click.BadParameter(f'needs --format=diffusers, not {fmt}', param_hint="'--scheduler'")
        diffusers_sched.check_scheduler(scheduler)
    if out:
        check_output_file(out, '--out')
    schedule = load_schedule(file, num_steps=steps, resample=True)
    comment = f'{file}: method {schedule.method}, K = {schedule.num_steps}'
    text = plots.export_text(schedule.sigmas, fmt, comment=comment, scheduler=scheduler)
    if out:
        dnnlib.util.atomic_write_text(out, text)
    else:
        click.echo(text, nl=False)


@main.command()
@click.argument('files', metavar='FILE.json...', nargs=-1, required=True)
@click.option('--baselines', metavar='LIST', default='', callback=_baselines,
              help=f'Baselines at the K of the first file ({", ".join(grids.DISCRETIZATIONS)})')
@click.option('--out', metavar='PNG', type=str, default=None, help='Plot path  [default: <first file stem>.png]')
def show(files: Tuple[str, ...], baselines: List[str], out: Optional[str]) -> None:
    """Print a table of the grids and plot sigma against step index (log y) to a PNG."""
    out = check_output_file(out or os.path.splitext(files[0])[0] + '.png', '--out')
    if not out.lower().endswith('.png'):
        raise click.BadParameter(f'{out} does not end in .png; show writes a PNG picture', param_hint="'--out'")
    schedules = [load_schedule(path) for path in files]
    grids_by_name: Dict[str, Any] = {label: s.sigmas for label, s in zip(_labels(files), schedules)}
    for name in baselines:
        grids_by_name[f'{name} (baseline)'] = baseline_schedule(name, schedules[0].num_steps).sigmas
    click.echo(plots.schedule_table(grids_by_name))
    plots.plot_schedules(grids_by_name, out, title=f'noise levels per step: {os.path.basename(files[0])}')
    click.echo(f'wrote {out}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
