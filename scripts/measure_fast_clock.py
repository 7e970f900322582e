"""The fast default clock against the 64-trajectory clock on one network (issue 20, item 4): one table, paired.

    python scripts/measure_fast_clock.py --network=assets/edm-fmnist28-cond.pkl --cells=trained --num=128 \\
        --slow=assets/schedules/edm-fmnist28-cond/closed-form-k10.json --out=runs/fast-clock-trained
    python scripts/measure_fast_clock.py --network=analytic:gmm:assets/fmnist-gmm.npz \\
        --cells=euler:3,5,10/heun:3,5,10 --num=256 --repeats=4 --out=runs/fast-clock-fmnist-gmm
    python scripts/measure_fast_clock.py --network=analytic:gauss1d --cells=euler:3,5,10/heun:3,5,10 --metric=w2 \\
        --out=runs/fast-clock-gauss1d

The fast clock is the default closed form (art.closed_form.adaptive_schedule, default AdaptiveSettings, --seed), the
slow one the fixed estimate from --slow-samples trajectories on 256 levels with JVPs (closed_form_schedule(net, K,
num_samples=64)); either is read from --fast / --slow instead when given (a closed-form file with a clock), else made
here (CPU seconds of this process, as provenance records them) and written into --out. Both are read off at every K
of --cells (`trained`: art.settings.TRAINED_RMS, else `solver:K,K/solver:K`) and sampled from the same latents:
--repeats disjoint sets of --num seeds (seeds 0, 1, ...), rms against the exact solution (analytic models) or an
art.settings.TRAINED_REFERENCE solve (pickles), or exact W2. The ratio fast / slow is taken per set (paired) and
shown as its mean and range over the sets. Writes `table.md` (the table, the clocks' costs) and `rows.json` in --out.
Run it with OMP_NUM_THREADS=1 to get one core's CPU seconds.
"""
import os
import sys
import time
from typing import Dict, List, Optional

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dnnlib  # noqa: E402
from art import metrics  # noqa: E402
from art.closed_form import adaptive_schedule, closed_form_schedule  # noqa: E402
from art.compare import ScheduleSource, SeedSet, run_bench  # noqa: E402
from art.networks import load_network_spec  # noqa: E402
from art.schedules import Schedule, code_version, load_schedule, save_schedule  # noqa: E402
from art.settings import TRAINED_REFERENCE, TRAINED_RMS  # noqa: E402
from edm import lenet  # noqa: E402
from edm.cli import Command  # noqa: E402
from edm.sampler import SOLVERS, nfe  # noqa: E402


def parse_cells(text: str) -> Dict[str, List[int]]:
    """`trained` (the report's rms cells) or `solver:K,K/solver:K` -> {solver: [K, ...]}."""
    if text == 'trained':
        return dict(TRAINED_RMS)
    cells = {}
    for part in text.split('/'):
        solver, _, steps = part.partition(':')
        if solver not in SOLVERS or not steps:
            raise click.BadParameter(f'{part!r}: expected solver:K,K with a solver of {", ".join(SOLVERS)}')
        cells[solver] = [int(k) for k in steps.split(',')]
    return cells


def clock_cost(schedule: Schedule) -> dict:
    """Network evaluations (forward passes and JVPs alike) and CPU seconds from a closed-form schedule's provenance."""
    cost = schedule.provenance.get('cost', {})
    evals = cost.get('evals', cost.get('forward_evals', 0) + cost.get('jvp_evals', 0))
    return dict(evals=int(evals), cpu_seconds=cost.get('cpu_seconds'), wall_seconds=cost.get('wall_seconds'),
                num_samples=schedule.provenance.get('reference', {}).get('num_samples'),
                stop=schedule.provenance.get('estimate', {}).get('stop'))


def clock_file(path: Optional[str], outdir: str, name: str, make) -> str:
    """The clock's schedule file: `path` (checked), else made now by make() and written to outdir/name."""
    if path:
        schedule = load_schedule(path)
        if schedule.method != 'closed-form' or schedule.clock is None:
            raise click.BadParameter(f'{path} is not a closed-form schedule with a clock')
        return path
    click.echo(f'making the {name} clock ...', err=True)
    schedule = make()
    dest = os.path.join(outdir, f'{name}-clock.json')
    save_schedule(schedule, dest)
    click.echo(f'  {clock_cost(schedule)} -> {dest}', err=True)
    return dest


def measure(network: str, net, files: Dict[str, str], cells: Dict[str, List[int]], metric: str,
            seed_sets: List[SeedSet], fid_options: Optional[dict] = None) -> List[dict]:
    """One row per (solver, K): each clock's value (mean over the seed sets) and the paired ratio fast / slow."""
    rows = []
    for solver, steps in cells.items():
        sources = {name: ScheduleSource(path, net, network, solver) for name, path in files.items()}
        for k in steps:
            start = time.process_time()
            got = {name: run_bench(network, net, [k], [source], solver, metric, len(seed_sets[0].seeds), 0,
                                   torch.device('cpu'), seed_sets=seed_sets, fid_options=fid_options)[0]
                   for name, source in sources.items()}
            ratios = np.array(got['fast']['values']) / np.array(got['slow']['values'])
            rows.append(dict(solver=solver, steps=k, nfe=nfe(k, solver), metric=metric, fast=got['fast']['value'],
                             slow=got['slow']['value'], ratio=float(ratios.mean()), ratio_min=float(ratios.min()),
                             ratio_max=float(ratios.max()), fast_sigmas=got['fast']['sigmas'],
                             slow_sigmas=got['slow']['sigmas']))
            click.echo(f'  {solver} K={k}: fast {rows[-1]["fast"]:.5g}  slow {rows[-1]["slow"]:.5g}  '
                       f'ratio {rows[-1]["ratio"]:.4f}  ({time.process_time() - start:.0f} CPU-s)', err=True)
    return rows


def format_rows(rows: List[dict], metric: str, slow_samples: int, repeats: int) -> str:
    """The Markdown table: one line per (solver, K)."""
    spread = ' (range over sets)' if repeats > 1 else ''
    lines = [f'| solver | K | NFE | {metric} fast | {metric} {slow_samples}-traj | ratio{spread} |',
             '|---|---|---|---|---|---|']
    for row in rows:
        ratio = f'{row["ratio"]:.4f}' + (f' ({row["ratio_min"]:.3f}-{row["ratio_max"]:.3f})' if repeats > 1 else '')
        lines.append(f'| {row["solver"]} | {row["steps"]} | {row["nfe"]} | {row["fast"]:.5g} | {row["slow"]:.5g} | '
                     f'{ratio} |')
    return '\n'.join(lines)


@click.command(cls=Command)
@click.option('--network', required=True, metavar='PKL|SPEC', help='Network pickle or analytic:... spec')
@click.option('--cells', default='trained', show_default=True, metavar='trained|solver:K,K/...',
              help='The (solver, K) cells')
@click.option('--metric', type=click.Choice(['rms', 'w2']), default='rms', show_default=True)
@click.option('--num', type=click.IntRange(min=1), default=128, show_default=True, help='Latents per seed set')
@click.option('--repeats', type=click.IntRange(min=1), default=1, show_default=True, help='Disjoint seed sets')
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True, help='The fast estimate\'s seed')
@click.option('--fast', metavar='JSON', default=None, help='The fast clock\'s file (default: made here)')
@click.option('--slow', metavar='JSON', default=None, help='The slow clock\'s file (default: made here)')
@click.option('--slow-samples', type=click.IntRange(min=1), default=64, show_default=True,
              help='Trajectories of the slow clock')
@click.option('--fid-cells', default=None, metavar='solver:K,K/...',
              help='Also LeNet-FID (the report\'s: art.settings) of --fid-num images in these cells')
@click.option('--fid-num', type=click.IntRange(min=1), default=1000, show_default=True,
              help='Images (seeds 0..N-1) per LeNet-FID value')
@click.option('--out', required=True, metavar='DIR', help='Output folder (table.md, rows.json, clocks made)')
def main(network: str, cells: str, metric: str, num: int, repeats: int, seed: int, fast: Optional[str],
         slow: Optional[str], slow_samples: int, fid_cells: Optional[str], fid_num: int, out: str) -> None:
    """Measure the fast default clock against the slow clock on one network."""
    cell_map = parse_cells(cells)
    os.makedirs(out, exist_ok=True)
    version = code_version()
    net = load_network_spec(network)
    if metric == 'w2':
        metrics.check_exact_w2(net)
    files = dict(fast=clock_file(fast, out, 'fast', lambda: adaptive_schedule(net, network, seed=seed)),
                 slow=clock_file(slow, out, 'slow', lambda: closed_form_schedule(net, 10, network,
                                                                                 num_samples=slow_samples)))
    costs = {name: clock_cost(load_schedule(path)) for name, path in files.items()}
    reference = TRAINED_REFERENCE if not network.startswith('analytic:') else None
    seed_sets = [SeedSet(net, list(range(r * num, (r + 1) * num)), torch.device('cpu'),
                         **({'reference': reference} if reference else {})) for r in range(repeats)]
    click.echo(f'measuring {sum(map(len, cell_map.values()))} cells on {repeats} x {num} latents (the first cell '
               f'also solves the reference) ...', err=True)
    start = time.process_time()
    rows = measure(network, net, files, cell_map, metric, seed_sets)
    tables = [format_rows(rows, metric, slow_samples, repeats)]
    if fid_cells:
        click.echo(f'LeNet-FID of {fid_num} images ...', err=True)
        fid_rows = measure(network, net, files, parse_cells(fid_cells), 'fid',
                           [SeedSet(net, list(range(fid_num)), torch.device('cpu'))],
                           dict(ref=lenet.REFERENCE, detector='lenet', batch=32))
        rows += fid_rows
        tables += ['', f'LeNet-FID of {fid_num} images (seeds 0-{fid_num - 1}) against the shipped statistics of the '
                   f'60k training images:', '', format_rows(fid_rows, 'LeNet-FID', slow_samples, 1)]
    against = 'exact W2' if metric == 'w2' else ('the exact solution' if reference is None else
                                                 f'{reference[0].upper()} on EDM\'s grid, {reference[1]} steps')
    text = '\n'.join([
        f'{network}: {metric} against {against}, {repeats} x {num} latents (seeds 0-{repeats * num - 1}), code '
        f'{version}; fast = {files["fast"]}, slow = {files["slow"]}', '', *tables, '',
        *[f'- {name}: {c["evals"]:,} evaluations, {c["cpu_seconds"]} CPU-s ({c["num_samples"]} trajectories'
          + (f', stop: {c["stop"]}' if c['stop'] else '') + ')' for name, c in costs.items()],
        f'- measuring took {time.process_time() - start:.0f} CPU-s', ''])
    dnnlib.util.atomic_write_text(os.path.join(out, 'table.md'), text)
    dnnlib.util.atomic_write_json(os.path.join(out, 'rows.json'), dict(network=network, metric=metric, num=num,
                                                                        repeats=repeats, files=files, costs=costs,
                                                                        code_version=version, rows=rows), indent=1)
    print(text)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
