"""One sampler for every grid: Euler/Heun/RK4/DPM-Solver++(2M) with churn, EDM's ablation schedules and scalings
(docs/edm-compat.md §3).

`sample` integrates the probability-flow ODE (plus optional churn) over an explicit noise-level grid in a working
precision `dtype` (float64 by default, as EDM's sampler; EDM2's works in float32). `edm_sampler`, `ablation_sampler` and
`edm2_sampler` keep upstream's signatures (EDM's two samplers, EDM2's with autoguidance): they only build the grid and
call `sample`. With the linear schedule and no scaling the arithmetic is that of upstream's samplers operation for
operation, so results are bit-identical given the same grid and network outputs (EDM2's guided blend is taken in the
networks' precision, float32, where upstream takes it in the working dtype: float64 runs differ by its round-off).
Networks without EDM's interface (EDM2's Precond) and guided networks are seen through edm.guidance.GuidedDenoiser.

Solvers (one step from t to t_next = t + h; the step that reaches sigma = 0 is first order for all of them):
- euler: x + h d(x, t).
- heun: EDM's second-order step (Algorithm 2), with its alpha generalisation.
- rk4: the classic four-stage Runge-Kutta step on dx/dt = d(x, t), as in the ART paper's RK4 experiments; NFE 4K - 3.
- dpmpp-2m: DPM-Solver++(2M) (Lu et al. 2022) in EDM's parameterisation, lambda = -log sigma: the data prediction D
  is extrapolated linearly in lambda from the last two steps; first order on the first step. NFE K. It is the
  exponential integrator of the linear-schedule, unscaled ODE, so it takes neither another schedule nor a scaling.
"""
import math
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from edm.grids import (VP_BETA_D, VP_BETA_MIN, Scaling, NoiseSchedule, check_choice, make_scaling, make_schedule,
                       make_sigmas, sigma_range, vp_beta)
from edm.guidance import as_denoiser

SOLVERS = ('euler', 'heun', 'rk4', 'dpmpp-2m')

Tensor = torch.Tensor
RandnLike = Callable[[Tensor], Tensor]
Denoise = Callable[[Tensor, Tensor], Tensor]   # (x, sigma) -> D(x; sigma) in the working dtype
GridLike = Union[Tensor, np.ndarray, Sequence[float]]


def nfe(num_steps: int, solver: str = 'heun') -> int:
    """Network evaluations of a K-step run: Euler and DPM-Solver++(2M) K, Heun 2K - 1, RK4 4K - 3 (the last step of
    Heun and RK4 is an Euler step)."""
    check_choice('solver', solver, SOLVERS)
    stages = {'euler': 1, 'dpmpp-2m': 1, 'heun': 2, 'rk4': 4}[solver]
    return stages * (num_steps - 1) + 1


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


def _derivative(denoise: Denoise, x: Tensor, t: Tensor, schedule: NoiseSchedule, scaling: Scaling) -> Tensor:
    """dx/dt = sigma'(x - s D)/sigma + (s'/s) x, D = D(x/s; sigma): the d of §3.4, equal to (x - D)/t when linear."""
    sigma, s = schedule.sigma(t), scaling.s(t)
    denoised = denoise(x / s, sigma)
    return schedule.sigma_deriv(t) * (x - s * denoised) / sigma + scaling.s_deriv(t) / s * x


def _rk4_step(d: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor, h: Tensor) -> Tensor:
    """x(t + h) by the classic Runge-Kutta step: k1..k4 at t, t + h/2 (twice), t + h, weights 1/6, 1/3, 1/3, 1/6."""
    k1 = d(x, t)
    k2 = d(x + h / 2 * k1, t + h / 2)
    k3 = d(x + h / 2 * k2, t + h / 2)
    k4 = d(x + h * k3, t + h)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def _dpmpp_2m_step(x: Tensor, denoised: Tensor, prev_denoised: Optional[Tensor], sigma_prev: Optional[Tensor],
                   sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """One DPM-Solver++(2M) step from sigma to sigma_next in lambda = -log sigma, h = lambda_next - lambda:
    x_next = (sigma_next / sigma) x + (1 - sigma_next / sigma) D', with D' = D on the first step and on the step to 0,
    else D' = (1 + 1/(2r)) D - 1/(2r) D_prev, r = h_prev / h (the second-order multistep correction)."""
    ratio = sigma_next / sigma                                        # exp(-h); 0 on the step to sigma = 0
    if prev_denoised is not None and sigma_next > 0:
        r = torch.log(sigma_prev / sigma) / torch.log(sigma / sigma_next)
        denoised = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * prev_denoised
    return ratio * x + (1 - ratio) * denoised


def sample(net: Any, latents: Tensor, sigmas: GridLike, class_labels: Optional[Tensor] = None,
           randn_like: RandnLike = torch.randn_like, solver: str = 'heun', schedule: str = 'linear',
           scaling: str = 'none', alpha: float = 1, S_churn: float = 0, S_min: float = 0, S_max: float = float('inf'),
           S_noise: float = 1, vp_beta_d: float = VP_BETA_D, vp_beta_min: float = VP_BETA_MIN,
           dtype: torch.dtype = torch.float64) -> Tensor:
    """Integrate from latents * sigma_0 down the K + 1 grid `sigmas` (already rounded); returns x_K in `dtype`.

    x, the network's outputs, its 0-dim sigma and the grid levels (rounded to it) are in `dtype`; step sizes are
    computed in float64 from those levels and rounded to `dtype` where they meet x, as a `dtype` subtraction would be.
    """
    check_choice('solver', solver, SOLVERS)
    if not dtype.is_floating_point:
        raise ValueError(f'dtype must be a floating-point type, got {dtype}')
    if solver == 'heun' and not alpha > 0:
        raise ValueError(f'alpha must be > 0, got {alpha}')
    if solver == 'dpmpp-2m' and (schedule != 'linear' or scaling != 'none' or S_churn != 0):
        raise ValueError('dpmpp-2m integrates the linear-schedule, unscaled ODE without churn; '
                         'use schedule=linear, scaling=none, S_churn=0')
    net = as_denoiser(net)
    sched = make_schedule(schedule, vp_beta_d, vp_beta_min)
    scal = make_scaling(scaling, sched)
    sigmas = check_sigmas(sigmas, latents.device).to(dtype).to(torch.float64)
    num_steps = len(sigmas) - 1
    t_steps = torch.cat([sched.sigma_inv(sigmas[:-1]), torch.zeros_like(sigmas[:1])])  # t_i = sigma^{-1}(sigma_i)
    gamma_max = min(S_churn / num_steps, math.sqrt(2) - 1)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        return net(x, sigma.to(dtype), class_labels).to(dtype)

    def d(x: Tensor, t: Tensor) -> Tensor:
        return _derivative(denoise, x, t, sched, scal)

    x_next = latents.to(dtype) * (sched.sigma(t_steps[0]) * scal.s(t_steps[0]))
    prev_denoised = None                                               # dpmpp-2m: D of the previous step
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next

        # Churn (Algorithm 2, lines 4-6): raise the noise level to sigma_hat = sigma + gamma sigma.
        sigma_cur = sched.sigma(t_cur)
        gamma = gamma_max if S_min <= sigma_cur <= S_max else 0
        t_hat = sched.sigma_inv(_round_sigma(net, sigma_cur + gamma * sigma_cur))
        sigma_hat, s_hat = sched.sigma(t_hat), scal.s(t_hat)
        # With a non-linear schedule sigma(sigma^{-1}(s)) != s in round-off, so even gamma = 0 adds noise of order
        # sqrt(eps) sigma; upstream does the same, and the noise is drawn on every step regardless (§2.2).
        noise = (sigma_hat ** 2 - sigma_cur ** 2).clamp(min=0).sqrt() * s_hat * S_noise * randn_like(x_cur)
        x_hat = s_hat / scal.s(t_cur) * x_cur + noise

        h = t_next - t_hat
        if solver == 'dpmpp-2m':                                       # linear schedule: t = sigma
            denoised = denoise(x_hat, sigma_hat)
            x_next = _dpmpp_2m_step(x_hat, denoised, prev_denoised, sigmas[i - 1] if i else None, sigma_hat,
                                    sigmas[i + 1])
            prev_denoised = denoised
            continue
        if solver == 'rk4' and i < num_steps - 1:
            x_next = _rk4_step(d, x_hat, t_hat, h)
            continue
        # Euler step, then the Heun correction at t' = t_hat + alpha h except on the last step (§3.4).
        d_cur = d(x_hat, t_hat)
        if solver != 'heun' or i == num_steps - 1:
            x_next = x_hat + h * d_cur
        else:
            t_prime = (1 - alpha) * t_hat + alpha * t_next  # == t_next exactly when alpha == 1
            x_prime = x_hat + alpha * h * d_cur
            d_prime = d(x_prime, t_prime)
            x_next = x_hat + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)
    return x_next


def sample_batches(net: Any, latents: Tensor, sigmas: GridLike, class_labels: Optional[Tensor] = None,
                   batch: int = 32, **kwargs: Any) -> Tensor:
    """`sample` in chunks of `batch` latents (deterministic solves only): a CPU evaluates a small network fastest on
    small batches, whose activations stay in cache (about 2x at batch 32 against 1,024). Each latent's result is that of
    one call, up to the batch-size dependence of the network's round-off."""
    if kwargs.get('S_churn', 0) or batch < 1:
        raise ValueError('sample_batches needs batch >= 1 and no churn (the noise stream would depend on batch)')
    chunks = range(0, latents.shape[0], batch)
    return torch.cat([sample(net, latents[i:i + batch], sigmas,
                             class_labels=None if class_labels is None else class_labels[i:i + batch], **kwargs)
                      for i in chunks])


def edm_sampler(net: Any, latents: Tensor, class_labels: Optional[Tensor] = None,
                randn_like: RandnLike = torch.randn_like, num_steps: int = 18, sigma_min: float = 0.002,
                sigma_max: float = 80, rho: float = 7, S_churn: float = 0, S_min: float = 0,
                S_max: float = float('inf'), S_noise: float = 1) -> Tensor:
    """Upstream's EDM sampler (Algorithm 2): Heun on the rho grid, clamped to the net's range and rounded."""
    net = as_denoiser(net)
    sigmas = make_sigmas('edm', num_steps, sigma_min, sigma_max, rho=rho, net=net)
    return sample(net, latents, sigmas, class_labels, randn_like, S_churn=S_churn, S_min=S_min, S_max=S_max,
                  S_noise=S_noise)


def edm2_sampler(net: Any, noise: Tensor, labels: Optional[Tensor] = None, gnet: Any = None, num_steps: int = 32,
                 sigma_min: float = 0.002, sigma_max: float = 80, rho: float = 7, guidance: float = 1,
                 S_churn: float = 0, S_min: float = 0, S_max: float = float('inf'), S_noise: float = 1,
                 dtype: torch.dtype = torch.float32, randn_like: RandnLike = torch.randn_like) -> Tensor:
    """Upstream EDM2's sampler (its signature and defaults): Heun on the rho grid in `dtype`, autoguided by gnet
    with weight `guidance` (edm.guidance). The grid is EDM's float64 grid rounded to `dtype` (upstream evaluates the
    formula in `dtype`: a few ulp apart). Churn noise is drawn on every step, as in EDM's sampler; upstream EDM2 draws
    it only on the steps it churns, so with S_churn > 0 and a window [S_min, S_max] that skips steps, the per-seed
    noise differs."""
    net = as_denoiser(net, gnet, guidance)
    sigmas = make_sigmas('edm', num_steps, sigma_min, sigma_max, rho=rho, net=net)
    return sample(net, noise, sigmas, labels, randn_like, S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise,
                  dtype=dtype)


def ablation_sampler(net: Any, latents: Tensor, class_labels: Optional[Tensor] = None,
                     randn_like: RandnLike = torch.randn_like, num_steps: int = 18, sigma_min: Optional[float] = None,
                     sigma_max: Optional[float] = None, rho: float = 7, solver: str = 'heun',
                     discretization: str = 'edm', schedule: str = 'linear', scaling: str = 'none',
                     epsilon_s: float = 1e-3, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000,
                     alpha: float = 1, S_churn: float = 0, S_min: float = 0, S_max: float = float('inf'),
                     S_noise: float = 1) -> Tensor:
    """Upstream's generalised sampler: any discretization x schedule x scaling, VP betas refitted to the range."""
    net = as_denoiser(net)
    sigma_min, sigma_max = sigma_range(discretization, sigma_min, sigma_max, net, epsilon_s)
    vp_beta_d, vp_beta_min = vp_beta(sigma_min, sigma_max, epsilon_s)
    sigmas = make_sigmas(discretization, num_steps, sigma_min, sigma_max, rho=rho, net=net, epsilon_s=epsilon_s,
                         C_1=C_1, C_2=C_2, M=M)
    return sample(net, latents, sigmas, class_labels, randn_like, solver=solver, schedule=schedule, scaling=scaling,
                  alpha=alpha, S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise, vp_beta_d=vp_beta_d,
                  vp_beta_min=vp_beta_min)


def upstream_sampler(solver: Optional[str], discretization: Optional[str], schedule: Optional[str],
                     scaling: Optional[str], **sampler_kwargs: Any) -> Callable[..., Tensor]:
    """The sampler upstream generate.py picks: ablation_sampler if any ablation option is given, else edm_sampler;
    returns f(net, latents, class_labels, randn_like). Options given as None take the sampler's defaults."""
    sampler_kwargs = {key: value for key, value in sampler_kwargs.items() if value is not None}
    ablation = dict(solver=solver, discretization=discretization, schedule=schedule, scaling=scaling)
    ablation = {key: value for key, value in ablation.items() if value is not None}
    if ablation:
        return lambda net, latents, class_labels, randn_like: ablation_sampler(
            net, latents, class_labels, randn_like=randn_like, **ablation, **sampler_kwargs)
    return lambda net, latents, class_labels, randn_like: edm_sampler(
        net, latents, class_labels, randn_like=randn_like, **sampler_kwargs)
