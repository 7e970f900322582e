"""One sampler for every grid: Euler/Heun/RK4/DPM-Solver++(2M) with churn, EDM's ablation schedules and scalings
(docs/edm-compat.md §3).

`sample` integrates the probability-flow ODE (plus optional churn) over an explicit noise-level grid in a working
precision `dtype` (float64 by default, as EDM's sampler; EDM2's works in float32). `edm_sampler`, `ablation_sampler` and
`edm2_sampler` keep upstream's signatures (EDM's two samplers, EDM2's with autoguidance): they only build the grid and
call `sample`. With the linear schedule and no scaling the arithmetic is that of upstream's samplers operation for
operation, so results are bit-identical given the same grid and network outputs (EDM2's guided blend is taken in the
networks' precision, float32, where upstream takes it in the working dtype: float64 runs differ by its round-off).
Networks without EDM's interface (EDM2's Precond) and guided networks are seen through edm.denoiser.Denoiser.

Solvers: one step function each, in SOLVER_STEPS by name, all with one signature (euler_step); `sample` and the
schedule methods (art.direct, art.gits, art.closed_form, art.rl_progress) take their steps from there. One step from t
to t_next = t + h; the step that reaches sigma = 0 is first order for all of them:
- euler: x + h d(x, t).
- heun: EDM's second-order step (Algorithm 2), with its alpha generalisation.
- rk4: the classic four-stage Runge-Kutta step on dx/dt = d(x, t), as in the ART paper's RK4 experiments; NFE 4K - 3.
- dpmpp-2m: DPM-Solver++(2M) (Lu et al. 2022) in EDM's parameterisation, lambda = -log sigma: the data prediction D
  (D = x - t d) is extrapolated linearly in lambda from the last two steps; first order on the first step. NFE K. It is
  the exponential integrator of the linear-schedule, unscaled ODE, so it takes neither another schedule nor a scaling.
"""
import dataclasses
import math
from typing import Any, Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch

from edm.grids import (VP_BETA_D, VP_BETA_MIN, Scaling, NoiseSchedule, check_choice, make_scaling, make_schedule,
                       make_sigmas, sigma_range, vp_beta)
from edm.denoiser import as_denoiser

SOLVERS = ('euler', 'heun', 'rk4', 'dpmpp-2m')

Tensor = torch.Tensor
RandnLike = Callable[[Tensor], Tensor]
Denoise = Callable[[Tensor, Tensor], Tensor]   # (x, sigma) -> D(x; sigma) in the working dtype
GridLike = Union[Tensor, np.ndarray, Sequence[float]]
Derivative = Callable[[Tensor, Tensor], Tensor]   # (x, t) -> dx/dt
Step = Callable[..., Tensor]                       # (d, x, t, t_next, d_cur, state) -> x(t_next): SOLVER_STEPS


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


def _reaches_zero(t_next: Any) -> bool:
    """Whether a step ends at sigma = 0 (t = 0 on every schedule), where every solver takes an Euler step."""
    return bool((torch.as_tensor(t_next) == 0).all())


@dataclasses.dataclass
class SolveState:
    """What a step needs besides its point, one per solve: Heun's alpha, and the memory a multistep solver keeps
    between steps (DPM-Solver++(2M): t and D of the previous step)."""
    alpha: float = 1
    t_prev: Optional[Tensor] = None
    denoised_prev: Optional[Tensor] = None


def euler_step(d: Derivative, x: Tensor, t: Tensor, t_next: Tensor, d_cur: Tensor,
               state: Optional[SolveState] = None) -> Tensor:
    """x(t_next) by one Euler step x + h d_cur, h = t_next - t.

    Every solver's step has this signature: d(x, t) is dx/dt; d_cur = d(x, t), the first stage, is evaluated by the
    caller (who may want it, or have it from elsewhere); t_next may be levels broadcast against x (several steps from
    one x at once), all positive or all 0."""
    return x + (t_next - t) * d_cur


def heun_step(d: Derivative, x: Tensor, t: Tensor, t_next: Tensor, d_cur: Tensor,
              state: Optional[SolveState] = None) -> Tensor:
    """EDM's second-order step (Algorithm 2) with its alpha generalisation: the slope at x + alpha h d_cur, t + alpha h
    and d_cur averaged with weights 1/(2 alpha), 1 - 1/(2 alpha); an Euler step to sigma = 0."""
    h = t_next - t
    if _reaches_zero(t_next):
        return x + h * d_cur
    alpha = 1 if state is None else state.alpha
    t_prime = (1 - alpha) * t + alpha * t_next                           # == t_next exactly when alpha == 1
    d_prime = d(x + alpha * h * d_cur, t_prime)
    return x + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)


def rk4_step(d: Derivative, x: Tensor, t: Tensor, t_next: Tensor, d_cur: Tensor,
             state: Optional[SolveState] = None) -> Tensor:
    """The classic Runge-Kutta step: k1 = d_cur, k2, k3 at t + h/2, k4 at t_next, weights 1/6, 1/3, 1/3, 1/6; an Euler
    step to sigma = 0."""
    h = t_next - t
    if _reaches_zero(t_next):
        return x + h * d_cur
    k2 = d(x + h / 2 * d_cur, t + h / 2)
    k3 = d(x + h / 2 * k2, t + h / 2)
    k4 = d(x + h * k3, t_next)
    return x + h / 6 * (d_cur + 2 * k2 + 2 * k3 + k4)


def dpmpp_2m_step(d: Derivative, x: Tensor, t: Tensor, t_next: Tensor, d_cur: Tensor,
                  state: Optional[SolveState] = None) -> Tensor:
    """One DPM-Solver++(2M) step of the linear-schedule, unscaled ODE (t = sigma) in lambda = -log sigma: with
    D = x - t d_cur, x_next = (t_next / t) x + (1 - t_next / t) D', D' = D on the first step and on the step to 0,
    else D' = (1 + 1/(2r)) D - 1/(2r) D_prev, r = h_prev / h (the second-order multistep correction). `state`
    (required) carries D_prev and t_prev from step to step."""
    if state is None:
        raise ValueError('dpmpp-2m is a multistep solver: pass one SolveState through all the steps of a solve')
    denoised = x - t * d_cur
    corrected = denoised
    if state.denoised_prev is not None and not _reaches_zero(t_next):
        r = torch.log(state.t_prev / t) / torch.log(t / t_next)
        corrected = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * state.denoised_prev
    state.t_prev, state.denoised_prev = t, denoised
    ratio = t_next / t                                                   # exp(-h); 0 on the step to sigma = 0
    return ratio * x + (1 - ratio) * corrected


# One step of each solver by name; every one has euler_step's signature.
SOLVER_STEPS: Dict[str, Step] = {'euler': euler_step, 'heun': heun_step, 'rk4': rk4_step, 'dpmpp-2m': dpmpp_2m_step}


def sample(net: Any, latents: Tensor, sigmas: GridLike, class_labels: Optional[Tensor] = None,
           randn_like: RandnLike = torch.randn_like, solver: str = 'heun', schedule: str = 'linear',
           scaling: str = 'none', alpha: float = 1, S_churn: float = 0, S_min: float = 0, S_max: float = float('inf'),
           S_noise: float = 1, vp_beta_d: float = VP_BETA_D, vp_beta_min: float = VP_BETA_MIN,
           dtype: torch.dtype = torch.float64, noise_every_step: bool = True) -> Tensor:
    """Integrate from latents * sigma_0 down the K + 1 grid `sigmas` (already rounded); returns x_K in `dtype`.

    x, the network's outputs, its 0-dim sigma and the grid levels (rounded to it) are in `dtype`; step sizes are
    computed in float64 from those levels and rounded to `dtype` where they meet x, as a `dtype` subtraction would be.
    Churn noise is drawn from `randn_like` on every step, scaled to 0 where gamma = 0, as EDM's samplers do
    (noise_every_step), or only on the steps with gamma > 0, as EDM2's sampler does.
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
    step, state = SOLVER_STEPS[solver], SolveState(alpha)
    for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
        x_cur = x_next

        # Churn (Algorithm 2, lines 4-6): raise the noise level to sigma_hat = sigma + gamma sigma.
        sigma_cur = sched.sigma(t_cur)
        gamma = gamma_max if S_min <= sigma_cur <= S_max else 0
        t_hat = sched.sigma_inv(_round_sigma(net, sigma_cur + gamma * sigma_cur))
        sigma_hat, s_hat = sched.sigma(t_hat), scal.s(t_hat)
        # With a non-linear schedule sigma(sigma^{-1}(s)) != s in round-off, so even gamma = 0 adds noise of order
        # sqrt(eps) sigma; upstream EDM does the same, and draws the noise on every step regardless (§2.2).
        x_hat = s_hat / scal.s(t_cur) * x_cur
        if noise_every_step or gamma > 0:
            x_hat = x_hat + (sigma_hat ** 2 - sigma_cur ** 2).clamp(min=0).sqrt() * s_hat * S_noise * randn_like(x_cur)

        x_next = step(d, x_hat, t_hat, t_next, d(x_hat, t_hat), state)
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
    formula in `dtype`: a few ulp apart). As upstream EDM2, it draws churn noise from `randn_like` only on the steps it
    churns (gamma > 0): none at all when S_churn = 0, so the caller's random stream is left as upstream leaves it."""
    net = as_denoiser(net, gnet, guidance)
    sigmas = make_sigmas('edm', num_steps, sigma_min, sigma_max, rho=rho, net=net)
    return sample(net, noise, sigmas, labels, randn_like, S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise,
                  dtype=dtype, noise_every_step=False)


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
