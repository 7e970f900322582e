"""The settings of the benchmark report (`python -m art.report`), declared as data, and the run of the report.

SETTINGS, in the order run and reported: `trained`, the embedded trained network (below); `mixture`, an image-shaped
analytic Gaussian mixture (rms endpoint error against the exact ODE solution, Euler, K of MIXTURE_STEPS);
`fmnist-mixture`, the Fashion-MNIST mixture (rms, Euler and Heun, K of FMNIST_MIXTURE_STEPS; and FID with the offline
detector when `fid_num` > 0, against `fid_ref` or, by default, the statistics of `fid_ref_num` exact draws from the
mixture, quantised as PNGs are); `diffusers`, the practitioner's table of a diffusers model (art/practitioner.py:
diffusers' own schedules against the project's grids through the same schedulers; DiffusersOptions). Schedules of the
others: edm, uniform, logsnr, closed-form, direct, gits, and art-rl (for the mixture from the run directory `art_rl`,
for the Fashion-MNIST mixture its shipped schedule). Every value of the
mixtures is the mean (and spread) over `repeats` disjoint sets of `num` latents: the rms is dominated by rare latents,
so one set of 256 moves it by up to 15%. Each method's cost (network evaluations, CPU seconds) comes from the
provenance of its schedules, and a gap table gives ART-RL's ratio to direct (the limit on analytic models), to the
closed form and to EDM (art/report_writer.py). The report is `<outdir>/report.md` (the settings in the order of
SETTINGS, with the wall time of each), one PNG per setting and `rows.json`.

The trained network (TrainedOptions): rms against a TRAINED_REFERENCE solve of the same `num` latents for the
solver x K cells of TRAINED_RMS, and LeNet-FID (`fid.py --detector=lenet`, against the shipped statistics of the 60k
training images) of `fid_num` images for the cells of TRAINED_FID, with `fid_repeats` disjoint sets at Euler K = 5;
Inception FID of `inception_num` images at Euler and Heun K = 5 when `inception_ref` (statistics of the training
images, `fid.py ref --detector=offline`) is given. The default sizes are chosen for a 2-core CPU; the report states the
wall time they took. The closed form and art-rl are one clock each, read off at every K: by default the schedules
shipped for the network (their provenance holds what making them cost), else the files given; gits is made per solver
for Euler and Heun, direct only at the K of `direct_steps` (it differentiates through the network, the costliest
method by far on a CPU); neither is defined for RK4 or DPM-Solver++(2M), whose cells show '-'.
"""

import dataclasses
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from dnnlib.util import UserError
from art.analytic import GaussianMixtureModel, load_analytic, write_random_gmm
from art.compare import ScheduleSource, SeedSet, run_bench
from art.direct import NUM_LATENTS
from art.methods import MAKER_METHODS, SOLVER_SPECIFIC, ScheduleMaker
from art.networks import DEFAULT_NETWORK, MIXTURE_NETWORK, load_network_spec, shipped_schedule_path
from art.practitioner import DiffusersOptions, check_options as check_diffusers_options, practitioner_table
from art.report_writer import finish_setting, practitioner_result, write_report
from art.schedules import Schedule, code_version, load_schedule
from edm import fid, lenet
from edm.images import to_uint8

BASELINES = ['edm', 'uniform', 'logsnr']
MIXTURE_STEPS = [3, 5, 10, 20]              # K of the 1x8x8 mixture (Euler)
FMNIST_MIXTURE_STEPS = [3, 5, 10, 18]       # K of the Fashion-MNIST mixture (Euler and Heun)
# The mixtures' closed form: the fixed 256-trajectory estimate the committed report was made with (the adaptive
# default is compared with the 64-trajectory clock in docs/bench/fast-clock.md).
MIXTURE_CF_SAMPLES = 256
TRAINED_RMS = {'euler': [3, 5, 7, 10, 18], 'heun': [3, 5, 7, 10], 'rk4': [2, 3, 5], 'dpmpp-2m': [5, 10]}
TRAINED_FID = {'euler': [3, 5, 7, 10], 'heun': [3, 5, 7], 'rk4': [2, 3]}
TRAINED_REFERENCE = ('rk4', 64)             # the rms reference of a trained network: RK4 on EDM's grid, NFE 253
TRAINED_GITS_LEVELS = 60                    # gits teacher levels (Heun's table costs levels^2/2 per latent)


@dataclasses.dataclass
class MixtureOptions:
    """Sizes and schedule sources of the two mixtures' settings (the options without --trained- or --inception-)."""
    art_rl: Optional[str] = None                # train_art.py run directory with art-rl schedules of the 1x8x8 mixture
    num: int = 256                              # latents (images) per seed set
    repeats: int = 4                            # disjoint seed sets per value
    direct_latents: int = NUM_LATENTS           # direct's training latents
    fid_num: int = 256                          # images per FID value of the Fashion-MNIST mixture (0: no FID)
    fid_ref: Optional[str] = None               # its FID reference statistics (None: of fid_ref_num exact draws)
    fid_ref_num: int = 2000                     # exact draws from the mixture for its FID reference
    fid_steps: Sequence[int] = (5, 10)          # K of its FID settings
    fid_solvers: str = 'euler'                  # solvers of its FID settings: euler, heun or both


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


def art_rl_files(run_dir: Optional[str], steps: List[int]) -> List[str]:
    """The art-rl schedule files of a run directory for the largest K present (others are resampled)."""
    if not run_dir:
        return []
    files = [os.path.join(run_dir, f'schedule-k{k}.json') for k in steps]
    found = [f for f in files if os.path.isfile(f)]
    if not found:
        raise UserError(f'--art-rl={run_dir}: no schedule-k<K>.json for K in {steps}')
    return found[-1:]


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


def closed_form_clock(path: Optional[str], option: str = '--trained-closed-form') -> Optional[Schedule]:
    """The closed-form schedule file whose clock serves every K (None: none given); UserError (naming `option`)
    unless it is one."""
    if path is None:
        return None
    schedule = load_schedule(path)
    if schedule.method != 'closed-form' or schedule.clock is None:
        what = 'has no clock' if schedule.method == 'closed-form' else f'is not closed-form (method {schedule.method})'
        raise UserError(f'{option}={path} {what}; give a closed-form schedule file with a clock '
                        f'(train_art.py --method=closed-form writes one)')
    return schedule


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
    options = {'closed-form': dict(num_samples=MIXTURE_CF_SAMPLES)}
    sources = {spec: ScheduleSource(spec, net, network, solver, options)
               for spec in BASELINES + ['closed-form', 'gits']}
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


def trained_results(outdir: str, opts: TrainedOptions) -> List[Dict]:
    """The settings of the embedded trained network (module docstring): rms and LeNet-FID per solver, Inception FID at
    K = 5; every schedule made once and shared by the cells that use it."""
    net = load_network_spec(DEFAULT_NETWORK)
    closed_form = ScheduleMaker('closed-form', net, DEFAULT_NETWORK, options=dict(num_samples=64),
                                clock=closed_form_clock(opts.closed_form_file))
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


def mixture_results(outdir: str, opts: MixtureOptions) -> List[Dict]:
    """The image-shaped analytic mixture (written to outdir once): rms against the exact solution, Euler."""
    mixture = os.path.join(outdir, 'mixture-k10-1x8x8.npz')
    if not os.path.exists(mixture):
        write_random_gmm(mixture, k=10, shape=(1, 8, 8), seed=0)
    spec = f'analytic:gmm:{mixture}'
    net = load_analytic(spec)
    sources = columns(spec, net, 'euler', art_rl_files(opts.art_rl, MIXTURE_STEPS), opts.direct_latents)
    return [setting('Gaussian mixture 1x8x8', spec, net, MIXTURE_STEPS, 'euler', 'rms', opts.num, opts.repeats, outdir,
                    sources)]


def fmnist_mixture_results(outdir: str, opts: MixtureOptions) -> List[Dict]:
    """The Fashion-MNIST mixture: rms for Euler and Heun, and offline-Inception FID when opts.fid_num > 0."""
    net = load_analytic(MIXTURE_NETWORK)
    fid_ref = opts.fid_ref
    if opts.fid_num and not fid_ref:
        fid_ref = exact_reference(net, opts.fid_ref_num, os.path.join(outdir, 'fid-ref-fmnist-mixture.npz'))
    shipped = shipped_schedule_path(MIXTURE_NETWORK, 10)
    extra = [str(shipped)] if shipped is not None and shipped.name.startswith('art-rl') else []
    results = []
    for solver in ('euler', 'heun'):
        sources = columns(MIXTURE_NETWORK, net, solver, extra, opts.direct_latents)
        results.append(setting('Fashion-MNIST mixture', MIXTURE_NETWORK, net, FMNIST_MIXTURE_STEPS, solver, 'rms',
                               opts.num, opts.repeats, outdir, sources))
        if opts.fid_num and opts.fid_solvers in (solver, 'both'):
            results.append(setting('Fashion-MNIST mixture', MIXTURE_NETWORK, net, list(opts.fid_steps), solver, 'fid',
                                   opts.fid_num, 1, outdir, sources,
                                   fid_options=dict(ref=fid_ref, detector='offline', batch=64)))
    return results


def diffusers_results(outdir: str, opts: DiffusersOptions) -> List[Dict]:
    """The practitioner's table of a diffusers model (art/practitioner.py): diffusers' own schedules against the
    project's grids through the same schedulers, LeNet-FID and rms."""
    return [practitioner_result(practitioner_table(opts), outdir)]


Run = Callable[[str, MixtureOptions, TrainedOptions, DiffusersOptions], List[Dict]]
SETTINGS: Dict[str, Run] = {   # in the order run and reported
    'trained': lambda outdir, mixtures, trained, diffusers: trained_results(outdir, trained),
    'mixture': lambda outdir, mixtures, trained, diffusers: mixture_results(outdir, mixtures),
    'fmnist-mixture': lambda outdir, mixtures, trained, diffusers: fmnist_mixture_results(outdir, mixtures),
    'diffusers': lambda outdir, mixtures, trained, diffusers: diffusers_results(outdir, diffusers),
}


def check_inputs(names: Sequence[str], mixtures: MixtureOptions, trained: TrainedOptions,
                 diffusers: Optional[DiffusersOptions] = None) -> None:
    """UserError unless `names` are one or more of SETTINGS and every input file given can be used: checked before
    any work, so that a mistake fails now, not after an hour of sampling, and leaves nothing written."""
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        raise UserError(f'--settings: unknown {", ".join(unknown)}; choose from {", ".join(SETTINGS)}')
    if not names:
        raise UserError(f'--settings is empty; choose one or more of {", ".join(SETTINGS)}')
    for ref in (mixtures.fid_ref, trained.inception_ref):
        if ref:
            fid.load_reference(ref)
    art_rl_files(mixtures.art_rl, MIXTURE_STEPS)
    closed_form_clock(trained.closed_form_file)
    if trained.art_rl_file:
        load_schedule(trained.art_rl_file)
    if 'diffusers' in names:
        diffusers = diffusers or DiffusersOptions()
        check_diffusers_options(diffusers)
        closed_form_clock(diffusers.closed_form_file, '--diffusers-closed-form')


def run_report(outdir: str, names: Sequence[str], mixtures: MixtureOptions, trained: TrainedOptions,
               diffusers: Optional[DiffusersOptions] = None) -> str:
    """Check the inputs, run the named settings in the order of SETTINGS and write the report into outdir (made
    here); returns the text of report.md."""
    diffusers = diffusers or DiffusersOptions()
    check_inputs(names, mixtures, trained, diffusers)
    version = code_version()                        # before this run writes its own outputs into the tree
    os.makedirs(outdir, exist_ok=True)
    results, walls = [], {}
    for name, run in SETTINGS.items():
        if name in names:
            start = time.perf_counter()
            results += run(outdir, mixtures, trained, diffusers)
            walls[name] = time.perf_counter() - start
    return write_report(outdir, results, version, walls)
