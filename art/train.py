"""Learning schedules in a run directory: options, log, statistics, atomic resumable snapshots, schedule files.

Run directory (upstream style): `<outdir>/<5-digit id>-<desc>/` with `training_options.json`, `log.txt` (a tee of the
console), `stats.jsonl` (one JSON object per iteration: learner, iteration, gamma, psi(T), TD error, reward, theta
statistics, timing), a snapshot per learner (the learner's whole state, written atomically every `snap` iterations;
one file per rank under torchrun), the final `schedule-k<K>.json` per K and `schedules.png` (the schedules against
EDM's grid).  The paper's per-K training has one learner per K (`snapshot-k<K>.pt`); with a fine training grid
(`train_steps`, the images preset) one learner learns the continuous clock (`snapshot-clock.pt`) and every K's grid
is read off it.

A run stopped at any point (kill -9 included) and resumed with `resume=<run dir>` continues from the last snapshot
and ends with the same schedule as an uninterrupted run: the learner's randomness is a function of (seed, iteration).
"""

import glob
import json
import os
import re
import time
from typing import Dict, List, Optional

import torch
import tqdm

import dnnlib

from art.analytic import GaussianModel
from art.methods import METHODS as MAKER_METHODS, ScheduleMaker
from art.metrics import exact_w2
from art.rl import ARTConfig, ARTDivergence, ARTLearner
from art.plots import plot_schedules
from art.schedules import Clock, Schedule, baseline_schedule, code_version, load_schedule, save_schedule
from edm.errors import UserError
from torch_utils import distributed as dist

METHODS = ('art-rl',) + MAKER_METHODS


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
        dnnlib.util.atomic_write(self.path, lambda f: f.write(''.join(json.dumps(r) + '\n' for r in keep).encode()))

    def append(self, row: dict) -> None:
        """Add one row."""
        if self.enabled:
            with open(self.path, 'a') as f:
                f.write(json.dumps(row) + '\n')


def finish_schedule(schedule: Schedule, net: torch.nn.Module, options: dict) -> Schedule:
    """Add the run's options and the exactly computable metrics (W2 for Gaussian models) to a schedule."""
    schedule.provenance.setdefault('network', options['network'])
    schedule.provenance['run_options'] = options
    if isinstance(net, GaussianModel):
        schedule.metrics[f'w2_{schedule.solver or "euler"}_exact'] = exact_w2(net, schedule.sigmas, schedule.solver or 'euler')
    return schedule


def mean_over_ranks(v: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all processes (the reduce hook of ARTLearner)."""
    torch.distributed.all_reduce(v)
    return v / dist.get_world_size()


def run_learner(net: torch.nn.Module, cfg: ARTConfig, run_dir: str, tag: str, snap: int, device: torch.device,
                progress: bool = True) -> tuple:
    """Run (or continue from its snapshot) one ART-RL learner to cfg.iters; returns it and its cost."""
    rank, world = dist.get_rank(), dist.get_world_size()
    learner = ARTLearner(net, cfg, rank=rank, device=device, reduce=mean_over_ranks if world > 1 else None)
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

    cpu0, wall0 = time.process_time(), time.perf_counter()
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
            bar.set_postfix(gamma=f'{stats["gamma"]:.3g}', psi_T=f'{stats["psi_T_mean"]:.3f}', refresh=False)
            if learner.iteration % snap == 0 or learner.iteration == cfg.iters:
                save_snapshot()
    evals = cfg.iters * cfg.batch * learner.grid_steps * world               # rollout levels
    cost = dict(forward_evals=evals, jvp_evals=evals,
                cpu_seconds_this_session_rank0=round(time.process_time() - cpu0, 2),
                wall_seconds_this_session=round(time.perf_counter() - wall0, 2))
    return learner, cost


def learned_schedule(learner: ARTLearner, num_steps: int, options: dict, cost: dict) -> Schedule:
    """The schedule for K = num_steps distilled from a trained learner, with its provenance."""
    cfg, world = learner.cfg, dist.get_world_size()
    out = learner.distill(num_steps)
    provenance = dict(network=options['network'], solver='euler', num_steps_trained=cfg.train_steps or cfg.steps,
                      iterations=cfg.iters, trajectories_per_iteration=cfg.batch * world, lam=cfg.lam, seed=cfg.seed,
                      processes=world, config=cfg.to_dict(), code_version=code_version(), cost=cost,
                      final=dict(gamma=learner.gamma))
    return Schedule('art-rl', out['sigmas'], solver='euler', clock=Clock(out['clock']['u'], out['clock']['sigma']),
                    provenance=provenance)


def train_schedules(net: torch.nn.Module, run_dir: str, steps: List[int], method: str, options: dict,
                    rl_overrides: Dict, snap: int, device: torch.device, method_options: Optional[dict] = None,
                    progress: bool = True) -> List[str]:
    """Learn one schedule per K into run_dir (skipping K whose schedule file exists); returns the files.

    method_options go to the maker of a non-RL method (art/methods.py), e.g. num_samples for the closed form.
    """
    paths, learner = [], None
    maker = None if method == 'art-rl' else ScheduleMaker(method, net, options['network'], 'euler', method_options)
    if dist.get_rank() == 0:                       # temporary files of writes interrupted by a kill
        for stale in glob.glob(os.path.join(run_dir, '.*.tmp')):
            os.remove(stale)
    for num_steps in steps:
        path = schedule_path(run_dir, num_steps)
        paths.append(path)
        if os.path.exists(path):
            dist.print0(f'K={num_steps}: {path} exists, skipping')
            continue
        if maker is not None:
            schedule = maker(num_steps)
        else:
            cfg = ARTConfig(**dict(rl_overrides, steps=num_steps))
            if cfg.train_steps is None:                    # per-K training on the K-step grid (the paper)
                learner, cost = run_learner(net, cfg, run_dir, f'k{num_steps}', snap, device, progress)
            elif learner is None:                          # one clock on the fine grid serves every K
                learner, cost = run_learner(net, ARTConfig(**dict(rl_overrides, steps=steps[0])), run_dir, 'clock',
                                            snap, device, progress)
            schedule = learned_schedule(learner, num_steps, options, cost)
        schedule = finish_schedule(schedule, net, options)
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

