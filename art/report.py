"""The benchmark report: every schedule method side by side, as a Markdown table and a plot per setting.

    python -m art.report --outdir=docs/bench [--settings=trained,mixture,fmnist-mixture] [--art-rl=RUN_DIR] ...

Settings (`--settings`): `mixture`, an image-shaped analytic Gaussian mixture (rms endpoint error against the exact ODE
solution, Euler, K = 3, 5, 10, 20); `fmnist-mixture`, the Fashion-MNIST mixture (rms, Euler and Heun, K = 3, 5, 10,
18; and FID with the offline detector when `--fid-num` > 0, against `--fid-ref` or, by default, the statistics of
`--fid-ref-num` exact draws from the mixture, quantised as PNGs are); `trained`, the embedded trained network (below).
Schedules: edm, uniform, logsnr, closed-form, direct, gits, and art-rl (for the mixture from the run directory given by
--art-rl, for the Fashion-MNIST mixture its shipped schedule). Every value is the
mean (and spread) over `--repeats` disjoint sets of `--num` latents: the rms is dominated by rare latents, so one set
of 256 moves it by up to 15%. Each method's cost (network evaluations, CPU seconds) comes from the provenance of its
schedules, and a gap table gives ART-RL's ratio to direct (the limit on analytic models), to the closed form and to
EDM. Writes `<outdir>/report.md` (the settings in the order of SETTINGS, the trained network first, with the wall
time of each), one PNG per setting and `rows.json`.

The trained network (`trained`): rms against a `TRAINED_REFERENCE` solve of the same `--trained-num` latents for the
solver x K cells of `TRAINED_RMS`, and LeNet-FID (`fid.py --detector=lenet`, against the shipped statistics of the 60k
training images) of `--trained-fid-num` images for the cells of `TRAINED_FID`, with `--trained-fid-repeats` disjoint
sets at Euler K = 5; Inception FID of `--inception-num` images at Euler and Heun K = 5 when `--inception-ref`
(statistics of the training images, `fid.py ref --detector=offline`) is given. The default sizes are chosen for a
2-core CPU; the report states the wall time they took. The closed form and art-rl are one clock each, read off at every
K: by default the schedules shipped for the network (their provenance holds what making them cost), else
`--trained-closed-form` / `--trained-art-rl`; gits is made per solver for Euler and Heun, direct only at the K of
`--trained-direct-steps` (it differentiates through the network, the costliest method by far on a CPU); neither is
defined for RK4 or DPM-Solver++(2M), whose cells show '-'.
"""

import dataclasses
import os
import platform
import time
from typing import Dict, List, Optional, Sequence

import click
import torch

import dnnlib
from dnnlib.util import UserError
from art.analytic import GaussianMixtureModel, load_analytic, write_random_gmm
from art.compare import ScheduleSource, format_table, run_bench
from art.compare import SeedSet
from art.direct import NUM_LATENTS
from art.methods import MAKER_METHODS, SOLVER_SPECIFIC, ScheduleMaker
from art.networks import DEFAULT_NETWORK, MIXTURE_NETWORK, load_network_spec, shipped_schedule_path
from art.plots import plot_metric_vs_nfe
from art.schedules import code_version, load_schedule
from edm import fid, lenet
from edm.cli import Command, check_output_dir, int_list_callback, name_list_callback
from edm.images import to_uint8

BASELINES = ['edm', 'uniform', 'logsnr']
SETTINGS = ('trained', 'mixture', 'fmnist-mixture')   # in the order run and reported
TRAINED_RMS = {'euler': [3, 5, 7, 10, 18], 'heun': [3, 5, 7, 10], 'rk4': [2, 3, 5], 'dpmpp-2m': [5, 10]}
TRAINED_FID = {'euler': [3, 5, 7, 10], 'heun': [3, 5, 7], 'rk4': [2, 3]}
TRAINED_REFERENCE = ('rk4', 64)             # the rms reference of a trained network: RK4 on EDM's grid, NFE 253
TRAINED_GITS_LEVELS = 60                    # gits teacher levels (Heun's table costs levels^2/2 per latent)
ONE_CLOCK = ('closed-form', 'art-rl', 'gits')   # methods whose schedules for every K come from one estimate
SUMMARY = ('trained network LeNet', 'trained network Inception', 'trained network')   # all solvers in one table, first


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
        total['network_evals'] += int(sum(v for k, v in cost.items()
                                          if k.endswith('_evals') and isinstance(v, (int, float))))
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
    direct = next(source for source in sources if source.spec == 'direct').maker.options['num_latents']
    unit = 'images' if metric == 'fid' else 'latents'
    note = (f'{repeats} x {num} {unit} per value' + (f' (mean ± std over the {repeats} sets)' if repeats > 1 else '')
            + f'; direct trained on {direct} latents of its own (warm-started from the closed-form and gits grids)')
    return finish_setting(title, solver, metric, rows, outdir, note)


def finish_setting(title: str, solver: str, metric: str, rows: List[Dict], outdir: str, note: str) -> Dict:
    """Name art-rl columns, write the setting's plot, and return its rows, note, costs and tables."""
    for row in rows:
        if row['schedule'].endswith('.json'):
            row['schedule'] = 'art-rl'                                     # the report's only schedule files
    name = f'{title}-{metric}-{solver}'.replace(' ', '_')
    print(f'{name}: {len(rows)} cells in {sum(row["seconds"] for row in rows):.0f} s', flush=True)
    plot_metric_vs_nfe(rows, os.path.join(outdir, f'{name}.png'), metric, title=f'{title} ({solver})')
    return dict(title=title, name=name, solver=solver, metric=metric, rows=rows, note=note + '.',
                costs=method_costs(rows), table=format_table(rows), gaps=gap_table(rows))


def one_clock_file(spec: Optional[str], method: str, option: str) -> Optional[str]:
    """The schedule file of a one-clock method for the trained network: `spec` (a file, or a train_art.py run
    directory: its largest K), else the shipped file of the method (None if it ships none)."""
    if spec is None:
        path = shipped_schedule_path(DEFAULT_NETWORK, 18, methods=(method,))
        return None if path is None else str(path)
    if os.path.isdir(spec):
        return art_rl_files(spec, sorted({k for steps in TRAINED_RMS.values() for k in steps}))[0]
    if not os.path.isfile(spec):
        raise UserError(f'{option}={spec}: no such schedule file or run directory')
    return spec


@dataclasses.dataclass
class TrainedOptions:
    """Sizes and schedule sources of the trained network's settings (the --trained-* and --inception-* options)."""
    num: int = 256                              # latents of the rms cells
    fid_num: int = 1000                         # images per LeNet-FID value (0: no FID)
    fid_repeats: int = 3                        # disjoint image sets of the LeNet-FID at Euler K = 5
    inception_ref: Optional[str] = None         # Inception statistics of the training images (None: no Inception FID)
    inception_num: int = 500                    # images per Inception-FID value
    closed_form_file: Optional[str] = None      # the closed form's clock (None: estimated here)
    art_rl_file: Optional[str] = None           # the art-rl clock (None: no art-rl row)
    direct_steps: Sequence[int] = (5,)          # K at which direct is made
    direct_latents: int = 64                    # direct's training (and held-out) latents
    direct_iters: int = 50                      # direct's Adam iterations
    gits_latents: int = 32                      # gits' teacher trajectories


def trained_results(outdir: str, opts: TrainedOptions) -> List[Dict]:
    """The settings of the embedded trained network (module docstring): rms and LeNet-FID per solver, Inception FID at
    K = 5; every schedule made once and shared by the cells that use it."""
    net = load_network_spec(DEFAULT_NETWORK)
    clock = load_schedule(opts.closed_form_file) if opts.closed_form_file else None
    closed_form = ScheduleMaker('closed-form', net, DEFAULT_NETWORK, options=dict(num_samples=64), clock=clock)
    rl_files = [opts.art_rl_file] if opts.art_rl_file else []
    cpu = torch.device('cpu')
    rms_sets = [SeedSet(net, list(range(opts.num)), cpu, reference=TRAINED_REFERENCE)]
    fid_sets = [SeedSet(net, list(range(r * opts.fid_num, (r + 1) * opts.fid_num)), cpu)
                for r in range(opts.fid_repeats)]
    inception_sets = [SeedSet(net, list(range(opts.inception_num)), cpu)]
    lenet_fid = dict(ref=lenet.REFERENCE, detector='lenet', batch=32)
    results = []
    for solver in TRAINED_RMS:
        sources = [ScheduleSource(spec, net, DEFAULT_NETWORK, solver) for spec in BASELINES]
        sources.append(ScheduleSource('closed-form', net, DEFAULT_NETWORK, solver, maker=closed_form))
        sources += [ScheduleSource(path, net, DEFAULT_NETWORK, solver) for path in rl_files]
        peers = []
        if solver in SOLVER_SPECIFIC['gits']:
            gits = ScheduleMaker('gits', net, DEFAULT_NETWORK, solver, dict(num_latents=opts.gits_latents,
                                                                            fine_steps=TRAINED_GITS_LEVELS))
            direct = ScheduleMaker('direct', net, DEFAULT_NETWORK, solver, dict(
                num_latents=opts.direct_latents, num_holdout=opts.direct_latents, iters=opts.direct_iters,
                reference=TRAINED_REFERENCE, warm_start=[closed_form, gits]))
            peers = [(ScheduleSource('gits', net, DEFAULT_NETWORK, solver, maker=gits), None),
                     (ScheduleSource('direct', net, DEFAULT_NETWORK, solver, maker=direct), list(opts.direct_steps))]

        def cells(title: str, steps: List[int], metric: str, seed_sets: List[SeedSet], **options) -> Dict:
            rows = run_bench(DEFAULT_NETWORK, net, steps, sources, solver, metric, len(seed_sets[0].seeds), 0, cpu,
                             seed_sets=seed_sets, **options)
            for source, only in peers:
                rows += run_bench(DEFAULT_NETWORK, net, [k for k in steps if only is None or k in only], [source],
                                  solver, metric, len(seed_sets[0].seeds), 0, cpu, seed_sets=seed_sets, **options)
            return finish_setting(title, solver, metric, rows, outdir,
                                  f'{len(seed_sets)} x {len(seed_sets[0].seeds)} '
                                  f'{"images" if metric == "fid" else "latents"} per value')

        results.append(cells('trained network', TRAINED_RMS[solver], 'rms', rms_sets))
        if opts.fid_num and solver in TRAINED_FID:
            results.append(cells('trained network LeNet', TRAINED_FID[solver], 'fid', fid_sets[:1],
                                 fid_options=lenet_fid))
            if solver == 'euler' and opts.fid_repeats > 1:
                results.append(cells('trained network LeNet repeats', [5], 'fid', fid_sets, fid_options=lenet_fid))
        if opts.inception_ref and solver in ('euler', 'heun'):
            results.append(cells('trained network Inception', [5], 'fid', inception_sets,
                                 fid_options=dict(ref=opts.inception_ref, detector='offline', batch=32)))
    return results


def mixture_results(outdir: str, art_rl: Optional[str], num: int, repeats: int, direct_latents: int) -> List[Dict]:
    """The image-shaped analytic mixture (written to outdir once): rms against the exact solution, Euler."""
    mixture = os.path.join(outdir, 'mixture-k10-1x8x8.npz')
    if not os.path.exists(mixture):
        write_random_gmm(mixture, k=10, shape=(1, 8, 8), seed=0)
    spec = f'analytic:gmm:{mixture}'
    net = load_analytic(spec)
    sources = columns(spec, net, 'euler', art_rl_files(art_rl, [3, 5, 10, 20]), direct_latents)
    return [setting('Gaussian mixture 1x8x8', spec, net, [3, 5, 10, 20], 'euler', 'rms', num, repeats, outdir,
                    sources)]


def fmnist_mixture_results(outdir: str, num: int, repeats: int, direct_latents: int, fid_num: int,
                           fid_ref: Optional[str], fid_ref_num: int, fid_steps: List[int],
                           fid_solvers: str) -> List[Dict]:
    """The Fashion-MNIST mixture: rms for Euler and Heun, and offline-Inception FID when fid_num > 0."""
    net = load_analytic(MIXTURE_NETWORK)
    if fid_num and not fid_ref:
        fid_ref = exact_reference(net, fid_ref_num, os.path.join(outdir, 'fid-ref-fmnist-mixture.npz'))
    shipped = shipped_schedule_path(MIXTURE_NETWORK, 10)
    extra = [str(shipped)] if shipped is not None and shipped.name.startswith('art-rl') else []
    results = []
    for solver in ('euler', 'heun'):
        sources = columns(MIXTURE_NETWORK, net, solver, extra, direct_latents)
        results.append(setting('Fashion-MNIST mixture', MIXTURE_NETWORK, net, [3, 5, 10, 18], solver, 'rms', num,
                               repeats, outdir, sources))
        if fid_num and fid_solvers in (solver, 'both'):
            results.append(setting('Fashion-MNIST mixture', MIXTURE_NETWORK, net, fid_steps, solver, 'fid', fid_num,
                                   1, outdir, sources, fid_options=dict(ref=fid_ref, detector='offline', batch=64)))
    return results


def write_report(outdir: str, results: List[Dict], version: str, walls: Optional[Dict[str, float]] = None) -> str:
    """report.md: the SUMMARY settings with all their solvers in one table each, then one section per setting with its
    table, plot and method costs; `version` is the commit measured, `walls` the wall seconds of each part run."""
    wall = ''
    if walls:
        each = ', '.join(f'{name} {seconds / 60:.0f}' for name, seconds in walls.items())
        wall = f' in {sum(walls.values()) / 60:.0f} min wall time ({each} min)'
    lines = ['# Schedule benchmark', '', f'Produced by `python -m art.report` at commit {version} on '
             f'{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}'
             f'{wall}.', '']
    for title in SUMMARY:
        same = [result for result in results if result['title'] == title]     # one result per solver
        if same:
            lines += [f'## {title}: {same[0]["metric"]}, all solvers', '', same[0]['note'], '',
                      format_table([row for result in same for row in result['rows']]), '']
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
@click.option('--direct-latents', help='Training latents of direct on the two mixtures (direct\'s default)',
              type=click.IntRange(min=1), default=NUM_LATENTS, show_default=True)
@click.option('--fid-num', help='Images per Inception-FID value on the Fashion-MNIST mixture (0: skip FID)',
              type=click.IntRange(min=0), default=256, show_default=True)
@click.option('--fid-ref', help='FID reference statistics for the Fashion-MNIST mixture  [default: exact draws]',
              metavar='NPZ', default=None)
@click.option('--fid-ref-num', help='Exact draws from the mixture for its FID reference', type=click.IntRange(min=2),
              default=2000, show_default=True)
@click.option('--fid-steps', help='Step counts of the mixture\'s FID settings', metavar='LIST', default='5,10',
              show_default=True, callback=int_list_callback(1, 'fid-steps'))
@click.option('--fid-solvers', help='Solvers of the mixture\'s FID settings',
              type=click.Choice(['euler', 'heun', 'both']), default='euler', show_default=True)
@click.option('--settings', help=f'Settings to run, of {", ".join(SETTINGS)}', metavar='LIST',
              default=','.join(SETTINGS), show_default=True, callback=name_list_callback)
@click.option('--trained-num', help='Latents of the rms cells of the trained network', type=click.IntRange(min=2),
              default=TrainedOptions.num, show_default=True)
@click.option('--trained-fid-num', help='Images per LeNet-FID value of the trained network (0: skip LeNet-FID)',
              type=click.IntRange(min=0), default=TrainedOptions.fid_num, show_default=True)
@click.option('--trained-fid-repeats', help='Disjoint image sets of the LeNet-FID at Euler K = 5',
              type=click.IntRange(min=1), default=TrainedOptions.fid_repeats, show_default=True)
@click.option('--trained-closed-form', help='Closed-form schedule of the trained network (its clock serves every K)',
              metavar='FILE', default=None, show_default='the shipped one')
@click.option('--trained-art-rl', help='art-rl schedule of the trained network, or a train_art.py run directory',
              metavar='FILE|DIR', default=None, show_default='the shipped one')
@click.option('--trained-direct-steps', help='K at which direct is made on the trained network', metavar='LIST',
              default=','.join(map(str, TrainedOptions.direct_steps)), show_default=True,
              callback=int_list_callback(1, 'trained-direct-steps'))
@click.option('--trained-direct-latents', help='Training latents of direct on the trained network',
              type=click.IntRange(min=1), default=TrainedOptions.direct_latents, show_default=True)
@click.option('--trained-direct-iters', help='Adam iterations of direct on the trained network (held-out stopping)',
              type=click.IntRange(min=0), default=TrainedOptions.direct_iters, show_default=True)
@click.option('--trained-gits-latents', help='Teacher trajectories of gits on the trained network',
              type=click.IntRange(min=1), default=TrainedOptions.gits_latents, show_default=True)
@click.option('--inception-ref', help='Inception statistics of the training images (fid.py ref --detector=offline) '
              'for the trained network  [default: no Inception FID]', metavar='NPZ', default=None)
@click.option('--inception-num', help='Images per Inception-FID value of the trained network',
              type=click.IntRange(min=2), default=TrainedOptions.inception_num, show_default=True)
def main(outdir: str, art_rl: Optional[str], num: int, repeats: int, direct_latents: int, fid_num: int,
         fid_ref: Optional[str], fid_ref_num: int, fid_steps: List[int], fid_solvers: str, settings: List[str],
         trained_num: int, trained_fid_num: int, trained_fid_repeats: int, trained_closed_form: Optional[str],
         trained_art_rl: Optional[str], trained_direct_steps: List[int], trained_direct_latents: int,
         trained_direct_iters: int, trained_gits_latents: int, inception_ref: Optional[str],
         inception_num: int) -> None:
    """Benchmark every schedule method and write the report."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise UserError(f'--settings: unknown {", ".join(unknown)}; choose from {", ".join(SETTINGS)}')
    check_output_dir(outdir, '--outdir')
    version = code_version()                        # before this run writes its own outputs into the tree
    for ref in (fid_ref, inception_ref):            # a bad file fails now, not after an hour of sampling
        if ref:
            fid.load_reference(ref)
    trained = TrainedOptions(
        num=trained_num, fid_num=trained_fid_num, fid_repeats=trained_fid_repeats, inception_ref=inception_ref,
        inception_num=inception_num,
        closed_form_file=one_clock_file(trained_closed_form, 'closed-form', '--trained-closed-form'),
        art_rl_file=one_clock_file(trained_art_rl, 'art-rl', '--trained-art-rl'), direct_steps=trained_direct_steps,
        direct_latents=trained_direct_latents, direct_iters=trained_direct_iters, gits_latents=trained_gits_latents)
    os.makedirs(outdir, exist_ok=True)
    parts = {'trained': lambda: trained_results(outdir, trained),
             'mixture': lambda: mixture_results(outdir, art_rl, num, repeats, direct_latents),
             'fmnist-mixture': lambda: fmnist_mixture_results(outdir, num, repeats, direct_latents, fid_num, fid_ref,
                                                              fid_ref_num, fid_steps, fid_solvers)}
    results, walls = [], {}
    for name in SETTINGS:
        if name in settings:
            start = time.perf_counter()
            results += parts[name]()
            walls[name] = time.perf_counter() - start
    print(write_report(outdir, results, version, walls))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
