"""Compare schedules side by side on one network: a table of schedule x steps x metric, measured in one run.

    python -m art.bench --network=analytic:gauss1d --steps=2,5,10,20,50 --schedules=uniform,edm,closed-form --metric=w2
    python -m art.bench --network=analytic:gmm:mix.npz --steps=5,10 --schedules=edm,closed-form,run/schedule-k10.json

Schedules are baseline names (edm, uniform, logsnr, vp, ve, iddpm), `art` (the network's ART schedule, as
generate_art.py samples by default: its shipped file, else its ART clock made on first use and cached,
art/auto_clock.py, `--cache-dir`), schedule methods made on the fly for each K (`closed-form`: the training-free ART
optimum, estimated once and read off its clock; `direct`: LD3-style grid optimisation; `gits`: GITS-style dynamic
programming; these use seeds of their own, disjoint from the benchmark's), or schedule files (resampled to other K,
with a note). Metrics and measurement: art/compare.py. With
`--repeats=R` every value is measured on R disjoint seed sets and reported as mean +- standard deviation. `--gnet` and
`--guidance` measure on the autoguided field of a network pickle (edm.guidance), the field generate_art.py integrates.
Sizes are bounded so that a typo cannot run for days or exhaust memory: at most MAX_LATENTS latents in all
(`--num` x `--repeats`, FID's 50,000 fits), MAX_REPEATS seed sets, K <= edm.grids.MAX_STEPS.
"""

from typing import List, Optional

import click
import torch

import dnnlib
from dnnlib.util import UserError
from art import metrics
from art.auto_clock import CACHE_ENV, NAME, ArtSchedules
from art.compare import MAX_LATENTS, ScheduleSource, format_table, run_bench
from art.networks import load_network_spec
from edm.cli import SEED, Command, check_output_file, guidance_options, name_list_callback, parse_device, steps_callback
from edm.guidance import check_guidance_options, guided_spec
from edm.rng import MAX_SEED
from edm.sampler import SOLVERS

MAX_REPEATS = 100


def check_sizes(num: int, repeats: int, seed: int) -> None:
    """UserError unless the num x repeats latents fit MAX_LATENTS and their seeds stay <= MAX_SEED."""
    if num * repeats > MAX_LATENTS:
        raise UserError(f'--num={num} x --repeats={repeats} is {num * repeats:,} latents, more than {MAX_LATENTS:,}; '
                        f'give fewer')
    if seed + num * repeats - 1 > MAX_SEED:
        raise UserError(f'--seed={seed}: the latents\' seeds would pass {MAX_SEED:,}; give a smaller --seed')


@click.command(cls=Command)
@click.option('--network', help='Network pickle, URL or analytic:... spec', metavar='PATH|URL|SPEC', required=True)
@click.option('--steps', help='Step counts K (e.g. 2,5,10)', metavar='LIST', default='2,5,10', show_default=True,
              callback=steps_callback())
@click.option('--schedules', help=f'Comma-separated baselines, {NAME} (the network\'s ART schedule), methods '
              f'(closed-form, direct, gits) or schedule files', metavar='LIST',
              default='edm,uniform,logsnr,closed-form', show_default=True, callback=name_list_callback)
@click.option('--solver', type=click.Choice(SOLVERS), default='euler', show_default=True)
@click.option('--metric', type=click.Choice(['w2', 'rms', 'fid']), default='rms', show_default=True)
@click.option('--num', help='Latents (images) per seed set', metavar='INT', type=click.IntRange(1, MAX_LATENTS),
              default=256, show_default=True)
@click.option('--repeats', help='Disjoint seed sets; the table shows mean +- std', metavar='INT',
              type=click.IntRange(1, MAX_REPEATS), default=1, show_default=True)
@click.option('--ref', help='FID reference statistics (.npz path or URL), for --metric=fid', metavar='NPZ|URL')
@click.option('--detector', help='Inception for --metric=fid: offline, a TorchScript file, or a pickle URL/path',
              metavar='offline|PATH|URL', default='offline', show_default=True)
@click.option('--batch', help='Images per batch for --metric=fid', metavar='INT', type=click.IntRange(1, MAX_LATENTS),
              default=64, show_default=True)
@click.option('--seed', help='First seed of the latents', metavar='INT', type=SEED, default=0, show_default=True)
@click.option('--cf-samples', help='Trajectories for the closed-form estimate of E|Q|', metavar='INT',
              type=click.IntRange(1, MAX_LATENTS), default=256, show_default=True)
@click.option('--device', help='Device', metavar='DEVICE', type=str, default='cpu', show_default=True,
              callback=parse_device)
@click.option('--trust-pickle', is_flag=True, help='Run the code embedded in the network pickle')
@click.option('--out', help='Write the rows as JSON here', metavar='JSON', type=str, default=None)
@click.option('--cache-dir', help=f'Folder of cached ART clocks  [default: ${CACHE_ENV}, else dnnlib\'s cache]',
              metavar='DIR', type=str, default=None)
@guidance_options()
def main(network: str, steps: List[int], schedules: List[str], solver: str, metric: str, num: int, repeats: int,
         ref: Optional[str], detector: str, batch: int, seed: int, cf_samples: int, device: torch.device,
         trust_pickle: bool, out: Optional[str], cache_dir: Optional[str], gnet: Optional[str],
         guidance: Optional[float]) -> None:
    """Compare schedules side by side on one network."""
    network = guided_spec(network, gnet, check_guidance_options(gnet, guidance))
    if not schedules:
        raise UserError('--schedules is empty; give baselines, methods or schedule files')
    if metric == 'fid' and not ref:
        raise UserError('--metric=fid needs --ref (reference statistics made with fid.py ref)')
    check_sizes(num, repeats, seed)
    if out:
        check_output_file(out, '--out')
    net = load_network_spec(network, device=device, trust_embedded_code=trust_pickle)
    if metric == 'fid' and getattr(net, 'encoder', None) is not None:
        raise UserError('--metric=fid scores samples as pixels, but this network\'s samples are decoded by its '
                        'encoder (an EDM2 file); generate its images with generate_art.py and score them with fid.py')
    if metric == 'w2':
        metrics.check_exact_w2(net)
    method_options = {'closed-form': dict(num_samples=cf_samples)}
    art = ArtSchedules(net, network, cache_dir, log=lambda line: click.echo(line, err=True))
    sources = [ScheduleSource(spec, net, network, solver, method_options, maker=art if spec == NAME else None)
               for spec in schedules]
    for source in sources:
        if source.note:
            click.echo(f'Note: {source.note}.', err=True)
    rows = run_bench(network, net, steps, sources, solver, metric, num, seed, device, repeats=repeats,
                     fid_options=dict(ref=ref, detector=detector, batch=batch))
    print(format_table(rows))
    if out:
        dnnlib.util.atomic_write_json(out, dict(network=network, metric=metric, solver=solver, num=num,
                                                repeats=repeats, seed=seed, rows=rows), indent=1)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
