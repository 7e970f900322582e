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

import dataclasses
import glob
import json
import os
import re
import time
from typing import Any, Dict, List

import torch
import tqdm

import dnnlib
from dnnlib.util import UserError

from art.analytic import GaussianModel
from art.methods import ScheduleMaker
from art.metrics import exact_w2
from art.rl import ARTDivergence, Learner, LearnerConfig
from art.rl_progress import ProgressLearner
from art.rl_time import TimeLearner
from art.plots import plot_schedules
from art.schedules import (Clock, Schedule, Stopwatch, baseline_schedule, load_schedule, method_provenance,
                           save_schedule)
from torch_utils import distributed as dist

# The ART-RL presets: each names a learner, whose config's defaults are the preset's settings (docs/art-rl.md §4).
PRESETS = {'paper': TimeLearner, 'images': ProgressLearner}


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
    cf_samples: int              # trajectories of the closed form's estimate of E|Q|
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
        """Options of the schedule maker of a non-RL method."""
        return dict(num_samples=self.cf_samples) if self.method == 'closed-form' else {}


def next_run_dir(outdir: str, desc: str) -> str:
    """`<outdir>/<next 5-digit id>-<desc>`, the id one above the largest existing one (upstream naming)."""
    ids = [int(m.group(1)) for name in (os.listdir(outdir) if os.path.isdir(outdir) else [])
           if (m := re.match(r'^(\d+)-', name)) and os.path.isdir(os.path.join(outdir, name))]
    return os.path.join(outdir, f'{max(ids, default=-1) + 1:05d}-{desc}')


def snapshot_path(run_dir: str, tag: str, rank: int) -> str:
    """Snapshot file of one learner (tag `k<K>` for per-K training, `clock` for one clock serving every K)."""
    return os.path.join(run_dir, f'snapshot-{tag}.pt' if rank == 0 else f'snapshot-{tag}-rank{rank}.pt')


def schedule_path(run_dir: str, num_steps: int) -> str:
    """Final schedule file of K = num_steps."""
    return os.path.join(run_dir, f'schedule-k{num_steps}.json')


class StatsLog:
    """stats.jsonl, with rows of iterations after a resumed snapshot dropped so that the file stays consistent."""

    def __init__(self, run_dir: str, enabled: bool):
        self.path, self.enabled = os.path.join(run_dir, 'stats.jsonl'), enabled

    def truncate(self, tag: str, iteration: int) -> None:
        """Drop rows of this learner beyond `iteration` (they are recomputed after a resume)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
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
        schedule.metrics[f'w2_{schedule.solver or "euler"}_exact'] = exact_w2(net, schedule.sigmas, schedule.solver or 'euler')
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
        stats_log.truncate(tag, learner.iteration)

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
                kept = f'the last good snapshot is kept in {snapshot}' if os.path.exists(snapshot) else 'no snapshot yet'
                raise UserError(f'{tag}: training diverged at iteration {learner.iteration} ({exc}); '
                                f'{kept}') from None
            stats_log.append(dict(learner=tag, **stats, sec_per_iter=round(time.perf_counter() - start, 5),
                                  timestamp=time.time()))
            bar.update(1)
            bar.set_postfix(gamma=f'{stats["gamma"]:.3g}', budget=f'{stats[learner.budget_stat]:.3f}', refresh=False)
            if learner.iteration % snap == 0 or learner.iteration == cfg.iters:
                save_snapshot()
    cost = dict(**learner.network_evals(cfg.iters),                          # rollout levels, all processes
                **watch.seconds(2, cpu='cpu_seconds_this_session_rank0', wall='wall_seconds_this_session'))
    return learner, cost


def learned_schedule(learner: Learner, num_steps: int, opts: RunOptions, cost: dict) -> Schedule:
    """The schedule for K = num_steps distilled from a trained learner, with its provenance."""
    cfg, world = learner.cfg, dist.get_world_size()
    out = learner.distill(num_steps)
    provenance = method_provenance(opts.network, dict(solver='euler', preset=opts.preset,
                                   num_steps_trained=cfg.grid_steps, iterations=cfg.iters,
                                   trajectories_per_iteration=cfg.batch * world, seed=cfg.seed, processes=world,
                                   config=cfg.to_dict(), final=dict(gamma=learner.gamma)), cost)
    return Schedule('art-rl', out['sigmas'], solver='euler', clock=Clock(out['clock']['u'], out['clock']['sigma']),
                    provenance=provenance)


def train_schedules(net: torch.nn.Module, run_dir: str, opts: RunOptions, device: torch.device,
                    progress: bool = True) -> List[str]:
    """Learn one schedule per K of opts.steps into run_dir (skipping K whose schedule file exists); returns the files.

    ART-RL uses the learner of opts.preset with the options opts.rl; a non-RL method is made by its ScheduleMaker.
    """
    paths, learner = [], None
    maker = None if opts.method == 'art-rl' else ScheduleMaker(opts.method, net, opts.network, opts.solver,
                                                                opts.method_options())
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


def plot_run(run_dir: str, net: torch.nn.Module, paths: List[str]) -> str:
    """`schedules.png` of a run: its schedules and EDM's grid at the same K (log sigma against step index)."""
    grids = {}
    for path in paths:
        schedule = load_schedule(path)
        grids[f'{schedule.method} K={schedule.num_steps}'] = schedule.sigmas
        grids[f'edm K={schedule.num_steps}'] = baseline_schedule('edm', schedule.num_steps, net=net).sigmas
    return str(plot_schedules(grids, os.path.join(run_dir, 'schedules.png'), title=os.path.basename(run_dir)))

