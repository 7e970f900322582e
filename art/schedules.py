"""Schedules: the ART time change, the versioned schedule file, resampling to any K, and named baselines.

Time change [paper v1 §2.2]: a uniform clock t_k = k T/K drives psi(t_k) = sum_{j<k} theta_j dt (eq. 4, psi' = theta)
with the budget sum_k theta_k dt = T (eq. 6); the grid is sigma_k = T - psi(t_k), T = sigma_0.

Schedule file (JSON, format "edm-art-schedule", version 1):
    {"format", "version", "method", "num_steps", "solver", "sigmas": [K+1 values, strictly descending, ending in 0],
     "clock": null or {"u": [0 .. 1 ascending], "sigma": [descending, ending in 0]},
     "provenance": {...}, "metrics": {...}}
The clock is sigma against normalised clock time u in [0, 1]; a grid for any K is read off it at u = i/K.

Resampling to another K (``Schedule.resample``):
- with a clock: monotone PCHIP interpolation of sigma^(1/7) (finite at sigma = 0) against u, evaluated at u = i/K;
- without one, the paper's "log-linear interpolation" [paper v1 §5.3.1], in the reading of docs/method.md §8:
  log sigma of the K positive levels is interpolated linearly against the normalised index i/(K-1), evaluated at
  j/(K'-1) for j < K', and 0 is appended. Both endpoints sigma_0 and sigma_{K-1} are kept.
"""

import dataclasses
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import scipy.interpolate
import scipy.optimize

import dnnlib
from dnnlib.util import UserError
from art.networks import network_name
from edm import grids
from edm.guidance import split_guided_spec
from edm.sampler import SOLVERS

FORMAT = 'edm-art-schedule'
VERSION = 1
PathLike = Union[str, Path]


class ScheduleError(UserError, ValueError):
    """An invalid schedule or schedule file; the message is one line naming the file and the problem."""


# ---------------------------------------------------------------------------------------------------------------
# Time change (docs/method.md §2).

def theta_from_grid(sigmas: Sequence[float]) -> np.ndarray:
    """Clock speeds theta_k = (psi_{k+1} - psi_k)/dt of a grid, dt = T/K, psi = T - sigma, T = sigma_0 (eq. 4)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    K = len(sigmas) - 1
    return (sigmas[:-1] - sigmas[1:]) * K / sigmas[0]


def grid_from_theta(theta: Sequence[float], T: float, normalise: bool = True) -> np.ndarray:
    """Grid sigma_k = T - psi(t_k) driven by theta on t_k = k T/K; normalise rescales theta to the budget (eq. 6).

    With normalise (the paper's distillation, §5.1) the grid ends at exactly 0; without it psi(T) may miss T and
    the raw levels are returned.
    """
    theta = np.asarray(theta, dtype=np.float64)
    dt = T / len(theta)
    if normalise:
        total = theta.sum() * dt
        if not (math.isfinite(total) and total > 0):
            raise ValueError(f'cannot normalise theta: sum(theta) dt = {total}')
        theta = theta * (T / total)
    psi = np.concatenate([[0.0], np.cumsum(theta) * dt])
    sigmas = T - psi
    if normalise:
        sigmas[-1] = 0.0
    return sigmas


# ---------------------------------------------------------------------------------------------------------------
# Validation.

def _is_number(value: Any) -> bool:
    """A JSON number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(values: Any, what: str, source: str) -> np.ndarray:
    """A list of finite numbers as float64, or ScheduleError."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or not all(_is_number(v) for v in values):
        raise ScheduleError(f'{source}: {what} must be a list of numbers')
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        bad = values[int(np.argmin(np.isfinite(array)))]
        raise ScheduleError(f'{source}: {what} contains a non-finite value ({bad})')
    return array


def validate_grid(sigmas: Any, source: str = '<schedule>', what: str = 'sigmas') -> np.ndarray:
    """Check a grid (finite, first > 0, strictly descending, ends at exactly 0) and return it as float64."""
    sigmas = _numbers(sigmas, what, source)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ScheduleError(f'{source}: {what} must hold at least 2 values (K+1 levels ending in 0)')
    if not sigmas[0] > 0:
        raise ScheduleError(f'{source}: {what}[0] must be positive, got {sigmas[0]}')
    bad = np.flatnonzero(np.diff(sigmas) >= 0)
    if len(bad):
        i = int(bad[0])
        raise ScheduleError(f'{source}: {what} must be strictly descending, but {what}[{i}] = {sigmas[i]} '
                            f'<= {what}[{i + 1}] = {sigmas[i + 1]}')
    if sigmas[-1] != 0:
        raise ScheduleError(f'{source}: {what} must end at exactly 0, got {sigmas[-1]}')
    return sigmas


def _check_clock(u: Any, sigma: Any, source: str) -> tuple:
    """Validate clock knots: u strictly ascending from exactly 0 to 1, sigma a valid grid of the same length."""
    u = _numbers(u, 'clock.u', source)
    sigma = validate_grid(sigma, source, 'clock.sigma')
    if u.shape != sigma.shape:
        raise ScheduleError(f'{source}: clock.u and clock.sigma must have the same length')
    if u[0] != 0 or u[-1] != 1 or not (np.diff(u) > 0).all():
        raise ScheduleError(f'{source}: clock.u must be strictly ascending from exactly 0 to exactly 1')
    return u, sigma


@dataclasses.dataclass
class Clock:
    """A continuous clock: sigma (descending, ending at 0) against normalised clock time u (0 -> 1)."""
    u: np.ndarray
    sigma: np.ndarray

    def __post_init__(self):
        self.u, self.sigma = _check_clock(self.u, self.sigma, '<clock>')

    def grid(self, num_steps: int, sigma_max: Optional[float] = None) -> np.ndarray:
        """The K+1 grid at u = i/K: monotone PCHIP of sigma^(1/7) against u, then back to sigma. With sigma_max
        below the clock's start, the clock's part below it, its time renormalised: u = u_0 + (1 - u_0) i/K where
        sigma(u_0) = sigma_max (the same spacing of the levels it keeps, a later start)."""
        top = float(self.sigma[0]) if sigma_max is None else float(sigma_max)
        if not 0 < top <= self.sigma[0]:
            raise ValueError(f'the clock runs from sigma {self.sigma[0]:g}; it cannot start at {top:g}')
        v_of_u = scipy.interpolate.PchipInterpolator(self.u, self.sigma ** (1 / grids.RHO))
        u0 = 0.0 if top == self.sigma[0] else scipy.optimize.brentq(lambda u: v_of_u(u) - top ** (1 / grids.RHO),
                                                                     0.0, 1.0, xtol=1e-14)
        v = v_of_u(u0 + (1 - u0) * np.arange(num_steps + 1) / num_steps)
        sigmas = np.maximum(v, 0.0) ** grids.RHO
        sigmas[0], sigmas[-1] = top, 0.0
        return sigmas


def clock_from_grid(sigmas: Sequence[float]) -> Clock:
    """The clock whose knots are a grid's levels at u = i/K (resampling at the same K returns the grid)."""
    sigmas = validate_grid(sigmas)
    return Clock(np.arange(len(sigmas)) / (len(sigmas) - 1), sigmas)


def resample_loglinear(sigmas: Sequence[float], num_steps: int) -> np.ndarray:
    """The paper's log-linear transfer (docs/method.md §8): log sigma of positive levels linear in i/(K-1)."""
    sigmas = validate_grid(sigmas)
    positive = sigmas[:-1]
    if num_steps == len(positive):
        return sigmas.copy()
    if num_steps == 1:
        return np.array([positive[0], 0.0])
    if len(positive) < 2:
        raise ValueError('a 1-step grid has one positive level and cannot be resampled without a clock')
    src = np.arange(len(positive)) / (len(positive) - 1)
    dst = np.arange(num_steps) / (num_steps - 1)
    out = np.exp(np.interp(dst, src, np.log(positive)))
    out[0], out[-1] = positive[0], positive[-1]
    return np.append(out, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# The schedule and its file.

def code_version() -> str:
    """`git describe --always --dirty` of this checkout, or 'unknown'."""
    try:
        out = subprocess.run(['git', 'describe', '--always', '--dirty'], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 'unknown'
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else 'unknown'


class Stopwatch:
    """CPU seconds of this process and wall seconds since it was made: the time a method's work cost."""

    def __init__(self) -> None:
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()

    def seconds(self, digits: int = 3, cpu: str = 'cpu_seconds', wall: str = 'wall_seconds') -> dict:
        """The provenance's time fields so far, {cpu: CPU seconds, wall: wall seconds}, rounded to `digits`."""
        return {cpu: round(time.process_time() - self.cpu0, digits),
                wall: round(time.perf_counter() - self.wall0, digits)}


def method_provenance(network: Optional[str], fields: dict, cost: dict) -> dict:
    """A schedule method's provenance: the network it was made for, the method's own fields, its cost (network
    evaluations and a Stopwatch's seconds) and the code version."""
    return {'network': network, **fields, 'cost': cost, 'code_version': code_version()}


@dataclasses.dataclass
class Schedule:
    """A K-step noise-level grid with its optional continuous clock, provenance and metrics."""
    method: str
    sigmas: np.ndarray
    solver: Optional[str] = None
    clock: Optional[Clock] = None
    provenance: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.sigmas = validate_grid(self.sigmas)

    @property
    def num_steps(self) -> int:
        """K, the number of steps (len(sigmas) - 1)."""
        return len(self.sigmas) - 1

    def to_dict(self) -> dict:
        """The JSON object of the schedule file."""
        return {
            'format': FORMAT, 'version': VERSION, 'method': self.method, 'num_steps': self.num_steps,
            'solver': self.solver, 'sigmas': self.sigmas.tolist(),
            'clock': None if self.clock is None else {'u': self.clock.u.tolist(), 'sigma': self.clock.sigma.tolist()},
            'provenance': self.provenance, 'metrics': self.metrics,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = '<schedule>') -> 'Schedule':
        """Validate a schedule-file object; errors are ScheduleError naming source."""
        if not isinstance(data, dict):
            raise ScheduleError(f'{source}: expected a JSON object, got {type(data).__name__}')
        if data.get('format') != FORMAT:
            raise ScheduleError(f'{source}: not an {FORMAT} file (format = {data.get("format")!r})')
        if data.get('version') != VERSION:
            raise ScheduleError(f'{source}: unsupported version {data.get("version")!r} (this code reads version '
                                f'{VERSION})')
        if not isinstance(data.get('method'), str):
            raise ScheduleError(f'{source}: method must be a string')
        if data.get('solver') is not None and data['solver'] not in SOLVERS:
            raise ScheduleError(f'{source}: solver = {data["solver"]!r} is not a solver; valid: {", ".join(SOLVERS)} '
                                f'or null')
        for key in ('provenance', 'metrics'):
            if not isinstance(data.get(key, {}), dict):
                raise ScheduleError(f'{source}: {key} must be an object')
        sigmas = validate_grid(data.get('sigmas'), source)
        num_steps = data.get('num_steps')
        if not _is_number(num_steps) or num_steps != len(sigmas) - 1:
            raise ScheduleError(f'{source}: num_steps = {num_steps!r} but sigmas holds {len(sigmas)} levels '
                                f'(num_steps must be len(sigmas) - 1)')
        clock = data.get('clock')
        if clock is not None:
            if not isinstance(clock, dict):
                raise ScheduleError(f'{source}: clock must be an object with lists u and sigma, or null')
            clock = Clock(*_check_clock(clock.get('u'), clock.get('sigma'), source))
        return cls(data['method'], sigmas, data.get('solver'), clock, dict(data.get('provenance', {})),
                   dict(data.get('metrics', {})))

    def resample(self, num_steps: int, sigma_max: Optional[float] = None) -> 'Schedule':
        """The schedule at another K (clock if present, else log-linear) or, from its clock only, starting lower at
        sigma_max (Clock.grid); provenance records it, metrics move there."""
        grids.check_num_steps(num_steps)
        if sigma_max is None and num_steps == self.num_steps:
            return dataclasses.replace(self, sigmas=self.sigmas.copy())
        if self.clock is not None:
            sigmas, rule = self.clock.grid(num_steps, sigma_max), f'clock: PCHIP of sigma^(1/{grids.RHO:g}) at u = i/K'
        elif sigma_max is None:
            sigmas, rule = resample_loglinear(self.sigmas, num_steps), 'log-linear: log sigma against i/(K-1), then 0'
        else:
            raise ValueError(f'it has no clock to start at sigma {sigma_max:g} from')
        restart = {} if sigma_max is None else {'sigma_max': float(sigma_max), 'rule_of_start': (
            "the clock's part below sigma_max, its time renormalised")}
        provenance = dict(self.provenance, resampled={'from_steps': self.num_steps, 'to_steps': int(num_steps),
                                                      'rule': rule, **restart, 'metrics_at_from_steps': self.metrics})
        return Schedule(self.method, sigmas, self.solver, self.clock, provenance, {})


def save_schedule(schedule: Schedule, path: PathLike) -> Path:
    """Write the schedule file atomically (temporary file in the same folder, then os.replace)."""
    text = json.dumps(schedule.to_dict(), indent=2, allow_nan=False) + '\n'
    return Path(dnnlib.util.atomic_write_text(path, text))


def load_schedule(path: PathLike, num_steps: Optional[int] = None, resample: bool = False,
                  sigma_max: Optional[float] = None) -> Schedule:
    """Read and validate a schedule file; with num_steps != K (or a later start sigma_max: Schedule.resample)
    resample if allowed, else raise ScheduleError."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScheduleError(f'{path}: cannot read schedule file ({getattr(exc, "strerror", None) or exc})') from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScheduleError(f'{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})') from None
    schedule = Schedule.from_dict(data, str(path))
    num_steps = schedule.num_steps if num_steps is None else num_steps
    if num_steps == schedule.num_steps and sigma_max is None:
        return schedule
    if not resample:
        raise ScheduleError(f'{path}: schedule has {schedule.num_steps} steps but {num_steps} were requested '
                            f'(allow resampling to use it at another K)')
    try:
        return schedule.resample(num_steps, sigma_max)
    except ValueError as exc:
        raise ScheduleError(f'{path}: cannot resample to {num_steps} steps: {exc}') from None


def _same_network(a: str, b: str) -> bool:
    """Whether two network specs name one network: an analytic Gaussian by its whole spec, a pickle or mixture by its
    file name (a schedule records the path as it was given where it was made, relative or absolute); a guided field
    (edm.guidance.guided_spec) by its network, its guide and its guidance weight."""
    def name(spec: str) -> str:
        return spec if spec.startswith('analytic:') and not spec.startswith('analytic:gmm:') else network_name(spec)

    def key(spec: str) -> tuple:
        network, gnet, guidance = split_guided_spec(spec)
        return name(network), gnet and name(gnet), guidance
    return key(a) == key(b)


FAR_BELOW = 10.0   # a schedule starting this many times below the network's starting level gets a note


def check_network_fit(schedule: Schedule, net: Any, network: str, source: str) -> Optional[str]:
    """Check that a schedule file suits the network it is about to drive; returns a note for the user, or None.

    Rules:
    - Refused (ScheduleError): a schedule starting above the network's highest noise level, sigma_0 > net.sigma_max
      (beyond a relative 1e-6 of round-off). Its first steps would query the network where it has no defined
      behaviour and the samples would start from more noise than the network's prior, e.g. a grid made for EDM's
      sigma_max = 80 on analytic:gauss1d, whose T = 3. EDM pickles have sigma_max = inf: no bound.
    - A note: the schedule starts more than FAR_BELOW times below the level the network's samplers start at
      (sigma_max, or EDM's 80 for networks without a bound), e.g. a grid made for analytic:gauss1d (T = 3) on an EDM
      pickle. The network is defined there, but x(T) then holds far less noise than its prior: poor samples.
    - A note: the provenance records another network than `network`. The grid is still valid there, but it was
      optimised for the other one. Files without a recorded network (baselines, hand-written grids) get no note.
    Several notes are joined into one line.
    """
    sigma_max = float(getattr(net, 'sigma_max', math.inf))
    if schedule.sigmas[0] > sigma_max * (1 + 1e-6):
        raise ScheduleError(f'{source}: the schedule starts at sigma = {schedule.sigmas[0]:g}, above the network\'s '
                            f'highest noise level {sigma_max:g}; use a schedule made for this network '
                            f'(train_art.py --network={network}) or a baseline name')
    notes = []
    start = sigma_max if math.isfinite(sigma_max) else grids.EDM_SIGMA_MAX
    if schedule.sigmas[0] * FAR_BELOW < start:
        notes.append(f'{source} starts at sigma = {schedule.sigmas[0]:g}, far below the network\'s starting level '
                     f'{start:g}: its samples begin with much less noise than the prior and may be poor')
    made_for = schedule.provenance.get('network')
    if isinstance(made_for, str) and not _same_network(made_for, network):
        notes.append(f'{source} was made for {made_for}, not {network}: it is a valid grid here, but optimised for '
                     f'the other network')
    return '; '.join(notes) or None


# ---------------------------------------------------------------------------------------------------------------
# Named baselines.

def baseline_schedule(name: str, num_steps: int, net: Any = None, **kw) -> Schedule:
    """A named discretization (edm.grids.DISCRETIZATIONS) as a Schedule; kw go to edm.grids.make_sigmas.

    A network may set `baseline_sigma_min` (analytic:gauss1d sets 0): 'edm' and 'uniform' then default to it, giving
    K+1 levels that reach 0, the convention of the paper's 1-D baselines [paper v1 Table 1].
    """
    grids.check_choice('discretization', name, grids.DISCRETIZATIONS)
    if getattr(net, 'baseline_sigma_min', None) is not None and name in ('edm', 'uniform'):
        kw.setdefault('sigma_min', net.baseline_sigma_min)
    sigmas = grids.make_sigmas(name, num_steps, net=net, **kw)
    provenance = {'discretization': name, 'options': dict(kw), 'code_version': code_version()}
    return Schedule(name, sigmas, provenance=provenance)
