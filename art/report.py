"""The benchmark report: every schedule method side by side, as a Markdown table and a plot per setting.

    python -m art.report --outdir=docs/bench [--art-rl=RUN_DIR] [--num=256] [--repeats=4] [--fid-num=0]

Settings: an image-shaped analytic Gaussian mixture (rms endpoint error against the exact ODE solution, Euler,
K = 3, 5, 10, 20) and the embedded default network (rms, Euler and Heun, K = 3, 5, 10, 18; and FID with the offline
detector when `--fid-num` > 0, against `--fid-ref` or, by default, the statistics of `--fid-ref-num` exact draws
from the default network's mixture, quantised as PNGs are). Schedules: edm, uniform, logsnr, closed-form, direct, gits, and art-rl (for the
mixture from the run directory given by --art-rl, for the default network its shipped schedule). Every value is the
mean (and spread) over `--repeats` disjoint sets of `--num` latents: the rms is dominated by rare latents, so one set
of 256 moves it by up to 15%. Each method's cost (network evaluations, CPU seconds) comes from the provenance of its
schedules, and a gap table gives ART-RL's ratio to direct (the limit on analytic models), to the closed form and to
EDM. Writes `<outdir>/report.md`, one PNG per setting and `rows.json`.
"""

import os
import platform
from typing import Dict, List, Optional

import click
import torch

import dnnlib
from dnnlib.util import UserError
from art.analytic import GaussianMixtureModel, load_analytic, write_random_gmm
from art.bench import ScheduleSource, format_table, run_bench
from art.methods import MAKER_METHODS
from art.networks import DEFAULT_NETWORK, shipped_schedule_path
from art.plots import plot_metric_vs_nfe
from art.schedules import code_version
from edm import fid
from edm.cli import Command, int_list_callback
from edm.images import to_uint8

BASELINES = ['edm', 'uniform', 'logsnr']
ONE_CLOCK = ('closed-form', 'art-rl')        # methods whose schedules for every K come from one estimate or training


def method_costs(rows: List[Dict]) -> Dict[str, dict]:
    """Cost of making each method's schedules from their provenance: summed over K, once for one-clock methods."""
    costs = {}
    for row in rows:
        cost = row.get('cost') or {}
        if not cost:
            continue
        total = costs.setdefault(row['schedule'], dict(network_evals=0, cpu_seconds=0.0))
        if row['schedule'] in ONE_CLOCK and total['network_evals']:
            continue
        total['network_evals'] += int(sum(v for k, v in cost.items() if k.endswith('_evals') and isinstance(v, (int, float))))
        cpu = cost.get('cpu_seconds', cost.get('cpu_seconds_this_session_rank0', 0.0))   # art-rl: rank 0, its run
        total['cpu_seconds'] = round(total['cpu_seconds'] + float(cpu), 1)
    return costs


def art_rl_files(run_dir: Optional[str], steps: List[int]) -> List[str]:
    """The art-rl schedule files of a run directory for the largest K present (others are resampled)."""
    if not run_dir:
        return []
    files = [os.path.join(run_dir, f'schedule-k{k}.json') for k in steps]
    found = [f for f in files if os.path.isfile(f)]
    if not found:
        raise UserError(f'--art-rl={run_dir}: no schedule-k<K>.json for K in {steps}')
    return found[-1:]


def gap_table(rows: List[Dict]) -> str:
    """ART-RL's value divided by direct's, the closed form's and EDM's at each K (empty without an art-rl column)."""
    value = {(row['schedule'], row['steps']): row['value'] for row in rows}
    steps = sorted({row['steps'] for row in rows if ('art-rl', row['steps']) in value})
    others = [name for name in ('direct', 'closed-form', 'edm') if all((name, k) in value for k in steps)]
    if not steps or not others:
        return ''
    lines = ['| art-rl / | ' + ' | '.join(f'K={k}' for k in steps) + ' |', '|' + '---|' * (len(steps) + 1)]
    lines += [f'| {name} | ' + ' | '.join(f'{value["art-rl", k] / value[name, k]:.3f}' for k in steps) + ' |'
              for name in others]
    return '\n'.join(lines)


def exact_reference(net: GaussianMixtureModel, num: int, path: str, batch: int = 64, seed: int = 0) -> str:
    """FID reference statistics of num exact draws from a mixture (offline detector), written to path."""
    images = torch.from_numpy(to_uint8(net.sample_data(num, torch.Generator().manual_seed(seed)))).permute(0, 3, 1, 2)
    batches = (images[start:start + batch] for start in range(0, num, batch))
    mu, sigma = fid.images_stats(fid.load_detector('offline'), batches)
    fid.save_reference(path, mu, sigma)
    return path


def columns(network: str, net: torch.nn.Module, solver: str, art_rl: List[str], direct_latents: int) -> List:
    """The benchmark's schedule columns for one network and solver (methods make each K's schedule once); direct is
    warm-started from the closed-form and gits grids of the same K."""
    sources = {spec: ScheduleSource(spec, net, network, solver) for spec in BASELINES + ['closed-form', 'gits']}
    warm = [sources['closed-form'].maker, sources['gits'].maker]
    sources['direct'] = ScheduleSource('direct', net, network, solver,
                                       dict(direct=dict(num_latents=direct_latents, warm_start=warm)))
    return [sources[spec] for spec in BASELINES + list(MAKER_METHODS)] + \
        [ScheduleSource(spec, net, network, solver) for spec in art_rl]


def setting(title: str, network: str, net: torch.nn.Module, steps: List[int], solver: str, metric: str, num: int,
            repeats: int, outdir: str, sources: List[ScheduleSource], fid_options: Optional[dict] = None) -> Dict:
    """Run one benchmark setting; write its plot; return rows, costs and the tables."""
    rows = run_bench(network, net, steps, sources, solver, metric, num, 0, torch.device('cpu'), repeats=repeats,
                     fid_options=fid_options)
    art_rl = [source.label for source in sources if os.path.isfile(source.spec)]
    for row in rows:
        if row['schedule'] in art_rl:
            row['schedule'] = 'art-rl'
    name = f'{title}-{metric}-{solver}'.replace(' ', '_')
    plot_metric_vs_nfe(rows, os.path.join(outdir, f'{name}.png'), metric, title=f'{title} ({solver})')
    direct = next(source for source in sources if source.spec == 'direct').maker.options['num_latents']
    warm = ' (warm-started from the closed-form and gits grids)'
    unit = 'images' if metric == 'fid' else 'latents'
    note = (f'{repeats} x {num} {unit} per value' + (f' (mean ± std over the {repeats} sets)' if repeats > 1 else '')
            + f'; direct trained on {direct} latents of its own{warm}.')
    return dict(title=title, name=name, solver=solver, metric=metric, rows=rows, note=note,
                costs=method_costs(rows), table=format_table(rows), gaps=gap_table(rows))


def write_report(outdir: str, results: List[Dict], version: str) -> str:
    """report.md: one section per setting with its table, plot and method costs; `version` is the commit measured."""
    lines = ['# Schedule benchmark', '', f'Produced by `python -m art.report` at commit {version} on '
             f'{platform.processor() or platform.machine()} CPU, torch {torch.__version__}.', '']
    for result in results:
        lines += [f'## {result["title"]}: {result["metric"]}, {result["solver"]}', '', result['note'], '',
                  result['table'], '',
                  f'![{result["name"]}]({result["name"]}.png)', '', '| method | cost: network evaluations | CPU s |',
                  '|---|---|---|']
        lines += [f'| {m} | {c["network_evals"]} | {c["cpu_seconds"]} |' for m, c in result['costs'].items()]
        lines.append('')
        if result['gaps']:
            lines += ['ART-RL relative to direct (the limit), the closed form and EDM (ratio of the values above):', '',
                      result['gaps'], '']
    text = '\n'.join(lines)
    dnnlib.util.atomic_write_text(os.path.join(outdir, 'report.md'), text)
    rows = [dict(setting=r['name'], **row) for r in results for row in r['rows']]
    dnnlib.util.atomic_write_json(os.path.join(outdir, 'rows.json'), rows, indent=1)
    return text


@click.command(cls=Command)
@click.option('--outdir', help='Where to write report.md, plots and rows.json', metavar='DIR', default='docs/bench',
              show_default=True)
@click.option('--art-rl', 'art_rl', help='Run directory of train_art.py with art-rl schedules for the mixture',
              metavar='DIR', default=None)
@click.option('--num', help='Latents (images) per seed set', type=click.IntRange(min=2), default=256, show_default=True)
@click.option('--repeats', help='Disjoint seed sets per value (mean +- std)', type=click.IntRange(min=1), default=4,
              show_default=True)
@click.option('--direct-latents', help='Training latents of direct on the default network (the mixture: 4096)',
              type=click.IntRange(min=1), default=256, show_default=True)
@click.option('--fid-num', help='Images per FID measurement on the default network (0: skip FID)',
              type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--fid-ref', help='FID reference statistics for the default network  [default: exact draws]',
              metavar='NPZ', default=None)
@click.option('--fid-ref-num', help='Exact draws for the default FID reference', type=click.IntRange(min=2),
              default=2000, show_default=True)
@click.option('--fid-steps', help='Step counts of the FID settings', metavar='LIST', default='3,5,10,18',
              show_default=True, callback=int_list_callback(1, 'fid-steps'))
@click.option('--fid-solvers', help='Solvers of the FID settings', type=click.Choice(['euler', 'heun', 'both']),
              default='both', show_default=True)
def main(outdir: str, art_rl: Optional[str], num: int, repeats: int, direct_latents: int, fid_num: int,
         fid_ref: Optional[str], fid_ref_num: int, fid_steps: List[int], fid_solvers: str) -> None:
    """Benchmark every schedule method and write the report."""
    version = code_version()                        # before this run writes its own outputs into the tree
    os.makedirs(outdir, exist_ok=True)
    mixture = os.path.join(outdir, 'mixture-k10-1x8x8.npz')
    if not os.path.exists(mixture):
        write_random_gmm(mixture, k=10, shape=(1, 8, 8), seed=0)
    spec = f'analytic:gmm:{mixture}'
    mixture_net = load_analytic(spec)
    results = [setting('Gaussian mixture 1x8x8', spec, mixture_net, [3, 5, 10, 20], 'euler', 'rms', num, repeats,
                       outdir, columns(spec, mixture_net, 'euler', art_rl_files(art_rl, [3, 5, 10, 20]), 4096))]
    default = load_analytic(DEFAULT_NETWORK)
    if fid_num and not fid_ref:
        fid_ref = exact_reference(default, fid_ref_num, os.path.join(outdir, 'fid-ref-default-network.npz'))
    shipped = shipped_schedule_path(DEFAULT_NETWORK, 10)
    extra = [str(shipped)] if shipped is not None and shipped.name.startswith('art-rl') else []
    for solver in ('euler', 'heun'):
        sources = columns(DEFAULT_NETWORK, default, solver, extra, direct_latents)
        results.append(setting('default network', DEFAULT_NETWORK, default, [3, 5, 10, 18], solver, 'rms', num,
                               repeats, outdir, sources))
        if fid_num and fid_solvers in (solver, 'both'):
            results.append(setting('default network', DEFAULT_NETWORK, default, fid_steps, solver, 'fid', fid_num,
                                   1, outdir, sources, fid_options=dict(ref=fid_ref, detector='offline', batch=64)))
    print(write_report(outdir, results, version))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
