"""Learning schedules in a run directory: options, log, statistics, atomic resumable snapshots, schedule files.

Run directory (upstream style): `<outdir>/<5-digit id>-<desc>/` with `training_options.json`, `log.txt` (a tee of the
console), `stats.jsonl` (one JSON object per iteration: learner, iteration, gamma, psi(T), TD error, reward, theta
statistics, timing), a snapshot per learner (the learner's whole state, written atomically every `snap` iterations;
one file per rank under torchrun), the final `schedule-k<K>.json` per K and `schedules.png` (the schedules against
EDM's grid).  The paper's per-K training has one learner per K (`snapshot-k<K>.pt`); with a fine training grid
(`train_steps`, the images preset) one learner learns the continuous clock (`snapshot-clock.pt`) and every K's grid
is read off it.  A preset names the ART-RL learner (`PRESETS`); `auto_preset` picks one for a network.

A run stopped at any point (kill -9 included) and resumed with `resume=<run dir>` continues from the last snapshot
and ends with the same schedule as an uninterrupted run: the learner's randomness is a function of (seed, iteration).
"""

import collections
import contextlib
import dataclasses
import errno
import glob
import json
import os
import shutil
import time
from typing import Any, Dict, Iterator, List, Optional

import torch
import tqdm

import dnnlib
from dnnlib.util import UserError

from art.analytic import GaussianModel
from art.auto_clock import shared_clock
from art.methods import SOLVER_SPECIFIC, ScheduleMaker
from art.metrics import exact_w2
from art.networks import network_name
from art.rl import ARTDivergence, Learner, LearnerConfig
from art.rl_progress import ProgressLearner
from art.rl_time import TimeLearner
from art.plots import plot_schedules
from art.schedules import (Clock, Schedule, Stopwatch, baseline_schedule, load_schedule, method_provenance,
                           save_schedule)
from torch_utils import distributed as dist

# The ART-RL presets: each names a learner, whose config's defaults are the preset's settings (docs/art-rl.md §4).
PRESETS = {'paper': TimeLearner, 'images': ProgressLearner}

# Caps on the sizes a run is given, so that no option makes the work or the files unbounded: trajectories per process
# per iteration (rolled out at once), iterations (one stats row each), the replay pool (its error densities are kept
# in memory and in every snapshot), and the closed form's trajectories (their latents are drawn at once).
MAX_BATCH = 4096
MAX_ITERS = 1_000_000
MAX_POOL = 65536
MAX_CF_SAMPLES = 4096
# Run options that only one method uses (besides ART-RL's learner options: every one but the seed is ART-RL's).
METHOD_OPTIONS = {'art-rl': ('preset', 'snap'), 'closed-form': ('cf_samples',)}
NEW_RUN_OPTIONS = ('outdir', 'desc')              # they name a new run's folder: not taken with a resume
_FLAGS = {'lam': '--lambda'}                      # options whose flag is not `--` + the name with dashes
RUN_NAME_STEPS = 40                               # longest K list written out in a run folder's name
NAME_MAX = 255                                    # longest file name (bytes) of the usual file systems


def auto_preset(net: torch.nn.Module) -> str:
    """'paper' for a one-dimensional model (the paper's 1-D example), 'images' for anything larger: the paper's form
    learns nothing on image-shaped models (docs/art-rl.md §1)."""
    return 'paper' if net.img_channels * net.img_resolution ** 2 == 1 else 'images'


def rl_option_names(preset: str) -> set:
    """The ART-RL options of the preset's learner (the field names of its config)."""
    return {field.name for field in dataclasses.fields(PRESETS[preset].Config)}


def rl_config(preset: str, rl: dict, num_steps: int) -> LearnerConfig:
    """The config of the preset's learner for K = num_steps with the run's ART-RL options `rl` (config field names);
    ValueError names an option the learner does not have, or a bad value."""
    unknown = sorted(set(rl) - rl_option_names(preset))
    if unknown:
        raise ValueError(f'the {preset} preset has no option {", ".join(unknown)}')
    return PRESETS[preset].Config(**dict(rl, steps=num_steps))


@dataclasses.dataclass
class RunOptions:
    """What a run learns: written to training_options.json, read back by a resume, recorded in every schedule."""
    network: str                 # pickle path/URL or analytic spec
    steps: List[int]             # the budgets K
    method: str                  # a name of art/methods.py METHODS
    preset: str                  # the ART-RL learner (a key of PRESETS), resolved from 'auto'
    rl: Dict[str, Any]           # ART-RL options given on the command line (config field names), seed included
    snap: int                    # iterations between snapshots
    cf_samples: Optional[int]    # trajectories of the closed form's estimate of E|Q| (None: the adaptive estimate)
    solver: str                  # the solver the grids are made for (direct, gits); euler for ART
    world_size: int              # processes of the run

    @classmethod
    def from_dict(cls, data: Any) -> 'RunOptions':
        """Options read from training_options.json; ValueError when they are not a run's options."""
        names = [field.name for field in dataclasses.fields(cls)]
        if not isinstance(data, dict) or sorted(data) != sorted(names):
            raise ValueError(f'expected a JSON object with the keys {", ".join(names)}')
        opts = cls(**data)
        if not (isinstance(opts.network, str) and isinstance(opts.rl, dict) and isinstance(opts.steps, list)
                and opts.steps and all(isinstance(k, int) and k >= 1 for k in opts.steps)):
            raise ValueError('network must be a string, steps a non-empty list of integers >= 1, rl an object')
        return opts

    def method_options(self) -> dict:
        """Options of the schedule maker of a non-RL method: the run's seed, and the closed form's sample count."""
        fixed = self.method == 'closed-form' and self.cf_samples is not None
        return dict(seed=self.rl['seed'], **(dict(num_samples=self.cf_samples) if fixed else {}))


def option_flag(name: str) -> str:
    """The train_art.py flag of a run option or ART-RL option (field name), for messages."""
    return _FLAGS.get(name, '--' + name.replace('_', '-'))


def check_steps(steps: List[int]) -> None:
    """UserError when a K is given twice."""
    repeated = [k for k, count in collections.Counter(steps).items() if count > 1]
    if repeated:
        raise UserError(f'--steps gives K={", ".join(map(str, sorted(repeated)))} more than once; give each K once')


def not_options(keys: List[str], owner: str, remedy: str = '') -> UserError:
    """The UserError naming options given (field names) that `owner` does not take."""
    one = len(keys) == 1
    return UserError(f'{", ".join(map(option_flag, keys))}: not {"an option" if one else "options"} of {owner}; '
                     f'leave {"it" if one else "them"} out{remedy}')


def check_method_options(method: str, rl: dict, explicit: dict) -> None:
    """UserError naming the options given (ART-RL options `rl`, run options `explicit`, by field name) that `method`
    does not use: ART-RL's learner options with another method, or another method's own run option."""
    unused = [key for key in rl if key != 'seed' and method != 'art-rl']
    unused += [key for key in explicit for other, keys in METHOD_OPTIONS.items() if other != method and key in keys]
    if unused:
        raise not_options(unused, f'--method={method}')


def check_preset_options(preset: str, rl: dict, owner: str, remedy: str = '') -> None:
    """UserError naming the ART-RL options given that the preset's learner does not have (owner: the preset, as the
    message names it)."""
    unknown = [key for key in rl if key not in rl_option_names(preset)]
    if unknown:
        raise not_options(unknown, owner, remedy)


def check_new_run(steps: List[int], method: str, solver: str, rl: dict, explicit: dict) -> None:
    """The checks of a new run's options that need no network (UserError), made before anything is loaded."""
    check_steps(steps)
    solvers = SOLVER_SPECIFIC.get(method, ('euler',))
    if solver not in solvers:
        raise UserError(f'--method={method} makes grids for --solver={" or ".join(solvers)}, not {solver}')
    check_method_options(method, rl, explicit)


def new_run_options(network: str, net: torch.nn.Module, steps: List[int], method: str, preset: str, rl: dict,
                    snap: int, cf_samples: Optional[int], solver: str) -> RunOptions:
    """The options of a new run (rl: the ART-RL options given, by field name, and the seed); UserError names an
    ART-RL option the preset's learner does not have, or a bad value, before anything is written."""
    chosen = auto_preset(net) if preset == 'auto' else preset
    check_preset_options(chosen, rl, f'the {chosen} preset'
                         f'{" (chosen by --preset=auto for this network)" if preset == "auto" else ""}',
                         ' or pass another --preset')
    try:
        rl_config(chosen, rl, steps[0])
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return RunOptions(network=network, steps=steps, method=method, preset=chosen, rl=rl, snap=snap,
                      cf_samples=cf_samples, solver=solver, world_size=dist.get_world_size())


def steps_name(steps: List[int]) -> str:
    """The K list in a run folder's name, short whatever its length: k5_10_18, runs of 3 or more consecutive K as
    first-last (k1-100), and past RUN_NAME_STEPS characters only its ends and length (k2-999_500values)."""
    runs: List[List[int]] = []
    for k in steps:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    parts = [f'{run[0]}-{run[-1]}' if len(run) >= 3 else '_'.join(map(str, run)) for run in runs]
    name = 'k' + '_'.join(parts)
    return name if len(name) <= RUN_NAME_STEPS else f'k{min(steps)}-{max(steps)}_{len(steps)}values'


def new_run_dir(outdir: str, desc: Optional[str], opts: RunOptions) -> str:
    """The folder of a new run (not made here): `<outdir>/<next id>-<desc or method-network>-<K list>`; UserError
    when the name is too long for a file system."""
    name = f'{desc or opts.method + "-" + network_name(opts.network)[:64]}-{steps_name(opts.steps)}'.replace('/', '_')
    run_dir = dnnlib.util.next_run_dir(outdir, name)
    if len(os.fsencode(os.path.basename(run_dir))) > NAME_MAX:
        raise UserError(f'the run folder name {name[:60]}... is longer than {NAME_MAX} bytes; pass a shorter --desc')
    return run_dir


def resume_options(run_dir: str, rl: dict, network: Optional[str], explicit: dict) -> RunOptions:
    """The options of the run being resumed (UserError when they cannot be read); the options given now (ART-RL
    options `rl`, run options `explicit`, by field name) must be those of the run, and outdir and desc, which name a
    new run, are refused. An explicit preset 'auto' is checked once the network is loaded (check_resumed_preset)."""
    path = os.path.join(run_dir, 'training_options.json')
    try:
        with open(path) as f:
            options = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f'--resume={run_dir}: cannot read {path} ({getattr(exc, "strerror", None) or exc})') from None
    try:
        opts = RunOptions.from_dict(options)
    except (TypeError, ValueError) as exc:
        raise UserError(f'--resume={run_dir}: {path} does not hold the options of a train_art.py run ({exc}); '
                        f'give the run directory train_art.py made') from None
    if network is not None and network != opts.network:
        raise UserError(f'--resume: the run learned for {opts.network}, not {network}')
    fresh = [key for key in explicit if key in NEW_RUN_OPTIONS]
    if fresh:
        raise not_options(fresh, '--resume, which continues the run in its own folder')
    if 'method' in explicit:
        check_resumed('method', explicit['method'], opts.method)
    check_method_options(opts.method, rl, explicit)
    try:
        cfg = rl_config(opts.preset, opts.rl, opts.steps[0])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise UserError(f'--resume={run_dir}: the run\'s ART-RL options do not fit this version ({exc}); '
                        f'start a new run') from None
    check_preset_options(opts.preset, rl, f'the {opts.preset} preset of the run being resumed')
    for key, value in rl.items():
        check_resumed(key, value, getattr(cfg, key))
    for key, value in explicit.items():
        if not (key == 'preset' and value == 'auto'):
            check_resumed(key, value, getattr(opts, key))
    return opts


def check_resumed(key: str, given: Any, run: Any) -> None:
    """UserError when an option given with --resume differs from the run's value (options left out keep it)."""
    if given != run:
        flag = option_flag(key)
        given, run = (','.join(map(str, value)) if isinstance(value, list) else value for value in (given, run))
        raise UserError(f'--resume: {flag}={given} differs from the run being resumed ({flag}={run}); leave {flag} '
                        f'out to keep the run\'s value')


def check_resumed_preset(opts: RunOptions, preset: Optional[str], net: torch.nn.Module) -> None:
    """UserError when --preset=auto given with --resume picks another preset for the run's network than the run's
    (resume_options checks every other preset)."""
    if preset == 'auto' and auto_preset(net) != opts.preset:
        raise UserError(f'--resume: --preset=auto picks {auto_preset(net)} for this network, but the run being resumed '
                        f'uses --preset={opts.preset}; leave --preset out to keep the run\'s value')


@contextlib.contextmanager
def disk_errors(run_dir: str, new: bool = False) -> Iterator[None]:
    """Turn a full disk (or quota) while writing a run into a UserError that says how to go on; with new=True (the
    run folder was just made) the folder is removed."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if new:
            shutil.rmtree(run_dir, ignore_errors=True)
        then = ('no run folder was made; free space and run again' if new else
                f'what was written is complete: free space and continue with --resume={run_dir}')
        raise UserError(f'{exc.filename or run_dir}: {os.strerror(exc.errno).lower()}; {then}') from None


def make_run_dir(run_dir: str, opts: RunOptions) -> None:
    """Make a new run folder holding training_options.json; UserError (and no folder left) when it cannot be made."""
    try:
        os.makedirs(run_dir)
    except OSError as exc:
        raise UserError(f'cannot make the run folder {run_dir} ({exc.strerror or exc}); pass a shorter --desc or '
                        f'another --outdir') from None
    with disk_errors(run_dir, new=True):
        dnnlib.util.atomic_write_json(os.path.join(run_dir, 'training_options.json'), dataclasses.asdict(opts))


def snapshot_path(run_dir: str, tag: str, rank: int) -> str:
    """Snapshot file of one learner (tag `k<K>` for per-K training, `clock` for one clock serving every K)."""
    return os.path.join(run_dir, f'snapshot-{tag}.pt' if rank == 0 else f'snapshot-{tag}-rank{rank}.pt')


def schedule_path(run_dir: str, num_steps: int) -> str:
    """Final schedule file of K = num_steps."""
    return os.path.join(run_dir, f'schedule-k{num_steps}.json')


def _json_row(line: str) -> Optional[dict]:
    """A stats.jsonl line as a dict; None for a blank or torn line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and 'learner' in row and 'iteration' in row else None


class StatsLog:
    """stats.jsonl, with rows of iterations after a resumed snapshot dropped so that the file stays consistent."""

    def __init__(self, run_dir: str, enabled: bool):
        self.path, self.enabled = os.path.join(run_dir, 'stats.jsonl'), enabled

    def truncate(self, tag: str, iteration: int) -> None:
        """Drop rows of this learner beyond `iteration` (they are recomputed after a resume), and a row torn by a kill
        or a full disk."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            rows = [row for row in map(_json_row, f) if row is not None]
        keep = [row for row in rows if row['learner'] != tag or row['iteration'] <= iteration]
        dnnlib.util.atomic_write_text(self.path, ''.join(json.dumps(r) + '\n' for r in keep))

    def append(self, row: dict) -> None:
        """Add one row."""
        if self.enabled:
            with open(self.path, 'a') as f:
                f.write(json.dumps(row) + '\n')


def finish_schedule(schedule: Schedule, net: torch.nn.Module, opts: RunOptions) -> Schedule:
    """Add the run's options and the exactly computable metrics (W2 for Gaussian models) to a schedule."""
    schedule.provenance.setdefault('network', opts.network)
    schedule.provenance['run_options'] = dataclasses.asdict(opts)
    if isinstance(net, GaussianModel):
        solver = schedule.solver or 'euler'
        schedule.metrics[f'w2_{solver}_exact'] = exact_w2(net, schedule.sigmas, solver)
    return schedule


def mean_over_ranks(v: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all processes (the reduce hook of a Learner)."""
    torch.distributed.all_reduce(v)
    return v / dist.get_world_size()


def run_learner(net: torch.nn.Module, preset: str, cfg: LearnerConfig, run_dir: str, tag: str, snap: int,
                device: torch.device, progress: bool = True) -> tuple:
    """Run (or continue from its snapshot) the preset's ART-RL learner to cfg.iters; returns it and its cost."""
    rank, world = dist.get_rank(), dist.get_world_size()
    learner = PRESETS[preset](net, cfg, rank=rank, device=device, reduce=mean_over_ranks if world > 1 else None,
                              world=world)
    snapshot = snapshot_path(run_dir, tag, rank)
    stats_log = StatsLog(run_dir, enabled=(rank == 0))
    if os.path.exists(snapshot):
        try:
            learner.load_state_dict(torch.load(snapshot, map_location='cpu', weights_only=True))
        except (ValueError, RuntimeError, KeyError) as exc:
            raise UserError(f'cannot resume from {snapshot}: {str(exc).splitlines()[0]}') from None
        dist.print0(f'Resuming {tag} from iteration {learner.iteration} ({snapshot})')
    stats_log.truncate(tag, learner.iteration)        # rows past the snapshot (or of a run stopped before the first)

    def save_snapshot() -> None:
        state = learner.state_dict()
        dnnlib.util.atomic_write(snapshot, lambda f: torch.save(state, f))

    watch = Stopwatch()
    with tqdm.tqdm(total=cfg.iters, initial=learner.iteration, unit='it', desc=f'ART-RL {tag}',
                   disable=(not progress or rank != 0)) as bar:
        while learner.iteration < cfg.iters:
            start = time.perf_counter()
            try:
                stats = learner.step()
            except ARTDivergence as exc:
                kept = (f'the last good snapshot is kept in {snapshot}' if os.path.exists(snapshot)
                        else 'no snapshot yet')
                raise UserError(f'{tag}: training diverged at iteration {learner.iteration} ({exc}); '
                                f'{kept}') from None
            stats_log.append(dict(learner=tag, **stats, sec_per_iter=round(time.perf_counter() - start, 5),
                                  timestamp=time.time()))
            bar.update(1)
            bar.set_postfix(gamma=f'{stats["gamma"]:.3g}', budget=f'{stats[learner.budget_stat]:.3f}', refresh=False)
            if learner.iteration % snap == 0 or learner.iteration == cfg.iters:
                save_snapshot()
    evals = learner.network_evals(cfg.iters)                                 # all processes
    cost = dict(evals=sum(evals.values()), **evals,
                **watch.seconds(2, cpu='cpu_seconds_this_session_rank0', wall='wall_seconds_this_session'))
    return learner, cost


def learned_schedule(learner: Learner, num_steps: int, opts: RunOptions, cost: dict) -> Schedule:
    """The schedule for K = num_steps distilled from a trained learner, with its provenance."""
    cfg, world = learner.cfg, dist.get_world_size()
    out = learner.distill(num_steps)
    provenance = method_provenance(opts.network, dict(solver='euler', preset=opts.preset,
                                   num_steps_trained=cfg.grid_steps, iterations=cfg.iters,
                                   trajectories_per_iteration=cfg.batch * world, seed=cfg.seed, processes=world,
                                   config=cfg.to_dict(), final=dict(gamma=learner.gamma), **learner.record()), cost)
    return Schedule('art-rl', out['sigmas'], solver='euler', clock=Clock(out['clock']['u'], out['clock']['sigma']),
                    provenance=provenance)


def method_maker(net: torch.nn.Module, opts: RunOptions) -> ScheduleMaker:
    """The ScheduleMaker of a non-RL method. The default closed form, and direct's warm start from it, read the
    network's cached ART clock (art.auto_clock: made once per network and seed, shared by every rank)."""
    options = opts.method_options()
    if opts.method not in ('closed-form', 'direct') or opts.cf_samples is not None:
        return ScheduleMaker(opts.method, net, opts.network, opts.solver, options)
    clock = shared_clock(net, opts.network, seed=options['seed'], log=dist.print0)
    if opts.method == 'closed-form':
        return ScheduleMaker('closed-form', net, opts.network, opts.solver, options, clock=clock)
    starts = [ScheduleMaker('closed-form', net, opts.network, opts.solver, clock=clock),
              ScheduleMaker('gits', net, opts.network, opts.solver)]
    return ScheduleMaker('direct', net, opts.network, opts.solver, dict(options, warm_start=starts))


def train_schedules(net: torch.nn.Module, run_dir: str, opts: RunOptions, device: torch.device,
                    progress: bool = True) -> List[str]:
    """Learn one schedule per K of opts.steps into run_dir (skipping K whose schedule file exists); returns the files.

    ART-RL uses the learner of opts.preset with the options opts.rl; a non-RL method is made by its ScheduleMaker.
    """
    paths, learner = [], None
    maker = None if opts.method == 'art-rl' else method_maker(net, opts)
    if dist.get_rank() == 0:                       # temporary files of writes interrupted by a kill
        for stale in glob.glob(os.path.join(run_dir, '.*.tmp')):
            os.remove(stale)
    for num_steps in opts.steps:
        path = schedule_path(run_dir, num_steps)
        paths.append(path)
        if os.path.exists(path):
            dist.print0(f'K={num_steps}: {path} exists, skipping')
            continue
        if maker is not None:
            schedule = maker(num_steps)
        else:
            cfg = rl_config(opts.preset, opts.rl, num_steps)
            if cfg.train_steps is None:                    # per-K training on the K-step grid (the paper)
                learner, cost = run_learner(net, opts.preset, cfg, run_dir, f'k{num_steps}', opts.snap, device,
                                            progress)
            elif learner is None:                          # one clock on the fine grid serves every K
                learner, cost = run_learner(net, opts.preset, rl_config(opts.preset, opts.rl, opts.steps[0]), run_dir,
                                            'clock', opts.snap, device, progress)
            schedule = learned_schedule(learner, num_steps, opts, cost)
        schedule = finish_schedule(schedule, net, opts)
        if dist.get_rank() == 0:
            save_schedule(schedule, path)
            dist.print0(f'K={num_steps}: wrote {path}: sigmas {[round(float(s), 4) for s in schedule.sigmas]}'
                        + ''.join(f', {k} {v:.4g}' for k, v in schedule.metrics.items()))
        dist.barrier()
    if dist.get_rank() == 0:
        plot_run(run_dir, net, paths)
    return paths


def train_run(net: torch.nn.Module, run_dir: str, opts: RunOptions, device: torch.device) -> List[str]:
    """train_schedules with the console copied to the run's log.txt (rank 0); a full disk is a UserError that says how
    to go on."""
    with disk_errors(run_dir):
        logger = dnnlib.util.Logger(os.path.join(run_dir, 'log.txt'), file_mode='a', should_flush=True) \
            if dist.get_rank() == 0 else None
        try:
            dist.print0(f'Run directory: {run_dir}')
            return train_schedules(net, run_dir, opts, device)
        finally:
            if logger is not None:
                logger.close()


def plot_run(run_dir: str, net: torch.nn.Module, paths: List[str]) -> str:
    """`schedules.png` of a run: its schedules and EDM's grid at the same K (log sigma against step index)."""
    grids = {}
    for path in paths:
        schedule = load_schedule(path)
        grids[f'{schedule.method} K={schedule.num_steps}'] = schedule.sigmas
        grids[f'edm K={schedule.num_steps}'] = baseline_schedule('edm', schedule.num_steps, net=net).sigmas
    return str(plot_schedules(grids, os.path.join(run_dir, 'schedules.png'), title=os.path.basename(run_dir)))

