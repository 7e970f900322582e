"""One sampler for every grid: Euler/Heun with churn, EDM's ablation schedules and scalings (edm-interface.md 2.5-2.6).

`sample` integrates the probability-flow ODE (plus optional churn) over an explicit noise-level grid. `edm_sampler` and
`ablation_sampler` keep upstream's signatures: they only build the grid and call `sample`. With the linear schedule and
no scaling the arithmetic is that of upstream's `edm_sampler` operation for operation, so results are bit-identical.
"""
import math
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from edm.grids import (VP_BETA_D, VP_BETA_MIN, Scaling, Schedule, check_choice, make_scaling, make_schedule,
                       make_sigmas, sigma_range, vp_beta)

SOLVERS = ('euler', 'heun')

Tensor = torch.Tensor
RandnLike = Callable[[Tensor], Tensor]
GridLike = Union[Tensor, np.ndarray, Sequence[float]]


def nfe(num_steps: int, solver: str = 'heun') -> int:
    """Network evaluations of a K-step run: Euler K, Heun 2K - 1 (the last step is Euler)."""
    check_choice('solver', solver, SOLVERS)
    return num_steps if solver == 'euler' else 2 * num_steps - 1


def check_sigmas(sigmas: GridLike, device: Optional[torch.device] = None) -> Tensor:
    """The grid as a float64 tensor after checking it is 1-D, finite, non-increasing, positive, then ends at 0."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64, device=device)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f'sigmas must be a 1-D grid of K + 1 >= 2 noise levels, got shape {tuple(sigmas.shape)}')
    if not torch.isfinite(sigmas).all():
        raise ValueError('sigmas must be finite')
    if sigmas[-1] != 0 or not (sigmas[:-1] > 0).all():
        raise ValueError('sigmas must be positive and end with a single 0 (sigma_0 > ... > sigma_{K-1} > sigma_K = 0)')
    if (sigmas[1:] > sigmas[:-1]).any():
        raise ValueError('sigmas must be descending')
    return sigmas


def _round_sigma(net: Any, sigma: Tensor) -> Tensor:
    """net.round_sigma as a float64 tensor."""
    return torch.as_tensor(net.round_sigma(sigma), dtype=torch.float64)


def _derivative(net: Any, x: Tensor, t: Tensor, class_labels: Optional[Tensor], schedule: Schedule,
                scaling: Scaling) -> Tensor:
    """dx/dt = sigma'(x - s D)/sigma + (s'/s) x, D = net(x/s, sigma): spec 2.6's d, equal to (x - D)/t when linear."""
    sigma, s = schedule.sigma(t), scaling.s(t)
    denoised = net(x / s, sigma, class_labels).to(torch.float64)
    return schedule.sigma_deriv(t) * (x - s * denoised) / sigma + scaling.s_deriv(t) / s * x


def sample(net: Any, latents: Tensor, sigmas: GridLike, class_labels: Optional[Tensor] = None,
           randn_like: RandnLike = torch.randn_like, solver: str = 'heun', schedule: str = 'linear',
           scaling: str = 'none', alpha: float = 1, S_churn: float = 0, S_min: float = 0, S_max: float = float('inf'),
           S_noise: float = 1, vp_beta_d: float = VP_BETA_D, vp_beta_min: float = VP_BETA_MIN) -> Tensor:
    """Integrate from latents * sigma_0 down the K + 1 grid `sigmas` (already rounded); returns float64 x_K."""
    check_choice('solver', solver, SOLVERS)
    if solver == 'heun' and not alpha > 0:
        raise ValueError(f'alpha must be > 0, got {alpha}')
    sched = make_schedule(schedule, vp_beta_d, vp_beta_min)
    scal = make_scaling(scaling, sched)
    sigmas = check_sigmas(sigmas, latents.device)
    num_steps = len(sigmas) - 1
    t_steps = torch.cat([sched.sigma_inv(sigmas[:-1]), torch.zeros_like(sigmas[:1])])  # t_i = sigma^{-1}(sigma_i)
    gamma_max = min(S_churn / num_steps, math.sqrt(2) - 1)

    x_next = latents.to(torch.float64) * (sched.sigma(t_steps[0]) * scal.s(t_steps[0]))
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next

        # Churn (Algorithm 2, lines 4-6): raise the noise level to sigma_hat = sigma + gamma sigma.
        sigma_cur = sched.sigma(t_cur)
        gamma = gamma_max if S_min <= sigma_cur <= S_max else 0
        t_hat = sched.sigma_inv(_round_sigma(net, sigma_cur + gamma * sigma_cur))
        sigma_hat, s_hat = sched.sigma(t_hat), scal.s(t_hat)
        # With a non-linear schedule sigma(sigma^{-1}(s)) != s in round-off, so even gamma = 0 adds noise of order
        # sqrt(eps) sigma; upstream does the same, and the noise is drawn on every step regardless (spec 2.3).
        noise = (sigma_hat ** 2 - sigma_cur ** 2).clamp(min=0).sqrt() * s_hat * S_noise * randn_like(x_cur)
        x_hat = s_hat / scal.s(t_cur) * x_cur + noise

        # Euler step, then the Heun correction at t' = t_hat + alpha h except on the last step (spec 2.6).
        h = t_next - t_hat
        d_cur = _derivative(net, x_hat, t_hat, class_labels, sched, scal)
        if solver == 'euler' or i == num_steps - 1:
            x_next = x_hat + h * d_cur
        else:
            t_prime = (1 - alpha) * t_hat + alpha * t_next  # == t_next exactly when alpha == 1
            x_prime = x_hat + alpha * h * d_cur
            d_prime = _derivative(net, x_prime, t_prime, class_labels, sched, scal)
            x_next = x_hat + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)
    return x_next


def edm_sampler(net: Any, latents: Tensor, class_labels: Optional[Tensor] = None,
                randn_like: RandnLike = torch.randn_like, num_steps: int = 18, sigma_min: float = 0.002,
                sigma_max: float = 80, rho: float = 7, S_churn: float = 0, S_min: float = 0,
                S_max: float = float('inf'), S_noise: float = 1) -> Tensor:
    """Upstream's EDM sampler (Algorithm 2): Heun on the rho grid, clamped to the net's range and rounded."""
    sigmas = make_sigmas('edm', num_steps, sigma_min, sigma_max, rho=rho, net=net)
    return sample(net, latents, sigmas, class_labels, randn_like, S_churn=S_churn, S_min=S_min, S_max=S_max,
                  S_noise=S_noise)


def ablation_sampler(net: Any, latents: Tensor, class_labels: Optional[Tensor] = None,
                     randn_like: RandnLike = torch.randn_like, num_steps: int = 18, sigma_min: Optional[float] = None,
                     sigma_max: Optional[float] = None, rho: float = 7, solver: str = 'heun',
                     discretization: str = 'edm', schedule: str = 'linear', scaling: str = 'none',
                     epsilon_s: float = 1e-3, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000,
                     alpha: float = 1, S_churn: float = 0, S_min: float = 0, S_max: float = float('inf'),
                     S_noise: float = 1) -> Tensor:
    """Upstream's generalised sampler: any discretization x schedule x scaling, VP betas refitted to the range."""
    sigma_min, sigma_max = sigma_range(discretization, sigma_min, sigma_max, net, epsilon_s)
    vp_beta_d, vp_beta_min = vp_beta(sigma_min, sigma_max, epsilon_s)
    sigmas = make_sigmas(discretization, num_steps, sigma_min, sigma_max, rho=rho, net=net, epsilon_s=epsilon_s,
                         C_1=C_1, C_2=C_2, M=M)
    return sample(net, latents, sigmas, class_labels, randn_like, solver=solver, schedule=schedule, scaling=scaling,
                  alpha=alpha, S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise, vp_beta_d=vp_beta_d,
                  vp_beta_min=vp_beta_min)
