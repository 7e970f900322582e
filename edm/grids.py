"""Noise-level grids and the sigma(t) / s(t) schedules of EDM's samplers (docs/edm-compat.md §3).

A grid is a descending float64 numpy array sigma_0 > ... > sigma_{K-1} > sigma_K = 0 of K + 1 values (K = num_steps);
the network is evaluated only at the first K levels. Levels are computed in float64 torch, as upstream does, so that
the EDM grid is bit-identical to upstream's.
"""
import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import torch

DISCRETIZATIONS = ('edm', 'vp', 've', 'iddpm', 'uniform', 'logsnr')
SCHEDULES = ('linear', 'vp', 've')
SCALINGS = ('none', 'vp')

EDM_SIGMA_MIN = 0.002   # EDM's default noise-level range (§3.1)
EDM_SIGMA_MAX = 80.0
RHO = 7.0               # EDM's grid exponent: levels uniform in sigma^(1/RHO); also the clock variable of art/

VP_BETA_D = 19.9  # VP defaults of the ablation sampler (19.1 before upstream commit 62072d2, issue #5)
VP_BETA_MIN = 0.1

Tensor = torch.Tensor


def _f64(x: Any) -> Tensor:
    """x as a float64 tensor (no copy when it already is one)."""
    return torch.as_tensor(x, dtype=torch.float64)


MAX_STEPS = 10_000      # the most steps K anything takes: beyond it a grid is only memory and time (EDM uses 18-256)


def check_num_steps(num_steps: Any) -> None:
    """Raise a ValueError unless num_steps (K) is an integer in [1, MAX_STEPS]."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= MAX_STEPS:
        raise ValueError(f'num_steps must be an integer in [1, {MAX_STEPS}], got {num_steps!r}')


def check_choice(kind: str, name: str, choices: tuple) -> None:
    """Raise a ValueError naming the valid choices when name is not one of them."""
    if name not in choices:
        raise ValueError(f'unknown {kind} {name!r}; valid choices: {", ".join(choices)}')


# ---------------------------------------------------------------------------------------------------------------------
# sigma(t), sigma'(t), sigma^{-1}(sigma) and the signal scaling s(t), s'(t) (§3.2).

def vp_sigma(t: Any, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN) -> Tensor:
    """VP noise level sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
    t = _f64(t)
    return (math.e ** (0.5 * beta_d * t ** 2 + beta_min * t) - 1).sqrt()  # e**x, not exp(x): bit-exact with upstream


def vp_sigma_deriv(t: Any, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN) -> Tensor:
    """VP sigma'(t) = (beta_min + beta_d t)(sigma(t) + 1/sigma(t)) / 2."""
    t = _f64(t)
    sigma = vp_sigma(t, beta_d, beta_min)
    return 0.5 * (beta_min + beta_d * t) * (sigma + 1 / sigma)


def vp_sigma_inv(sigma: Any, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN) -> Tensor:
    """VP inverse t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(sigma^2 + 1)) - beta_min) / beta_d."""
    sigma = _f64(sigma)
    return ((beta_min ** 2 + 2 * beta_d * torch.log(sigma ** 2 + 1)).sqrt() - beta_min) / beta_d


def ve_sigma(t: Any) -> Tensor:
    """VE noise level sigma(t) = sqrt(t)."""
    return _f64(t).sqrt()


def ve_sigma_deriv(t: Any) -> Tensor:
    """VE sigma'(t) = 1/(2 sqrt(t))."""
    return 0.5 / _f64(t).sqrt()


def ve_sigma_inv(sigma: Any) -> Tensor:
    """VE inverse t(sigma) = sigma^2."""
    return _f64(sigma) ** 2


def vp_beta(sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3) -> tuple[float, float]:
    """(beta_d, beta_min) of the VP schedule with sigma(epsilon_s) = sigma_min, sigma(1) = sigma_max (§3.3)."""
    log_min, log_max = math.log(float(sigma_min) ** 2 + 1), math.log(float(sigma_max) ** 2 + 1)
    beta_d = 2 * (log_min / epsilon_s - log_max) / (epsilon_s - 1)
    return beta_d, log_max - 0.5 * beta_d


class NoiseSchedule(NamedTuple):
    """A noise schedule sigma(t) with its derivative and inverse (float64 tensors in and out)."""
    sigma: Callable[[Tensor], Tensor]
    sigma_deriv: Callable[[Tensor], Tensor]
    sigma_inv: Callable[[Tensor], Tensor]


class Scaling(NamedTuple):
    """A signal scaling s(t) with its derivative."""
    s: Callable[[Tensor], Tensor]
    s_deriv: Callable[[Tensor], Tensor]


def make_schedule(name: str, vp_beta_d: float = VP_BETA_D, vp_beta_min: float = VP_BETA_MIN) -> NoiseSchedule:
    """The schedule 'linear' (sigma = t), 've' (sigma = sqrt(t)) or 'vp' (with the given betas)."""
    check_choice('schedule', name, SCHEDULES)
    if name == 'vp':
        return NoiseSchedule(lambda t: vp_sigma(t, vp_beta_d, vp_beta_min),
                        lambda t: vp_sigma_deriv(t, vp_beta_d, vp_beta_min),
                        lambda sigma: vp_sigma_inv(sigma, vp_beta_d, vp_beta_min))
    if name == 've':
        return NoiseSchedule(ve_sigma, ve_sigma_deriv, ve_sigma_inv)
    return NoiseSchedule(_f64, lambda t: torch.ones_like(_f64(t)), _f64)


def make_scaling(name: str, schedule: NoiseSchedule) -> Scaling:
    """The scaling 'none' (s = 1) or 'vp' (s = 1/sqrt(1 + sigma^2), s' = -sigma sigma' s^3) of a schedule."""
    check_choice('scaling', name, SCALINGS)
    if name == 'vp':
        def s(t: Tensor) -> Tensor:
            return 1 / (1 + schedule.sigma(t) ** 2).sqrt()
        return Scaling(s, lambda t: -schedule.sigma(t) * schedule.sigma_deriv(t) * s(t) ** 3)
    return Scaling(lambda t: torch.ones_like(_f64(t)), lambda t: torch.zeros_like(_f64(t)))


# ---------------------------------------------------------------------------------------------------------------------
# Grids. Each returns K levels then 0, or (edm/uniform with sigma_min == 0) K + 1 levels reaching 0.

def _check_range(num_steps: int, sigma_min: float, sigma_max: float, positive: bool) -> None:
    """Validate num_steps >= 1 and 0 <= sigma_min < sigma_max < inf (sigma_min > 0 when positive)."""
    check_num_steps(num_steps)
    if not (0 <= sigma_min < sigma_max < math.inf):
        raise ValueError(f'need 0 <= sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}')
    if positive and sigma_min <= 0:
        raise ValueError(f'this discretization needs sigma_min > 0, got {sigma_min}')


def _fractions(num: int) -> Tensor:
    """i/(num-1) for i = 0..num-1 in float64 (just [0] when num == 1)."""
    return torch.arange(num, dtype=torch.float64) / max(num - 1, 1)


def _levels(num_steps: int, sigma_min: float, fn: Callable[[Tensor], Tensor]) -> np.ndarray:
    """fn(i/(K-1)) for i < K then 0 when sigma_min > 0; fn(i/K) for i <= K (which reaches 0) when sigma_min == 0."""
    if sigma_min == 0:
        return fn(_fractions(num_steps + 1)).numpy()
    return np.append(fn(_fractions(num_steps)).numpy(), 0.0)


def edm_sigmas(num_steps: int, sigma_min: float = EDM_SIGMA_MIN, sigma_max: float = EDM_SIGMA_MAX,
               rho: float = RHO) -> np.ndarray:
    """EDM's rho grid (sigma_max^(1/rho) + f (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho (§3.1, step 2)."""
    _check_range(num_steps, sigma_min, sigma_max, positive=False)
    return _levels(num_steps, sigma_min, lambda f: (
        sigma_max ** (1 / rho) + f * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho)


def uniform_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80) -> np.ndarray:
    """Equally spaced noise levels from sigma_max to sigma_min (the paper's Uniform grid when sigma_min == 0)."""
    _check_range(num_steps, sigma_min, sigma_max, positive=False)
    return _levels(num_steps, sigma_min, lambda f: sigma_max + f * (sigma_min - sigma_max))


def logsnr_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80) -> np.ndarray:
    """Uniform in log-SNR, i.e. geometric in sigma: sigma_max (sigma_min/sigma_max)^f (the DPM-Solver grid, §3.3)."""
    _check_range(num_steps, sigma_min, sigma_max, positive=True)
    return _levels(num_steps, sigma_min, lambda f: sigma_max * (sigma_min / sigma_max) ** f)


def ve_sigmas(num_steps: int, sigma_min: float = 0.02, sigma_max: float = 100) -> np.ndarray:
    """VE grid sqrt(sigma_max^2 (sigma_min^2/sigma_max^2)^f) (§3.3)."""
    _check_range(num_steps, sigma_min, sigma_max, positive=True)
    return _levels(num_steps, sigma_min, lambda f: (
        sigma_max ** 2 * (sigma_min ** 2 / sigma_max ** 2) ** f).sqrt())


def vp_default_range(epsilon_s: float = 1e-3) -> tuple[float, float]:
    """Default VP range (sigma(epsilon_s), sigma(1)) with beta_d = 19.9, beta_min = 0.1 (about 0.0104860, 152.167)."""
    return float(vp_sigma(epsilon_s)), float(vp_sigma(1.0))


def vp_sigmas(num_steps: int, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None,
              epsilon_s: float = 1e-3) -> np.ndarray:
    """VP grid sigma(1 + f (epsilon_s - 1)) with the betas refitted to [sigma_min, sigma_max] (§3.3)."""
    default_min, default_max = vp_default_range(epsilon_s)
    sigma_min = default_min if sigma_min is None else sigma_min
    sigma_max = default_max if sigma_max is None else sigma_max
    _check_range(num_steps, sigma_min, sigma_max, positive=True)
    beta_d, beta_min = vp_beta(sigma_min, sigma_max, epsilon_s)
    return _levels(num_steps, sigma_min, lambda f: vp_sigma(1 + f * (epsilon_s - 1), beta_d, beta_min))


@functools.lru_cache(maxsize=8)
def _iddpm_levels(C_1: float, C_2: float, M: int) -> torch.Tensor:
    """The iDDPM levels, computed once per (C_1, C_2, M)."""
    def alpha_bar(j: int) -> torch.Tensor:  # float32 scalar, as upstream (bit-exact grids, measured on the fixtures)
        return torch.sin(0.5 * math.pi * torch.tensor(j, dtype=torch.float32) / M / (C_2 + 1)) ** 2
    u = torch.zeros(M + 1, dtype=torch.float64)
    for j in range(M, 0, -1):  # u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar(j-1)/alpha_bar(j), C_1) - 1)
        u[j - 1] = ((u[j] ** 2 + 1) / (alpha_bar(j - 1) / alpha_bar(j)).clip(min=C_1) - 1).sqrt()
    return u


def iddpm_levels(C_1: float = 0.001, C_2: float = 0.008, M: int = 1000) -> np.ndarray:
    """The iDDPM levels u_0 > ... > u_M = 0 of the recursion in §3.3 (float64)."""
    return _iddpm_levels(C_1, C_2, M).numpy().copy()


def iddpm_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 81, C_1: float = 0.001,
                 C_2: float = 0.008, M: int = 1000) -> np.ndarray:
    """iDDPM grid: K of the levels u_j in [sigma_min, sigma_max], evenly spaced in index, then 0 (§3.3)."""
    _check_range(num_steps, sigma_min, sigma_max, positive=True)
    u = iddpm_levels(C_1, C_2, M)
    kept = u[(u >= sigma_min) & (u <= sigma_max)]
    if len(kept) == 0:
        raise ValueError(f'no iDDPM level lies in [{sigma_min}, {sigma_max}]')
    step = torch.arange(num_steps, dtype=torch.float64)
    index = ((len(kept) - 1) / max(num_steps - 1, 1) * step).round().to(torch.int64)  # round half to even
    return np.append(kept[index.numpy()], 0.0)


def horizon(net: Any) -> float:
    """T, the noise level a schedule starts from: min(EDM_SIGMA_MAX, net.sigma_max) (EDMPrecond's sigma_max is inf)."""
    return min(EDM_SIGMA_MAX, float(net.sigma_max))


def default_sigma_range(disc: str, epsilon_s: float = 1e-3) -> tuple[float, float]:
    """The (sigma_min, sigma_max) a discretization uses when none is given (§3.3)."""
    check_choice('discretization', disc, DISCRETIZATIONS)
    ranges = {'vp': vp_default_range(epsilon_s), 've': (0.02, 100.0), 'iddpm': (0.002, 81.0)}
    return ranges.get(disc, (EDM_SIGMA_MIN, EDM_SIGMA_MAX))


def sigma_range(disc: str, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None, net: Any = None,
                epsilon_s: float = 1e-3) -> tuple[float, float]:
    """The range a grid spans: given values or the disc's defaults, clamped to [net.sigma_min, net.sigma_max]."""
    default_min, default_max = default_sigma_range(disc, epsilon_s)
    sigma_min = default_min if sigma_min is None else sigma_min
    sigma_max = default_max if sigma_max is None else sigma_max
    if net is not None:
        sigma_min, sigma_max = max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max)
    return float(sigma_min), float(sigma_max)


def make_sigmas(disc: str, num_steps: int, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None,
                rho: float = RHO, net: Any = None, epsilon_s: float = 1e-3, C_1: float = 0.001, C_2: float = 0.008,
                M: int = 1000) -> np.ndarray:
    """The K + 1 grid of a named discretization, clamped to the net's range and passed through net.round_sigma."""
    sigma_min, sigma_max = sigma_range(disc, sigma_min, sigma_max, net, epsilon_s)
    sigmas = {
        'edm': lambda: edm_sigmas(num_steps, sigma_min, sigma_max, rho),
        'vp': lambda: vp_sigmas(num_steps, sigma_min, sigma_max, epsilon_s),
        've': lambda: ve_sigmas(num_steps, sigma_min, sigma_max),
        'iddpm': lambda: iddpm_sigmas(num_steps, sigma_min, sigma_max, C_1, C_2, M),
        'uniform': lambda: uniform_sigmas(num_steps, sigma_min, sigma_max),
        'logsnr': lambda: logsnr_sigmas(num_steps, sigma_min, sigma_max),
    }[disc]()
    if net is not None:  # upstream rounds the float64 levels, then appends 0
        sigmas[:-1] = _f64(net.round_sigma(torch.from_numpy(sigmas[:-1]))).cpu().numpy()
    return sigmas
