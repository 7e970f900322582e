"""Exact-denoiser models behind the EDM network interface, and the exact references they allow.

Specs (``load_analytic``):

- ``analytic:gauss1d``: the paper's 1-D example [paper v1 §5.1]: data N(0,1), T = sigma_max = 3, sigma_min = 0,
  shape 1x1x1.
- ``analytic:gauss:std=S,shape=CxHxW[,sigma_max=T]``: isotropic Gaussian data N(0, S^2 I); sigma_max 80 by default,
  sigma_min 0. H must equal W (networks are square: ``img_resolution``).
- ``analytic:gmm:FILE.npz``: isotropic Gaussian mixture sum_j w_j N(mu_j, s_j^2 I); sigma_max 80, sigma_min 0. The
  npz holds ``mu`` [k,C,H,W] or [k,d], ``std`` [k], ``weight`` [k] (normalised on load). For ``mu`` [k,d] the image
  shape is 1 x sqrt(d) x sqrt(d) when d is a perfect square, else d x 1 x 1 (d channels at resolution 1), so that
  ``[B, img_channels, img_resolution, img_resolution]`` latents always fit.

All models compute in float64, return D in the dtype of x, have ``label_dim = 0`` and an identity ``round_sigma``.
The PF-ODE in EDM form is dx/dsigma = f(x, sigma) = (x - D(x; sigma))/sigma.
"""

import math
import re
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import scipy.integrate
import torch

from dnnlib.util import UserError
from edm import grids
from edm.sampler import sample

SigmaLike = Union[float, torch.Tensor]
GAUSS1D_T = 3.0      # T = sigma_max of the paper's 1-D example.
DEFAULT_SIGMA_MAX = grids.EDM_SIGMA_MAX


class AnalyticSpecError(UserError, ValueError):
    """A malformed or unreadable ``analytic:...`` spec; the message is one line."""


def _sigma_per_sample(sigma: SigmaLike, batch: int, device: torch.device) -> torch.Tensor:
    """Noise level as float64 [B] from a float, a 0-dim tensor, [B] or [B,1,1,1] (differentiable, no copies)."""
    if not isinstance(sigma, torch.Tensor):
        sigma = torch.tensor(float(sigma), dtype=torch.float64, device=device)
    sigma = sigma.to(device=device, dtype=torch.float64).reshape(-1)
    if sigma.numel() == 1:
        return sigma.expand(batch)
    if sigma.numel() != batch:
        raise ValueError(f'sigma has {sigma.numel()} elements for a batch of {batch}')
    return sigma


class AnalyticModel(torch.nn.Module):
    """Base class: the network interface (attributes and round_sigma) for an exact denoiser."""

    def __init__(self, shape: Sequence[int], sigma_max: float, sigma_min: float = 0.0):
        super().__init__()
        channels, height, width = (int(n) for n in shape)
        if height != width:
            raise AnalyticSpecError(f'image shape {channels}x{height}x{width} is not square (H must equal W)')
        self.img_shape = (channels, height, width)
        self.img_channels = channels
        self.img_resolution = height
        self.label_dim = 0
        self.sigma_min = float(sigma_min)
        self.baseline_sigma_min = None   # sigma_min of the named baseline grids; None: EDM's default range
        self.sigma_max = float(sigma_max)

    def round_sigma(self, sigma: SigmaLike) -> torch.Tensor:
        """Identity (continuous noise levels), returned as a tensor."""
        return torch.as_tensor(sigma)


class GaussianModel(AnalyticModel):
    """Data N(0, S^2 I): D(x; sigma) = S^2 x / (S^2 + sigma^2)."""

    def __init__(self, std: float, shape: Sequence[int], sigma_max: float = DEFAULT_SIGMA_MAX):
        super().__init__(shape, sigma_max)
        if not (math.isfinite(std) and std > 0):
            raise AnalyticSpecError(f'std must be a positive number, got {std}')
        self.std = float(std)

    def forward(self, x: torch.Tensor, sigma: SigmaLike, class_labels: Optional[torch.Tensor] = None,
                **model_kwargs) -> torch.Tensor:
        """Exact posterior mean E[x_data | x] at noise level sigma."""
        x64 = x.to(torch.float64)
        s = _sigma_per_sample(sigma, x.shape[0], x.device).reshape(-1, 1, 1, 1)
        c2 = self.std ** 2
        return (c2 / (c2 + s * s) * x64).to(x.dtype)


class GaussianMixtureModel(AnalyticModel):
    """Data sum_j w_j N(mu_j, s_j^2 I): exact posterior-mean denoiser with logsumexp responsibilities."""

    def __init__(self, mu: np.ndarray, std: np.ndarray, weight: np.ndarray, shape: Sequence[int],
                 sigma_max: float = DEFAULT_SIGMA_MAX):
        super().__init__(shape, sigma_max)
        k = mu.shape[0]
        self.register_buffer('mu', torch.as_tensor(np.asarray(mu, dtype=np.float64).reshape(k, -1)))
        self.register_buffer('var', torch.as_tensor(np.asarray(std, dtype=np.float64) ** 2))
        w = np.asarray(weight, dtype=np.float64)
        with np.errstate(divide='ignore'):
            self.register_buffer('log_weight', torch.as_tensor(np.log(w / w.sum())))

    def forward(self, x: torch.Tensor, sigma: SigmaLike, class_labels: Optional[torch.Tensor] = None,
                **model_kwargs) -> torch.Tensor:
        """Exact posterior mean: sum_j r_j(x) [mu_j + s_j^2/(s_j^2+sigma^2) (x - mu_j)]."""
        batch, d = x.shape[0], self.mu.shape[1]
        x64 = x.to(torch.float64).reshape(batch, d)
        s2 = _sigma_per_sample(sigma, batch, x.device)[:, None] ** 2                      # [B,1]
        total = self.var[None, :] + s2                                                       # [B,k]
        sq = (x64 * x64).sum(1, keepdim=True) - 2 * x64 @ self.mu.T + (self.mu * self.mu).sum(1)[None, :]
        logits = self.log_weight[None, :] - 0.5 * d * torch.log(total) - 0.5 * sq / total
        r = torch.exp(logits - torch.logsumexp(logits, dim=1, keepdim=True))                 # responsibilities
        D = (r * s2 / total) @ self.mu + (r * self.var[None, :] / total).sum(1, keepdim=True) * x64
        return D.reshape(x.shape).to(x.dtype)

    def sample_data(self, num: int, generator: torch.Generator) -> torch.Tensor:
        """num exact draws from the data distribution (float64, [num, C, H, W]): a component by weight, then its
        Gaussian."""
        j = torch.multinomial(self.log_weight.exp().cpu(), num, replacement=True, generator=generator)
        noise = torch.randn(num, self.mu.shape[1], generator=generator, dtype=torch.float64)
        x = self.mu.cpu()[j] + self.var.cpu()[j].sqrt()[:, None] * noise
        return x.reshape(num, self.img_channels, self.img_resolution, self.img_resolution)


def _parse_shape(text: str, spec: str) -> tuple:
    """'CxHxW' -> (C, H, W)."""
    m = re.fullmatch(r'(\d+)x(\d+)x(\d+)', text)
    if not m or min(int(g) for g in m.groups()) < 1:
        raise AnalyticSpecError(f'{spec!r}: shape must be CxHxW with positive integers, got {text!r}')
    return tuple(int(g) for g in m.groups())


def _parse_float(text: str, key: str, spec: str) -> float:
    """A positive finite float option."""
    try:
        value = float(text)
    except ValueError:
        value = float('nan')
    if not (math.isfinite(value) and value > 0):
        raise AnalyticSpecError(f'{spec!r}: {key} must be a positive number, got {text!r}')
    return value


def _gauss_from_options(options: str, spec: str) -> GaussianModel:
    """Parse 'std=S,shape=CxHxW[,sigma_max=T]'."""
    values = {}
    for item in options.split(','):
        key, sep, value = item.partition('=')
        if not sep or key not in ('std', 'shape', 'sigma_max') or key in values:
            raise AnalyticSpecError(f'{spec!r}: expected analytic:gauss:std=S,shape=CxHxW[,sigma_max=T], '
                                    f'bad item {item!r}')
        values[key] = value
    missing = [k for k in ('std', 'shape') if k not in values]
    if missing:
        raise AnalyticSpecError(f'{spec!r}: missing {" and ".join(missing)} '
                                f'(expected analytic:gauss:std=S,shape=CxHxW[,sigma_max=T])')
    sigma_max = _parse_float(values['sigma_max'], 'sigma_max', spec) if 'sigma_max' in values else DEFAULT_SIGMA_MAX
    return GaussianModel(_parse_float(values['std'], 'std', spec), _parse_shape(values['shape'], spec), sigma_max)


def gmm_shape(mu_shape: Sequence[int]) -> tuple:
    """Image shape of mixture means: [k,C,H,W] -> (C,H,W); [k,d] -> (1,√d,√d) if d is square, else (d,1,1)."""
    if len(mu_shape) == 4:
        return tuple(int(n) for n in mu_shape[1:])
    d = int(mu_shape[1])
    side = math.isqrt(d)
    return (1, side, side) if side * side == d else (d, 1, 1)


def load_gmm(path: Union[str, Path]) -> GaussianMixtureModel:
    """Read a mixture npz (keys mu, std, weight) and validate it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key], dtype=np.float64) for key in ('mu', 'std', 'weight') if key in data}
    except (EOFError, zipfile.BadZipFile) as exc:
        raise AnalyticSpecError(f'{path}: the mixture npz is truncated or corrupt ({exc}); write it again with '
                                f'numpy.savez (mu, std, weight)') from None
    except (OSError, ValueError) as exc:
        raise AnalyticSpecError(f'{path}: cannot read mixture npz ({exc})') from None
    missing = [key for key in ('mu', 'std', 'weight') if key not in arrays]
    if missing:
        raise AnalyticSpecError(f'{path}: mixture npz lacks key(s) {", ".join(missing)} (needs mu, std, weight)')
    mu, std, weight = arrays['mu'], arrays['std'], arrays['weight']
    if mu.ndim not in (2, 4) or mu.shape[0] < 1:
        raise AnalyticSpecError(f'{path}: mu must have shape [k,C,H,W] or [k,d], got {list(mu.shape)}')
    k = mu.shape[0]
    if std.shape != (k,) or weight.shape != (k,):
        raise AnalyticSpecError(f'{path}: std and weight must have shape [{k}], got {list(std.shape)} and '
                                f'{list(weight.shape)}')
    if not (np.isfinite(mu).all() and np.isfinite(std).all() and np.isfinite(weight).all()):
        raise AnalyticSpecError(f'{path}: mu, std and weight must be finite')
    if (std <= 0).any() or (weight < 0).any() or weight.sum() <= 0:
        raise AnalyticSpecError(f'{path}: std must be > 0 and weight >= 0 with a positive sum')
    return GaussianMixtureModel(mu, std, weight, gmm_shape(mu.shape))


def load_analytic(spec: str) -> AnalyticModel:
    """Build the analytic model named by an 'analytic:...' spec (see the module docstring)."""
    kind, _, rest = spec.removeprefix('analytic:').partition(':') if spec.startswith('analytic:') else ('', '', '')
    if kind == 'gauss1d' and not rest:
        net = GaussianModel(1.0, (1, 1, 1), sigma_max=GAUSS1D_T)
        net.baseline_sigma_min = 0.0   # the paper's 1-D baselines run to sigma = 0 [paper v1 Table 1]
        return net
    if kind == 'gauss' and rest:
        return _gauss_from_options(rest, spec)
    if kind == 'gmm' and rest:
        return load_gmm(rest)
    raise AnalyticSpecError(f'{spec!r}: unknown analytic spec; expected analytic:gauss1d, '
                            f'analytic:gauss:std=S,shape=CxHxW or analytic:gmm:FILE.npz')


def write_random_gmm(path: Union[str, Path], k: int, shape: Sequence[int], seed: int = 0, mean_scale: float = 1.0,
                     std_range: tuple = (0.05, 0.5)) -> Path:
    """Write a random mixture npz: means N(0, mean_scale^2), widths log-uniform in std_range, Dirichlet weights."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, mean_scale, size=(k, *shape))
    std = np.exp(rng.uniform(math.log(std_range[0]), math.log(std_range[1]), size=k))
    weight = rng.dirichlet(np.ones(k))
    path = Path(path)
    with open(path, 'wb') as fh:                     # a file handle keeps numpy from appending '.npz'
        np.savez(fh, mu=mu, std=std, weight=weight)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Exact references for Gaussian data N(0, S^2 I): the PF-ODE and every sampler are linear in x.

def gauss_ode_solution(x_T: torch.Tensor, sigma: float, std: float, sigma_T: float) -> torch.Tensor:
    """Exact PF-ODE solution x(sigma) = x_T sqrt((S^2+sigma^2)/(S^2+T^2)) from x(T) = x_T."""
    c2 = std ** 2
    return x_T * math.sqrt((c2 + sigma ** 2) / (c2 + sigma_T ** 2))


def gauss_sampler_gain(sigmas: Sequence[float], std: float, solver: str = 'euler') -> float:
    """The factor by which the sampler maps x_0 to x_K on N(0, S^2) data. Every solver is linear in x there (the
    denoiser is S^2 x / (S^2 + sigma^2)), so one scalar run of the one sampler (edm.sampler.sample) from x_0 = 1 gives
    it exactly, for every solver it has (Euler: the product of 1 + h_i sigma_i / (S^2 + sigma_i^2), eq. 3)."""
    net = GaussianModel(std, shape=(1, 1, 1), sigma_max=math.inf)
    x_0 = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    return float(sample(net, x_0 / float(sigmas[0]), np.asarray(sigmas, dtype=np.float64), solver=solver))


def gauss_output_std(sigmas: Sequence[float], std: float, solver: str = 'euler', init: str = 'marginal') -> float:
    """Per-coordinate std of the sampler output; x_0 ~ N(0, S^2+T^2) ('marginal') or N(0, T^2) ('prior'), T=sigma_0."""
    T = float(sigmas[0])
    if init == 'marginal':
        x0_std = math.sqrt(std ** 2 + T ** 2)
    elif init == 'prior':
        x0_std = T
    else:
        raise ValueError(f"init must be 'marginal' or 'prior', got {init!r}")
    return x0_std * abs(gauss_sampler_gain(sigmas, std, solver))


def gauss_w2(sigmas: Sequence[float], std: float, solver: str = 'euler', init: str = 'marginal', dim: int = 1) -> float:
    """Exact W2 between the sampler's output law N(0, a^2 I_d) and the data law N(0, S^2 I_d): sqrt(d) |a - S|."""
    return math.sqrt(dim) * abs(gauss_output_std(sigmas, std, solver, init) - std)


# ---------------------------------------------------------------------------------------------------------------
# Reference PF-ODE solution for any analytic model.

def reference_solution(net: AnalyticModel, x_T: torch.Tensor, sigma_T: Optional[float] = None, sigma_end: float = 0.0,
                       rtol: float = 1e-11, atol: float = 1e-11, rho: float = grids.RHO) -> torch.Tensor:
    """High-accuracy PF-ODE solution at sigma_end from x(sigma_T) = x_T (float64).

    DOP853 (scipy solve_ivp) integrates dx/dv = f(x, v^rho) rho v^(rho-1) in v = sigma^(1/rho), which is finite at
    sigma = 0, resolves the small-sigma region finely, and makes the right-hand side vanish at sigma = 0 (where
    f = (x - D)/sigma is 0/0 but bounded for analytic models). The whole batch is one ODE system, so the step
    control follows the hardest sample. With the default tolerances the endpoint error against the exact Gaussian
    solution is about 1e-10 relative (tests/test_analytic.py checks 1e-8).
    """
    sigma_T = net.sigma_max if sigma_T is None else float(sigma_T)
    shape = x_T.shape
    device = x_T.device

    def rhs(v: float, y: np.ndarray) -> np.ndarray:
        if v <= 0:
            return np.zeros_like(y)
        sigma = v ** rho
        x = torch.from_numpy(y).reshape(shape).to(device)
        with torch.no_grad():
            D = net(x, torch.tensor(sigma, dtype=torch.float64, device=device)).to(torch.float64)
        f = (x - D) / sigma
        return (f * (rho * v ** (rho - 1))).reshape(-1).cpu().numpy()

    y0 = x_T.detach().to(torch.float64).reshape(-1).cpu().numpy()
    sol = scipy.integrate.solve_ivp(rhs, (sigma_T ** (1 / rho), sigma_end ** (1 / rho)), y0, method='DOP853',
                                    rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f'reference PF-ODE solve failed: {sol.message}')
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(shape).to(device)
