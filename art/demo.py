"""The main job (`make demo`): the network's ART schedule against EDM's grid at the same budget, side by side.

    python -m art.demo [--network=SPEC] [--steps=10] [--outdir=demo-out] [--seeds=0-15]

The ART side is the network's shipped schedule, else its ART clock made on first use and cached (art/auto_clock.py,
`--cache-dir`). Both grids sample the same latents with the same solver; each result is compared with a
high-accuracy solution of the probability-flow ODE from the same latents (exact for analytic models). Writes
`comparison.png` (EDM | ART | reference), the per-seed PNGs under `edm/` and `art/`, and `results.json`; prints the
endpoint errors. At most MAX_SEEDS seeds (one picture) and K <= edm.grids.MAX_STEPS.
"""

import math
import os
from typing import Dict, List, Optional

import click
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

import dnnlib
from art import metrics
from art.analytic import AnalyticModel
from art.auto_clock import CACHE_ENV, ArtSchedules
from art.networks import DEFAULT_NETWORK, load_network_spec
from art.schedules import Schedule, baseline_schedule
from dnnlib.util import UserError
from edm.cli import STEPS, Command, check_output_dir, parse_seeds
from edm.images import image_grid, save_images, save_png
from edm.rng import seed_latents
from edm.sampler import sample


REFERENCE_STEPS = 128   # Heun steps of a trained network's reference solve (NFE 255: the demo stays under a minute)
TILE = 96           # pixels per sample in the picture (small images are enlarged, nearest neighbour)
FONT_SIZE = 16
MAX_SEEDS = 1024    # samples in the comparison picture
START_RTOL = 1e-12  # both grids start at the same sigma_T up to round-off (the closed form's clock is evaluated)


def enlarged(image: PIL.Image.Image, image_size: int) -> PIL.Image.Image:
    """A grid of image_size-pixel samples scaled by an integer factor so that each sample is about TILE pixels."""
    factor = max(1, round(TILE / image_size))
    return image.resize((image.width * factor, image.height * factor), PIL.Image.Resampling.NEAREST)


def labelled(image: PIL.Image.Image, lines: List[str]) -> PIL.Image.Image:
    """The image under a caption of one or more lines; the panel is as wide as the longest line needs."""
    font = PIL.ImageFont.load_default(size=FONT_SIZE)
    draw = PIL.ImageDraw.Draw(PIL.Image.new('RGB', (1, 1)))
    width = max(draw.textbbox((0, 0), line, font=font)[2] for line in lines) + 8
    line_height = FONT_SIZE + 6
    top = line_height * len(lines) + 4
    canvas = PIL.Image.new('RGB', (max(image.width, width), image.height + top), 'white')
    canvas.paste(image.convert('RGB'), (0, top))
    draw = PIL.ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, 2 + i * line_height), line, fill='black', font=font)
    return canvas


def side_by_side(panels: List[PIL.Image.Image], gap: int = 16) -> PIL.Image.Image:
    """Panels next to each other on a white background."""
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    canvas = PIL.Image.new('RGB', (width, max(p.height for p in panels)), 'white')
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + gap
    return canvas


def common_start(schedules: Dict[str, Schedule]) -> float:
    """sigma_T of EDM's grid, where every schedule must start (within START_RTOL) to sample the same x(T)."""
    sigma_T = float(schedules['edm'].sigmas[0])
    for name, schedule in schedules.items():
        if not math.isclose(float(schedule.sigmas[0]), sigma_T, rel_tol=START_RTOL):
            raise UserError(f'the {name} schedule starts at sigma = {schedule.sigmas[0]:g}, not at EDM\'s '
                            f'{sigma_T:g}: the two would not sample the same x(T); use a network both fit')
    return sigma_T


def run_demo(network: str, num_steps: int, outdir: str, seeds: List[int], solver: str = 'euler',
             cache_dir: Optional[str] = None) -> Dict:
    """Sample `seeds` with the network's ART schedule (art.auto_clock: shipped, else its cached clock) and EDM's grid;
    write the comparison; return the measured errors."""
    net = load_network_spec(network)
    schedules = {'edm': baseline_schedule('edm', num_steps, net=net),
                 'art': ArtSchedules(net, network, cache_dir)(num_steps)}
    sigma_T = common_start(schedules)
    latents, labels, _ = seed_latents(net, seeds)
    reference = metrics.reference_endpoints(net, latents, sigma_T, labels, steps=REFERENCE_STEPS)
    reference_name = 'exact ODE solution' if isinstance(net, AnalyticModel) else f'Heun, {REFERENCE_STEPS} steps'
    results, panels = {}, []
    for name, schedule in schedules.items():
        x = sample(net, latents, schedule.sigmas, class_labels=labels, solver=solver)
        save_images(x, seeds, os.path.join(outdir, name))
        results[name] = dict(method=schedule.method, sigmas=schedule.sigmas.tolist(),
                             rms=metrics.rms_error(x, reference))
        title = "EDM's grid (rho=7)" if name == 'edm' else f'ART ({schedule.method})'
        panels.append(labelled(enlarged(image_grid(x), net.img_resolution),
                               [f'{title}, {solver} K={num_steps}', f'rms error {results[name]["rms"]:.3f}']))
    panels.append(labelled(enlarged(image_grid(reference), net.img_resolution),
                           ['reference: same latents', reference_name]))
    save_png(side_by_side(panels), os.path.join(outdir, 'comparison.png'))
    summary = dict(network=network, steps=num_steps, solver=solver, seeds=seeds, reference=reference_name,
                   results=results)
    dnnlib.util.atomic_write_json(os.path.join(outdir, 'results.json'), summary, indent=1)
    return summary


@click.command(cls=Command)
@click.option('--network', help='Network pickle, URL or analytic:... spec  [default: the embedded default]',
              metavar='PATH|URL|SPEC', default=None)
@click.option('--steps', 'num_steps', help='Number of sampling steps K', type=STEPS, default=10, show_default=True)
@click.option('--outdir', help='Where to write the comparison', metavar='DIR', default='demo-out', show_default=True)
@click.option('--seeds', help=f'Random seeds (e.g. 0-15), at most {MAX_SEEDS}', metavar='LIST', default='0-15',
              show_default=True, callback=parse_seeds)
@click.option('--solver', type=click.Choice(['euler', 'heun']), default='euler', show_default=True)
@click.option('--cache-dir', help=f'Folder of cached ART clocks  [default: ${CACHE_ENV}, else dnnlib\'s cache]',
              metavar='DIR', type=str, default=None)
def main(network: str, num_steps: int, outdir: str, seeds: List[int], solver: str, cache_dir: Optional[str]) -> None:
    """Compare the network's ART schedule with EDM's grid (the shipped one on the default network)."""
    if len(seeds) > MAX_SEEDS:
        raise UserError(f'--seeds gives {len(seeds):,} seeds, more than the {MAX_SEEDS} the picture shows; give fewer')
    check_output_dir(outdir, '--outdir')
    summary = run_demo(network or DEFAULT_NETWORK, num_steps, outdir, seeds, solver, cache_dir)
    print(f'{summary["network"]}, K={num_steps} ({solver}), {len(seeds)} seeds: rms endpoint error against the '
          f'reference solution of the same latents ({summary["reference"]})')
    for name, result in summary['results'].items():
        sigmas = [round(s, 3) for s in result['sigmas']]
        print(f'  {name:4s} ({result["method"]}): {result["rms"]:.4f}   sigmas {sigmas}')
    print(f'Wrote {os.path.join(outdir, "comparison.png")} and results.json')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
