"""Generate images with a learned ART schedule (or any named grid): python -m edm.generate plus --schedule.

    python generate_art.py --network=PKL --outdir=out --schedule=runs/00000-.../schedule-k10.json --seeds=0-63
    python generate_art.py --network=PKL --outdir=out --schedule=logsnr --steps=10 --solver=euler

`--schedule` takes a schedule file (resampled with a note when it was learned for another K), a baseline grid name
(edm, uniform, logsnr, vp, ve, iddpm) or `art`, the default: the network's ART schedule (art/auto_clock.py), its
shipped file when it has one (the embedded default network, used without `--network`; resampled from the nearest
shipped K), else its ART clock, made on first use in seconds, cached (`--cache-dir`, else $EDM_ART_CACHE, else
dnnlib's cache folder) and reused; one line says which and what it cost. `--schedule=edm` (at the default solver)
is exactly `python -m edm.generate`, and so is `--disc` without `--schedule`. Because `--schedule` names the step
schedule here, upstream's ablation option for sigma(t) is called `--sigma-schedule`. Besides the per-seed PNGs,
`<outdir>-grid.png` shows the first 64 images (beside the folder, which keeps only what fid.py should read). `--gnet`
and `--guidance` autoguide the network (edm.guidance); a schedule learned on the guided field records that field as
its network, and the ART clock is made on that field.
"""

import dataclasses
import os
from typing import List, Optional

import click
import torch

from art import auto_clock
from art.networks import DEFAULT_NETWORK, load_network_spec
from art.schedules import Schedule, baseline_schedule, check_network_fit, load_schedule
from dnnlib.util import UserError
from edm import grids
from edm.cli import Command, check_output_dir, check_output_file, check_sigma_range, generate_options, guidance_options
from edm.imagegen import generate_images, load_on_ranks
from edm.guidance import check_guidance_options, guided_spec
from edm.images import grid_from_files, image_path, save_png
from edm.sampler import SOLVERS, sample, upstream_sampler
from torch_utils import distributed as dist

GRID_IMAGES = 64   # images shown in the grid picture


def schedule_grid(spec: str, net: torch.nn.Module, network: str, num_steps: Optional[int],
                  cache_dir: Optional[str] = None, **grid_kwargs) -> Schedule:
    """The Schedule named by --schedule for K = num_steps (None: the file's own K, else 18); grid_kwargs go to
    baselines. `art`: the network's shipped file, else its cached ART clock (art.auto_clock). A file must fit the
    network (art.schedules.check_network_fit), with a note when it was made for another one."""
    if spec in grids.DISCRETIZATIONS:
        return baseline_schedule(spec, num_steps or 18, net=net, **grid_kwargs)
    if spec == auto_clock.NAME:
        shipped = auto_clock.shipped_path(network, num_steps or 18)
        if shipped is None:                  # the clock serves every solver: --solver's default (heun) applies
            clock = auto_clock.shared_clock(net, network, cache_dir, log=dist.print0)
            return dataclasses.replace(clock.resample(num_steps or 18), solver=None)
        spec = str(shipped)
    schedule = load_schedule(spec)
    note = check_network_fit(schedule, net, network, spec)
    if note:
        dist.print0(f'Note: {note}.')
    if num_steps is None or num_steps == schedule.num_steps:
        return schedule
    schedule = load_schedule(spec, num_steps=num_steps, resample=True)   # its errors say which file
    note = schedule.provenance['resampled']
    dist.print0(f'Note: {spec} holds K={note["from_steps"]}; resampled to K={note["to_steps"]} ({note["rule"]}).')
    return schedule


def grid_path(outdir: str) -> str:
    """The grid picture beside the image folder (`out` -> `out-grid.png`), so that the folder holds only the per-seed
    images that fid.py reads."""
    return os.path.normpath(outdir) + '-grid.png'


@click.command(cls=Command)
@click.option('--network', 'network', help='Network pickle, URL or analytic:... spec  [default: the embedded default]',
              metavar='PATH|URL|SPEC', type=str, default=None)
@generate_options(sigma_schedule_flag='--sigma-schedule', default_outdir='out')
@click.option('--solver', help='ODE solver  [default: the schedule file\'s, else heun]', type=click.Choice(SOLVERS))
@click.option('--schedule', 'schedule_spec', metavar='FILE|NAME', type=str, default=None,
              help=f'Step schedule: a schedule file, one of {", ".join(grids.DISCRETIZATIONS)}, or {auto_clock.NAME}: '
                   f'the network\'s ART schedule  [default: {auto_clock.NAME} unless --disc]')
@click.option('--cache-dir', help=f'Folder of cached ART clocks  [default: ${auto_clock.CACHE_ENV}, else dnnlib\'s '
              f'cache]', metavar='DIR', type=str, default=None)
@guidance_options()
@click.pass_context
def main(ctx: click.Context, network: str, outdir: str, seeds: List[int], subdirs: bool, class_idx: Optional[int],
         max_batch_size: int, device: torch.device, trust_pickle: bool, solver: Optional[str],
         schedule_spec: Optional[str], cache_dir: Optional[str], num_steps: int, discretization: Optional[str],
         schedule: Optional[str], gnet: Optional[str], guidance: Optional[float], **sampler_kwargs) -> None:
    """Generate images with a learned ART schedule or a named noise-level grid."""
    dist.init()
    network = network or DEFAULT_NETWORK
    if schedule_spec is None and discretization is None:
        schedule_spec = auto_clock.NAME
    check_output_dir(outdir, '--outdir')
    check_output_file(grid_path(outdir), '--outdir (its grid picture)')
    network = guided_spec(network, gnet, check_guidance_options(gnet, guidance))
    range_disc = discretization or (schedule_spec if schedule_spec in grids.DISCRETIZATIONS else 'edm')
    check_sigma_range(sampler_kwargs['sigma_min'], sampler_kwargs['sigma_max'], range_disc)
    net = load_on_ranks(lambda spec: load_network_spec(spec, trust_embedded_code=trust_pickle), network, device)
    check_sigma_range(sampler_kwargs['sigma_min'], sampler_kwargs['sigma_max'], range_disc, net)
    if schedule_spec is None:
        sampler = upstream_sampler(solver=solver, discretization=discretization, schedule=schedule,
                                   num_steps=num_steps, **sampler_kwargs)
    else:
        if discretization is not None:
            raise UserError('--disc and --schedule both choose the noise levels; give one of them')
        steps_given = ctx.get_parameter_source('num_steps') != click.core.ParameterSource.DEFAULT
        grid_kwargs = {key: sampler_kwargs[key] for key in ('sigma_min', 'sigma_max', 'rho')
                       if sampler_kwargs[key] is not None}
        art_schedule = schedule_grid(schedule_spec, net, network, num_steps if steps_given else None, cache_dir,
                                     **grid_kwargs)
        sigmas = torch.as_tensor(art_schedule.sigmas, dtype=torch.float64, device=device)
        options = dict(solver=solver or art_schedule.solver or 'heun', schedule=schedule or 'linear',
                       scaling=sampler_kwargs.pop('scaling') or 'none',
                       **{key: sampler_kwargs[key] for key in ('S_churn', 'S_min', 'S_max', 'S_noise')})
        dist.print0(f'Schedule {art_schedule.method}: K={art_schedule.num_steps}, solver {options["solver"]}, '
                    f'sigmas {[round(float(s), 4) for s in art_schedule.sigmas]}')
        sampler = lambda net, latents, class_labels, randn_like: sample(  # noqa: E731
            net, latents, sigmas, class_labels=class_labels, randn_like=randn_like, **options)
    dist.print0(f'Generating {len(seeds)} images to "{outdir}"...')
    generate_images(net, outdir, seeds, sampler, class_idx=class_idx, max_batch_size=max_batch_size,
                    subdirs=subdirs, device=device)
    if dist.get_rank() == 0:
        first = [image_path(outdir, seed, subdirs) for seed in seeds[:GRID_IMAGES]]
        save_png(grid_from_files(first), grid_path(outdir))
    dist.print0(f'Done: {len(seeds)} images in "{outdir}", '
                f'the first {min(len(seeds), GRID_IMAGES)} in "{grid_path(outdir)}".')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
