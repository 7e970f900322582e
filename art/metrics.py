"""Metrics of a noise-level grid: exact W2 for Gaussian models, rms endpoint error against a reference solution."""

import math
from typing import Optional

import numpy as np
import torch

from art.analytic import AnalyticModel, GaussianModel, gauss_w2, reference_solution
from dnnlib.util import UserError
from edm import grids
from edm.sampler import sample_batches

REFERENCE_STEPS = 512     # Heun steps of the reference solve for neural networks (EDM rho=7 grid).


def check_exact_w2(net: torch.nn.Module) -> None:
    """UserError unless W2 is exact on the net: a Gaussian model (a mixture's sampler output law has no closed form)."""
    if not isinstance(net, GaussianModel):
        raise UserError('--metric=w2 is exact only for Gaussian models (analytic:gauss1d, analytic:gauss:...); '
                        'use --metric=rms on this network')


def exact_w2(net: torch.nn.Module, sigmas: np.ndarray, solver: str) -> float:
    """Exact W2 between the sampler's output law and the data law of a Gaussian model (x_0 ~ p_T, as the paper)."""
    check_exact_w2(net)
    return gauss_w2(sigmas, net.std, solver=solver, init='marginal', dim=net.img_channels * net.img_resolution ** 2)


def reference_endpoints(net: torch.nn.Module, latents: torch.Tensor, sigma_T: float,
                        class_labels: Optional[torch.Tensor] = None, steps: int = REFERENCE_STEPS,
                        solver: str = 'heun') -> torch.Tensor:
    """The PF-ODE solution at sigma = 0 from x(sigma_T) = latents * sigma_T: exact-ish for analytic models
    (DOP853 at tolerance 1e-11), a `steps`-step solve on EDM's grid otherwise (Heun by default)."""
    if isinstance(net, AnalyticModel):
        return reference_solution(net, latents.to(torch.float64) * sigma_T, sigma_T=sigma_T)
    fine = grids.make_sigmas('edm', steps, sigma_max=sigma_T, net=net)
    return sample_batches(net, latents, fine, class_labels=class_labels, solver=solver)


def rms_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Root-mean-square over samples of the Euclidean endpoint error: sqrt(E |x - x_ref|^2)."""
    err = (x.to(torch.float64) - reference.to(torch.float64)).flatten(1)
    return math.sqrt(err.square().sum(dim=1).mean().item())
