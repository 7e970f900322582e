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

Lambda (``lambda_clock``): sqrt(qbar) is integrated in v = sigma^(1/rho) (where the fine grid is uniform) with the
antiderivative of a monotone PCHIP interpolant of sqrt(qbar) dsigma/dv; below the smallest evaluated sigma_min the
rule is qbar(sigma) = qbar(sigma_min), so Lambda(sigma_min) = sigma_min sqrt(qbar(sigma_min)). The continuous clock is
u = 1 - Lambda(sigma)/Lambda(sigma_max), and the K-step grid is that clock read at u = i/K.
"""

import dataclasses
from typing import Optional

import numpy as np
import scipy.interpolate
import torch

from art.error_density import error_density, field, q_norm
from art.schedules import Clock, Schedule, Stopwatch, method_provenance
from edm import grids
from edm.sampler import heun_step
from torch_utils.misc import module_device

QBAR_FLOOR = 1e-12       # relative floor on qbar, so that Lambda is strictly increasing


@dataclasses.dataclass
class QbarEstimate:
    """qbar(sigma) = E|Q| at the fine-grid levels (descending), with the cost of estimating it."""
    sigma: np.ndarray
    qbar: np.ndarray
    num_samples: int
    forward_evals: int       # per-sample network forward passes, all samples together
    jvp_evals: int           # per-sample JVPs, all samples together
    seconds: dict            # CPU and wall seconds (Stopwatch.seconds)


def estimate_qbar(net, num_samples: int = 256, fine_steps: int = 256, sigma_min: Optional[float] = None,
                  sigma_max: Optional[float] = None, rho: float = grids.RHO, batch_size: int = 64, seed: int = 0,
                  mode: str = 'jvp') -> QbarEstimate:
    """qbar(sigma) = E|Q(x(sigma), sigma)| along Heun reference trajectories on a fine EDM grid (module docstring)."""
    if fine_steps < 2 or num_samples < 1 or batch_size < 1:
        raise ValueError(f'need fine_steps >= 2, num_samples >= 1 and batch_size >= 1, got {fine_steps}, '
                         f'{num_samples}, {batch_size}')
    sigma_max = grids.horizon(net) if sigma_max is None else float(sigma_max)
    sigma_min = max(grids.EDM_SIGMA_MIN, net.sigma_min) if sigma_min is None else float(sigma_min)
    sigma = grids.edm_sigmas(fine_steps, sigma_min, sigma_max, rho)[:-1]
    sigma[0], sigma[-1] = sigma_max, sigma_min                      # exact ends ((T^(1/rho))^rho may miss T by 1 ulp)
    device = module_device(net)
    generator = torch.Generator().manual_seed(seed)
    shape = (num_samples, net.img_channels, net.img_resolution, net.img_resolution)
    latents = torch.randn(shape, dtype=torch.float64, generator=generator)
    labels = None
    if net.label_dim:
        classes = torch.randint(net.label_dim, (num_samples,), generator=generator)
        labels = torch.eye(net.label_dim)[classes]

    stats = {}
    q_sum = np.zeros(len(sigma))
    watch = Stopwatch()
    for start in range(0, num_samples, batch_size):
        x = latents[start:start + batch_size].to(device) * sigma[0]
        c = None if labels is None else labels[start:start + batch_size].to(device)
        def f(x: torch.Tensor, s: float) -> torch.Tensor:
            return field(net, x, float(s), c, stats=stats)

        for i, s in enumerate(sigma):
            f_cur, Q = error_density(net, x, float(s), c, mode=mode, stats=stats)
            q_sum[i] += q_norm(Q).sum().item()
            if i + 1 < len(sigma):                                   # Heun step to the next level, first stage f_cur
                x = heun_step(f, x, s, sigma[i + 1], f_cur)
    return QbarEstimate(sigma, q_sum / num_samples, num_samples, stats.get('forward', 0), stats.get('jvp', 0),
                        watch.seconds())


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


def closed_form_schedule(net, num_steps: int, network: Optional[str] = None, num_samples: int = 256,
                         fine_steps: int = 256, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None,
                         rho: float = grids.RHO, batch_size: int = 64, seed: int = 0, mode: str = 'jvp') -> Schedule:
    """The training-free ART schedule for K = num_steps, with its continuous clock and cost in provenance."""
    est = estimate_qbar(net, num_samples, fine_steps, sigma_min, sigma_max, rho, batch_size, seed, mode)
    clock = lambda_clock(est.sigma, est.qbar, rho)
    provenance = method_provenance(network, {
        'objective': 'open-loop optimum of E int |Q| theta^2 dt (eqs. 8-9): uniform in int sqrt(qbar) dsigma',
        'num_steps_built_for': int(num_steps),
        'reference': {'integrator': 'heun', 'discretization': 'edm', 'rho': rho, 'levels': fine_steps,
                      'sigma_max': float(est.sigma[0]), 'sigma_min': float(est.sigma[-1]), 'num_samples': num_samples,
                      'seed': seed, 'q_mode': mode, 'below_sigma_min': 'qbar held at its value at sigma_min'},
    }, {'forward_evals': est.forward_evals, 'jvp_evals': est.jvp_evals,
        'forward_evals_per_trajectory': est.forward_evals / num_samples,
        'jvp_evals_per_trajectory': est.jvp_evals / num_samples, **est.seconds})
    return Schedule('closed-form', clock.grid(num_steps), solver='euler', clock=clock, provenance=provenance)
