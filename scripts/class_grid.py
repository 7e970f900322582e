"""The class grid of a class-conditional network: one row per class, one column per seed (the README picture).

    python scripts/class_grid.py --network=assets/edm-fmnist28-cond.pkl --seeds=0-9 --steps=18 --out=docs/classes.png

Every sample depends only on its seed and class: row c, column j is `generate_art.py --class=c --seeds=j` with the
same grid and solver. Tiles are enlarged (nearest neighbour) so that a 28x28 sample is readable.
"""
import os
import sys

import click
import PIL.Image
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from art.networks import load_network_spec  # noqa: E402
from art.schedules import baseline_schedule  # noqa: E402
from edm.cli import Command, check_output_file, parse_seeds  # noqa: E402
from edm.images import image_grid, save_png  # noqa: E402
from edm.rng import seed_latents  # noqa: E402
from edm.sampler import SOLVERS, sample  # noqa: E402


@click.command(cls=Command)
@click.option('--network', required=True, metavar='PKL|SPEC', help='A class-conditional network')
@click.option('--seeds', default='0-9', show_default=True, callback=parse_seeds, help='Seeds, one column each')
@click.option('--steps', 'num_steps', type=click.IntRange(min=1), default=18, show_default=True)
@click.option('--solver', type=click.Choice(SOLVERS), default='heun', show_default=True)
@click.option('--scale', type=click.IntRange(min=1), default=3, show_default=True, help='Pixels per image pixel')
@click.option('--out', required=True, metavar='PNG', help='Where to write the picture')
def main(network: str, seeds: list, num_steps: int, solver: str, scale: int, out: str) -> None:
    """Sample every class of a conditional network for the same seeds on EDM's grid."""
    check_output_file(out, '--out')
    net = load_network_spec(network)
    if not net.label_dim:
        raise click.UsageError(f'{network} is unconditional; the class grid needs a class-conditional network')
    sigmas = baseline_schedule('edm', num_steps, net=net).sigmas
    rows = []
    for class_idx in range(net.label_dim):
        latents, labels, _ = seed_latents(net, seeds, class_idx=class_idx)
        rows.append(sample(net, latents, sigmas, class_labels=labels, solver=solver))
    picture = image_grid(torch.cat(rows), columns=len(seeds))
    save_png(picture.resize((picture.width * scale, picture.height * scale), PIL.Image.Resampling.NEAREST), out)
    print(f'Wrote {out}: {net.label_dim} classes x {len(seeds)} seeds, {solver} K={num_steps}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
