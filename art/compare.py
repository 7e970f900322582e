"""Schedules side by side on one network: each (schedule, K) sampled from the same latents and scored (w2, rms or
FID), the library behind `python -m art.bench` and `python -m art.report`.

Schedules are baseline names (edm, uniform, logsnr, vp, ve, iddpm), schedule methods made on the fly for each K
(closed-form, direct, gits: art/methods.py; these use seeds of their own, disjoint from the benchmark's) or schedule
files (resampled to other K, with a note). Metrics: `w2`, exact for Gaussian models; `rms`, the root-mean-square
endpoint error against the reference solution of the same latents (exact for analytic models, a high-NFE Heun solve
for pickles); `fid`, FID against reference statistics of images quantised exactly as the PNGs of generate would be.
"""

import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from dnnlib.util import UserError
from art import metrics
from art.methods import MAKER_METHODS, ScheduleMaker
from art.schedules import Schedule, baseline_schedule, check_network_fit, load_schedule
from edm import fid, grids
from edm.rng import seed_latents
from edm.sampler import SOLVERS, nfe, sample, sample_batches

# The most latents (or images) a comparison holds in one set or in all its sets, the bound of art.bench's and
# art.report's size options: twice the 50k images of a full-size FID, so that a typo cannot exhaust memory.
MAX_LATENTS = 100_000


class ScheduleSource:
    """One column of the benchmark: a baseline name, a schedule method (closed-form, direct, gits) or a schedule
    file, resolved per K. A file is checked against the network at once (art.schedules.check_network_fit): `note`
    says when it was made for another network."""

    def __init__(self, spec: str, net: torch.nn.Module, network: str, solver: str,
                 method_options: Optional[Dict[str, dict]] = None,
                 maker: Optional[Callable[[int], Schedule]] = None):
        self.spec = spec
        self.net = net
        self.maker = maker                          # a maker shared with other columns (made once for all)
        self.note: Optional[str] = None
        if maker is not None:
            return
        if spec in MAKER_METHODS:
            try:
                self.maker = ScheduleMaker(spec, net, network, solver, (method_options or {}).get(spec))
            except ValueError as exc:
                raise UserError(f'--schedules={spec}: {exc}; use --solver=euler or heun for it') from None
        elif spec not in grids.DISCRETIZATIONS and not os.path.isfile(spec):
            raise UserError(f'--schedules: {spec!r} is neither a baseline ({", ".join(grids.DISCRETIZATIONS)}), '
                            f'a method ({", ".join(MAKER_METHODS)}), nor an existing schedule file')
        elif spec not in grids.DISCRETIZATIONS:
            self.note = check_network_fit(load_schedule(spec), net, network, spec)

    @property
    def label(self) -> str:
        """Short name for the table."""
        return os.path.basename(self.spec) if os.path.isfile(self.spec) else self.spec

    def schedule(self, num_steps: int) -> Schedule:
        """The grid of this source for K = num_steps."""
        if self.spec in grids.DISCRETIZATIONS:
            return baseline_schedule(self.spec, num_steps, net=self.net)
        if self.maker is not None:
            return self.maker(num_steps)
        return load_schedule(self.spec, num_steps=num_steps, resample=True)


class SeedSet:
    """The latents (and class labels) of one block of seeds, with the reference endpoints computed on demand (by a
    `reference` = (solver, steps) solve on EDM's grid for networks; exact for analytic models)."""

    def __init__(self, net: torch.nn.Module, seeds: List[int], device: torch.device,
                 reference: tuple = ('heun', metrics.REFERENCE_STEPS)):
        self.net, self.seeds, self.reference_solve = net, seeds, reference
        self.latents, self.labels, _ = seed_latents(net, seeds, device)
        self._references: Dict[float, torch.Tensor] = {}

    def reference(self, sigma_T: float) -> torch.Tensor:
        """The PF-ODE endpoints from these latents at sigma_T (cached per sigma_T)."""
        if sigma_T not in self._references:
            solver, steps = self.reference_solve
            self._references[sigma_T] = metrics.reference_endpoints(self.net, self.latents, sigma_T, self.labels,
                                                                    steps=steps, solver=solver)
        return self._references[sigma_T]

    def fid(self, sigmas: np.ndarray, solver: str, detector, ref: Dict[str, np.ndarray], batch: int) -> float:
        """FID of the images sampled from these latents with the grid against the reference statistics."""
        def samples():
            for start in range(0, len(self.seeds), batch):
                labels = None if self.labels is None else self.labels[start:start + batch]
                yield sample(self.net, self.latents[start:start + batch], sigmas, class_labels=labels, solver=solver)
        return fid.samples_fid(detector, samples(), ref, self.latents.device)


def run_bench(network: str, net: torch.nn.Module, steps: Sequence[int], sources: Sequence[Union[str, ScheduleSource]],
              solver: str,
              metric: str, num: int, seed: int, device: torch.device, method_options: Optional[Dict[str, dict]] = None,
              repeats: int = 1, fid_options: Optional[dict] = None,
              seed_sets: Optional[List[SeedSet]] = None) -> List[Dict]:
    """Evaluate every (schedule, K) on the same latents; returns rows {schedule, steps, solver, nfe, metric, value,
    spread, values}: the mean and standard deviation over `repeats` disjoint seed sets of `num` seeds each (or over
    the given `seed_sets`, whose reference solutions are then shared with other calls).  Sources are specs or
    ScheduleSource objects (whose method schedules are made once and can serve several metrics)."""
    columns = [spec if isinstance(spec, ScheduleSource) else ScheduleSource(spec, net, network, solver, method_options)
               for spec in sources]
    if seed_sets is None:
        seed_sets = [SeedSet(net, list(range(seed + r * num, seed + (r + 1) * num)), device) for r in range(repeats)]
    if metric == 'fid':
        fid_options = dict(fid_options or {})
        detector = fid_options.get('detector', 'offline')
        detector = fid.load_detector(detector, device) if isinstance(detector, str) else detector
        ref = fid.load_reference(fid_options['ref'], fid.feature_dim(detector))
    rows = []
    for column in columns:
        for num_steps in steps:
            schedule = column.schedule(num_steps)
            start = time.perf_counter()
            values = []
            for seed_set in seed_sets:
                if metric == 'w2':
                    values.append(metrics.exact_w2(net, schedule.sigmas, solver))
                elif metric == 'rms':
                    x = sample_batches(net, seed_set.latents, schedule.sigmas, class_labels=seed_set.labels,
                                       solver=solver)
                    values.append(metrics.rms_error(x, seed_set.reference(float(schedule.sigmas[0]))))
                else:
                    values.append(seed_set.fid(schedule.sigmas, solver, detector, ref, fid_options.get('batch', 64)))
            rows.append(dict(schedule=column.label, steps=int(num_steps), solver=solver, nfe=nfe(num_steps, solver),
                             metric=metric, value=float(np.mean(values)), spread=float(np.std(values)),
                             values=[float(v) for v in values], sigmas=schedule.sigmas.tolist(),
                             cost=schedule.provenance.get('cost'),
                             seconds=round(time.perf_counter() - start, 3)))
    return rows


def format_table(rows: List[Dict]) -> str:
    """Rows as a Markdown table: one line per schedule, one column per (solver, K), solvers in SOLVERS order (the
    solver named once in the corner when there is one); mean +- std when repeated; each column's lowest mean in bold."""
    cols = sorted({(row['solver'], row['steps']) for row in rows}, key=lambda c: (SOLVERS.index(c[0]), c[1]))
    one_solver = len({solver for solver, _ in cols}) == 1
    names = list(dict.fromkeys(row['schedule'] for row in rows))
    best = {col: min(row['value'] for row in rows if (row['solver'], row['steps']) == col) for col in cols}
    cell = {}
    for row in rows:                                # a (schedule, solver, K) not measured shows as -
        col = (row['solver'], row['steps'])
        text = f'{row["value"]:.4g}' + (f' ± {row["spread"]:.2g}' if len(row['values']) > 1 else '')
        cell[row['schedule'], col] = f'**{text}**' if row['value'] == best[col] else text
    metric = rows[0]['metric']
    corner = f'{metric} ({cols[0][0]})' if one_solver else metric
    header = f'| {corner} | ' + ' | '.join(('' if one_solver else f'{solver} ') + f'K={k} (NFE {nfe(k, solver)})'
                                           for solver, k in cols) + ' |'
    lines = [header, '|' + '---|' * (len(cols) + 1)]
    for name in names:
        lines.append(f'| {name} | ' + ' | '.join(cell.get((name, col), '-') for col in cols) + ' |')
    return '\n'.join(lines)
