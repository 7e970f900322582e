"""Where should a grid start on a diffusers model? LeNet-FID against the starting noise level (docs/diffusers.md §3).

    OMP_NUM_THREADS=1 python scripts/diffusers_start_probe.py --network=assets/ddpm-fmnist28-cond --num=500

Two tables from the same latents (seeds first_seed..first_seed+num-1, random classes; a first seed past the
practitioner's table's seeds keeps the choice of a start off the images it is judged on), every run through
diffusers' own schedulers (art.practitioner's pipeline loop): (1) a near-exact solve, DPM-Solver++(2M) on EDM's
40-step grid, from each of --starts: the quality of the model's own ODE solution as a function of where it starts;
(2) at each K of --steps, diffusers' Euler and DPM-Solver++(2M) defaults against the closed-form clock (adaptive
default) made on [table sigma_min, start] for each start, through the same schedulers.
"""
import os
import sys
import time

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from art import practitioner as P  # noqa: E402
from art.diffusers_sched import build_scheduler  # noqa: E402
from art.methods import ScheduleMaker  # noqa: E402
from art.networks import load_network_spec  # noqa: E402
from edm import fid, grids, lenet  # noqa: E402
from edm.cli import Command, steps_callback  # noqa: E402
from edm.rng import seed_latents  # noqa: E402


@click.command(cls=Command)
@click.option('--network', required=True, metavar='FOLDER', help='A diffusers model folder')
@click.option('--num', type=click.IntRange(min=2), default=500, show_default=True, help='Images per value')
@click.option('--first-seed', type=click.IntRange(min=0), default=0, show_default=True, help='First latent seed')
@click.option('--starts', default='157.4,80,25,10', show_default=True,
              help='Starting sigmas of the solves (empty: no near-exact table)')
@click.option('--grid-starts', default='80,25', show_default=True, help='Starting sigmas of the closed-form grids')
@click.option('--steps', default='5,10', show_default=True, callback=steps_callback(), help='K of the cells')
def main(network: str, num: int, first_seed: int, starts: str, grid_starts: str, steps: list) -> None:
    """Print the two tables."""
    spec = P.DIFFUSERS_PREFIX + network
    net = load_network_spec(spec)
    config = P.scheduler_config(network)
    latents, labels, _ = seed_latents(net, list(range(first_seed, first_seed + num)))
    classes = labels.argmax(dim=1)
    detector = fid.load_detector('lenet')
    ref = fid.load_reference(lenet.REFERENCE, fid.feature_dim(detector))

    def score(name: str, make) -> None:
        start = time.time()
        images, nfe = P.sample_cell(net.unet, make, latents, classes, 50)
        click.echo(f'{name}: NFE {nfe}, start {P.scheduler_levels(make())[0]:.4g}, LeNet-FID '
                   f'{fid.samples_fid(detector, images.split(50), ref):.2f} ({time.time() - start:.0f} s)')

    for sigma_max in [float(s) for s in starts.split(',') if s.strip()]:
        sigmas = grids.edm_sigmas(40, net.sigma_min, min(sigma_max, net.sigma_max))
        score(f'DPM++(2M) K=40 EDM grid from {sigma_max:g}', lambda s=sigmas: build_scheduler(P.DPM, config, s))
    # One clock per start serves every K and both schedulers.
    closed_forms = {sigma_max: ScheduleMaker('closed-form', net, spec, options=dict(sigma_max=sigma_max))
                    for sigma_max in map(float, grid_starts.split(','))}
    for k in steps:
        for label, scheduler in P.GRID_SCHEDULERS.items():
            score(f'K={k} {label} default', lambda r=P.Row(label, scheduler): P.default_scheduler(r, config, k))
            for sigma_max, closed_form in closed_forms.items():
                score(f'K={k} {label} + closed form from {sigma_max:g}',
                      lambda s=closed_form(k).sigmas, name=scheduler: build_scheduler(name, config, s))


if __name__ == '__main__':
    main()
