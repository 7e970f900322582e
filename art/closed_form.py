"""Training-free ART: the open-loop optimum of the ART objective (docs/method.md §5).

For a time-only schedule the objective E int |Q| theta^2 dt (eq. 9) under the budget int theta dt = T (eq. 6) is
minimised by theta ∝ qbar^(-1/2), qbar(sigma) = E|Q(x(sigma), sigma)| along the exact flow (Cauchy-Schwarz after
d psi = theta dt); equivalently |Q| theta^2 is constant (the conserved Hamiltonian), i.e. the optimal grid is uniform in
Lambda(sigma) = int_0^sigma sqrt(qbar(s)) ds.

Estimation (``estimate_qbar``):
- reference trajectories: num_samples latents x_T = sigma_max * N(0, I) (sampler convention), uniform random class
  labels for conditional networks, integrated by Heun on a fine EDM grid: fine_steps levels
  (sigma_max^(1/rho) + i/(fine_steps-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, rho = 7, defaults
  sigma_max = min(80, net.sigma_max), sigma_min = max(0.002, net.sigma_min), 256 levels;
- |Q| (Euclidean norm, one JVP each) at every level of the fine grid, averaged over samples; the field f evaluated for
  Q is reused as Heun's first stage, so each trajectory costs 2*fine_steps - 1 forward passes and fine_steps JVPs.

Adaptive estimate (``adaptive_estimate``, the default; ``AdaptiveSettings``): start_samples trajectories on `levels`
fine levels, then their number doubled (the first n kept: one generator draws them in order) until the grids of
K = min_steps..max_steps move by less than `tolerance` in log sigma (max over K and interior levels), or the next
doubling would pass `budget` network evaluations (forward passes and JVPs counted alike; `analytic_budget` for an
analytic model, whose evaluations are cheap): then as many as still fit are added once and the estimate stops with
'budget'. Q by 'fd' costs what 'jvp' costs in evaluations and gives the same
clock, at a forward pass's CPU time; 'flow' (Heun's stages, free) is first order in the fine step (docs/method.md §5).

Lambda (``lambda_clock``): sqrt(qbar) is integrated in v = sigma^(1/rho) (where the fine grid is uniform) with the
antiderivative of a monotone PCHIP interpolant of sqrt(qbar) dsigma/dv; below the smallest evaluated sigma_min the
rule is qbar(sigma) = qbar(sigma_min), so Lambda(sigma_min) = sigma_min sqrt(qbar(sigma_min)). The continuous clock is
u = 1 - Lambda(sigma)/Lambda(sigma_max), and the K-step grid is that clock read at u = i/K.
"""

import dataclasses
from typing import List, Optional, Tuple

import numpy as np
import scipy.interpolate
import torch

from art.analytic import AnalyticModel
from art.error_density import error_density, field, q_norm
from art.schedules import Clock, Schedule, Stopwatch, method_provenance
from edm import grids
from edm.sampler import heun_step
from torch_utils.misc import module_device

QBAR_FLOOR = 1e-12       # relative floor on qbar, so that Lambda is strictly increasing
Q_MODES = ('jvp', 'fd', 'auto', 'flow')   # error_density's modes, and 'flow': Q from Heun's two stages (free)
BATCH_SIZE = 64          # trajectories integrated at once by the adaptive estimate (results do not depend on it)


@dataclasses.dataclass
class QbarEstimate:
    """qbar(sigma) = E|Q| at the fine-grid levels (descending), with the cost of estimating it."""
    sigma: np.ndarray
    qbar: np.ndarray
    num_samples: int
    forward_evals: int       # per-sample network forward passes, all samples together
    jvp_evals: int           # per-sample JVPs, all samples together
    seconds: dict            # CPU and wall seconds (Stopwatch.seconds)

    @property
    def evals(self) -> int:
        """Network evaluations, forward passes and JVPs counted alike."""
        return self.forward_evals + self.jvp_evals


def fine_levels(net, fine_steps: int, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None,
                rho: float = grids.RHO) -> np.ndarray:
    """The fine grid's fine_steps levels, descending from sigma_max to sigma_min (module docstring), exact ends."""
    sigma_max = grids.horizon(net) if sigma_max is None else float(sigma_max)
    sigma_min = max(grids.EDM_SIGMA_MIN, net.sigma_min) if sigma_min is None else float(sigma_min)
    sigma = grids.edm_sigmas(fine_steps, sigma_min, sigma_max, rho)[:-1]
    sigma[0], sigma[-1] = sigma_max, sigma_min                      # exact ends ((T^(1/rho))^rho may miss T by 1 ulp)
    return sigma


def draw_latents(net, num_samples: int, generator: torch.Generator) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """num_samples standard normal latents (float64) and, for a conditional network, uniform one-hot class labels."""
    shape = (num_samples, net.img_channels, net.img_resolution, net.img_resolution)
    latents = torch.randn(shape, dtype=torch.float64, generator=generator)
    if not net.label_dim:
        return latents, None
    classes = torch.randint(net.label_dim, (num_samples,), generator=generator)
    return latents, torch.eye(net.label_dim)[classes]


def trajectory_q(net, latents: torch.Tensor, labels: Optional[torch.Tensor], sigma: np.ndarray, mode: str = 'jvp',
                 batch_size: int = 64, stats: Optional[dict] = None) -> np.ndarray:
    """|Q| [num_samples, levels] along Heun trajectories from sigma[0] * latents through the fine levels sigma.

    mode: one of error_density's (one JVP or one extra forward pass per level), or 'flow': no extra evaluation, Q from
    the difference of Heun's two stages, |f(x + h f, sigma + h) - f(x, sigma)| / |h| on each step h, put at the levels
    as the geometric mean of the two steps beside a level (the one step at each end).
    """
    if mode not in Q_MODES:
        raise ValueError(f'mode must be one of {", ".join(Q_MODES)}, got {mode!r}')
    device = module_device(net)
    rows = []
    for start in range(0, len(latents), batch_size):
        x = latents[start:start + batch_size].to(device) * sigma[0]
        c = None if labels is None else labels[start:start + batch_size].to(device)
        rows.append(_flow_q(net, x, c, sigma, stats) if mode == 'flow' else _point_q(net, x, c, sigma, mode, stats))
    return np.concatenate(rows)


def _point_q(net, x: torch.Tensor, c: Optional[torch.Tensor], sigma: np.ndarray, mode: str,
             stats: Optional[dict]) -> np.ndarray:
    """|Q| [B, levels] by error_density at every level; its f is Heun's first stage."""
    q = np.zeros((len(x), len(sigma)))
    for i, s in enumerate(sigma):
        f_cur, Q = error_density(net, x, float(s), c, mode=mode, stats=stats)
        q[:, i] = q_norm(Q).cpu().numpy()
        if i + 1 < len(sigma):                                       # Heun step to the next level, first stage f_cur
            x = heun_step(lambda x_, s_: field(net, x_, float(s_), c, stats=stats), x, s, sigma[i + 1], f_cur)
    return q


def _flow_q(net, x: torch.Tensor, c: Optional[torch.Tensor], sigma: np.ndarray, stats: Optional[dict]) -> np.ndarray:
    """|Q| [B, levels] from Heun's stages: per step |f_2 - f_1| / |h|, then at the levels (trajectory_q)."""
    stage = {}

    def f(x_: torch.Tensor, s_: float) -> torch.Tensor:
        stage['f'] = field(net, x_, float(s_), c, stats=stats)
        return stage['f']

    per_step = np.zeros((len(x), len(sigma) - 1))
    for i in range(len(sigma) - 1):
        f_cur = f(x, sigma[i])
        x = heun_step(f, x, sigma[i], sigma[i + 1], f_cur)
        per_step[:, i] = q_norm(stage['f'] - f_cur).cpu().numpy() / (sigma[i] - sigma[i + 1])
    return _at_levels(per_step, sigma)


def _at_levels(per_step: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Values [B, steps] at the steps' midpoints (sigma_i + sigma_i+1)/2, log-linear in log sigma at the levels (the
    two midpoints beside a level; the nearest two at each end)."""
    log_mid, log_sigma = np.log((sigma[:-1] + sigma[1:]) / 2), np.log(sigma)
    log_q = np.log(np.maximum(per_step, np.finfo(np.float64).tiny))
    a = np.clip(np.arange(len(sigma)) - 1, 0, len(log_mid) - 2)
    w = (log_sigma - log_mid[a]) / (log_mid[a + 1] - log_mid[a])
    return np.exp((1 - w) * log_q[:, a] + w * log_q[:, a + 1])


def estimate_qbar(net, num_samples: int = 256, fine_steps: int = 256, sigma_min: Optional[float] = None,
                  sigma_max: Optional[float] = None, rho: float = grids.RHO, batch_size: int = 64, seed: int = 0,
                  mode: str = 'jvp') -> QbarEstimate:
    """qbar(sigma) = E|Q(x(sigma), sigma)| along Heun reference trajectories on a fine EDM grid (module docstring)."""
    if fine_steps < 2 or num_samples < 1 or batch_size < 1:
        raise ValueError(f'need fine_steps >= 2, num_samples >= 1 and batch_size >= 1, got {fine_steps}, '
                         f'{num_samples}, {batch_size}')
    sigma = fine_levels(net, fine_steps, sigma_min, sigma_max, rho)
    latents, labels = draw_latents(net, num_samples, torch.Generator().manual_seed(seed))
    stats = {}
    watch = Stopwatch()
    q = trajectory_q(net, latents, labels, sigma, mode, batch_size, stats)
    return QbarEstimate(sigma, q.mean(axis=0), num_samples, stats.get('forward', 0), stats.get('jvp', 0),
                        watch.seconds())


@dataclasses.dataclass(frozen=True)
class AdaptiveSettings:
    """The adaptive estimate's rule (``adaptive_estimate``): what it measures, when it stops, what it may spend."""
    budget: int = 1000              # network evaluations at most, forward passes and JVPs counted alike
    analytic_budget: int = 65536    # the same for an analytic model (an evaluation costs 1% of a network's or less)
    tolerance: float = 0.005        # converged when the grids move less than this in log sigma as n doubles
    start_samples: int = 2          # trajectories of the first estimate; then doubled
    levels: int = 32                # fine-grid levels of every trajectory (fixed: docs/method.md §5)
    min_steps: int = 3              # the grids compared: K = min_steps..max_steps
    max_steps: int = 18
    q_mode: str = 'fd'              # trajectory_q's mode: 'fd' is jvp's clock (1e-5) at a forward pass's CPU time

    def __post_init__(self):
        if self.q_mode not in Q_MODES:
            raise ValueError(f'q_mode must be one of {", ".join(Q_MODES)}, got {self.q_mode!r}')
        if self.levels < 3 or self.start_samples < 1 or not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f'need levels >= 3, start_samples >= 1 and 1 <= min_steps <= max_steps, got '
                             f'{self.levels}, {self.start_samples}, {self.min_steps}, {self.max_steps}')
        if not self.tolerance > 0 or self.start_samples * self.trajectory_cost() > self.budget:
            raise ValueError(f'need tolerance > 0 and a budget of at least start_samples x {self.trajectory_cost()} '
                             f'evaluations, got {self.tolerance}, {self.budget}')

    def trajectory_cost(self) -> int:
        """Network evaluations per trajectory: 2 per Heun step, plus the levels' JVPs or extra forwards."""
        steps = self.levels - 1
        return 2 * steps if self.q_mode == 'flow' else 2 * steps + 1 + self.levels


@dataclasses.dataclass
class AdaptiveEstimate:
    """The adaptive estimate's qbar, why it stopped, and each doubling's size and move."""
    estimate: QbarEstimate
    stop: str                       # 'converged' or 'budget'
    history: List[dict]             # per estimate: num_samples, evals, move (max |d log sigma| from the one before)
    q: np.ndarray                   # |Q| [num_samples, levels] of each trajectory (ART-RL's replay pool)

    def record(self, settings: AdaptiveSettings) -> dict:
        """The estimate's provenance: the rule, its settings, why it stopped and each doubling."""
        return {'rule': 'adaptive', 'settings': dataclasses.asdict(settings), 'stop': self.stop,
                'history': self.history}


def grid_move(old: Clock, new: Clock, min_steps: int, max_steps: int) -> float:
    """max over K = min_steps..max_steps and the interior levels of |log sigma_new - log sigma_old|."""
    return max(float(np.abs(np.log(new.grid(K)[1:-1] / old.grid(K)[1:-1])).max(initial=0.0))
               for K in range(min_steps, max_steps + 1))


def adaptive_estimate(net, settings: AdaptiveSettings = AdaptiveSettings(), seed: int = 0,
                      sigma_min: Optional[float] = None, sigma_max: Optional[float] = None,
                      rho: float = grids.RHO) -> AdaptiveEstimate:
    """qbar from trajectories added (doubling their number, the first n kept) until the clock moves less than the
    tolerance, or the next doubling would pass the budget (then as many as still fit are added, once)."""
    sigma = fine_levels(net, settings.levels, sigma_min, sigma_max, rho)
    generator = torch.Generator().manual_seed(seed)
    cost = settings.trajectory_cost()
    budget = settings.analytic_budget if isinstance(net, AnalyticModel) else settings.budget
    stats, rows, history, clock, stop, n = {}, [], [], None, 'budget', 0
    watch = Stopwatch()

    def spent() -> int:
        return stats.get('forward', 0) + stats.get('jvp', 0)

    while True:
        wanted = n or settings.start_samples
        add = min(wanted, (budget - spent()) // cost)
        if add < 1:
            break
        latents, labels = draw_latents(net, add, generator)
        rows.append(trajectory_q(net, latents, labels, sigma, settings.q_mode, BATCH_SIZE, stats))
        n += add
        if not np.isfinite(rows[-1]).all():
            raise FloatingPointError(f'non-finite |Q| along the first {n} trajectories')
        new = lambda_clock(sigma, np.concatenate(rows).mean(axis=0), rho)
        move = None if clock is None else grid_move(clock, new, settings.min_steps, settings.max_steps)
        clock = new
        history.append({'num_samples': n, 'evals': spent(), 'move': move})
        if move is not None and move < settings.tolerance:
            stop = 'converged'
            break
        if add < wanted:
            break
    q = np.concatenate(rows)
    estimate = QbarEstimate(sigma, q.mean(axis=0), len(q), stats.get('forward', 0), stats.get('jvp', 0),
                            watch.seconds())
    return AdaptiveEstimate(estimate, stop, history, q)


def adaptive_schedule(net, network: Optional[str] = None, settings: AdaptiveSettings = AdaptiveSettings(),
                      seed: int = 0) -> Schedule:
    """The network's closed-form clock from the adaptive estimate (grid for K = 10; any K by resample)."""
    return closed_form_schedule(net, 10, network=network, seed=seed, settings=settings)


def lambda_clock(sigma: np.ndarray, qbar: np.ndarray, rho: float = grids.RHO) -> Clock:
    """The clock uniform in Lambda(sigma) = int_0^sigma sqrt(qbar) (module docstring); sigma descending, positive."""
    sigma, qbar = np.asarray(sigma, dtype=np.float64), np.asarray(qbar, dtype=np.float64)
    root = np.sqrt(np.maximum(qbar, QBAR_FLOOR * qbar.max()))
    v = sigma[::-1] ** (1 / rho)                                     # ascending
    integrand = root[::-1] * rho * v ** (rho - 1)                   # sqrt(qbar) dsigma/dv
    lam = scipy.interpolate.PchipInterpolator(v, integrand).antiderivative()(v)
    lam = lam - lam[0] + sigma[-1] * root[-1]                        # constant qbar below sigma_min
    lam = np.concatenate([[0.0], lam])[::-1]                         # descending sigma order, Lambda(0) = 0
    u = 1 - lam / lam[0]
    u[0], u[-1] = 0.0, 1.0
    return Clock(u, np.append(sigma, 0.0))


def closed_form_schedule(net, num_steps: int, network: Optional[str] = None, num_samples: Optional[int] = None,
                         fine_steps: int = 256, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None,
                         rho: float = grids.RHO, batch_size: int = 64, seed: int = 0, mode: str = 'jvp',
                         settings: AdaptiveSettings = AdaptiveSettings()) -> Schedule:
    """The training-free ART schedule for K = num_steps, with its continuous clock and cost in provenance.

    By default the adaptive estimate (``settings``); given num_samples, that many trajectories on fine_steps levels
    with Q by `mode` (the fixed-size estimate; fine_steps, batch_size and mode serve it only).
    """
    if num_samples is None:
        adaptive = adaptive_estimate(net, settings, seed, sigma_min, sigma_max, rho)
        est, levels, mode = adaptive.estimate, settings.levels, settings.q_mode
        size = adaptive.record(settings)
    else:
        est = estimate_qbar(net, num_samples, fine_steps, sigma_min, sigma_max, rho, batch_size, seed, mode)
        levels, size = fine_steps, {'rule': 'fixed'}
    clock = lambda_clock(est.sigma, est.qbar, rho)
    provenance = method_provenance(network, {
        'objective': 'open-loop optimum of E int |Q| theta^2 dt (eqs. 8-9): uniform in int sqrt(qbar) dsigma',
        'num_steps_built_for': int(num_steps),
        'reference': {'integrator': 'heun', 'discretization': 'edm', 'rho': rho, 'levels': levels,
                      'sigma_max': float(est.sigma[0]), 'sigma_min': float(est.sigma[-1]),
                      'num_samples': est.num_samples, 'seed': seed, 'q_mode': mode,
                      'below_sigma_min': 'qbar held at its value at sigma_min'},
        'estimate': size,
    }, {'evals': est.evals, 'forward_evals': est.forward_evals, 'jvp_evals': est.jvp_evals,
        'forward_evals_per_trajectory': est.forward_evals / est.num_samples,
        'jvp_evals_per_trajectory': est.jvp_evals / est.num_samples, **est.seconds})
    return Schedule('closed-form', clock.grid(num_steps), solver='euler', clock=clock, provenance=provenance)
