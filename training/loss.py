"""Training losses of the EDM paper (Table 1): VP, VE and EDM (docs/edm-compat.md §7.2).

Each loss returns the per-element weighted squared error lambda(sigma) * (D(y + n; sigma) - y)^2, not reduced,
with one sigma per sample of shape [B,1,1,1].
"""
from typing import Any, Optional, Tuple

import torch

from torch_utils import persistence


def _augment(images: torch.Tensor, augment_pipe: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Apply the augmentation pipe if any; returns (y, augment_labels)."""
    if augment_pipe is None:
        return images, None
    return augment_pipe(images)


def _denoise_error(net: Any, images: torch.Tensor, sigma: torch.Tensor, labels: Optional[torch.Tensor],
                   augment_pipe: Any) -> torch.Tensor:
    """(D(y + sigma*N(0,I); sigma) - y)^2 elementwise."""
    y, augment_labels = _augment(images, augment_pipe)
    n = torch.randn_like(y) * sigma
    D_yn = net(y + n, sigma, labels, augment_labels=augment_labels)
    return (D_yn - y) ** 2


@persistence.persistent_class
class VPLoss:
    """Loss of the VP formulation: t = 1 + u(eps_t - 1), sigma = sigma_VP(t), lambda = 1/sigma^2."""

    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5):
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.epsilon_t = epsilon_t

    def __call__(self, net: Any, images: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 augment_pipe: Any = None) -> torch.Tensor:
        """Per-element weighted loss."""
        rnd_uniform = torch.rand([images.shape[0], 1, 1, 1], device=images.device)
        sigma = self.sigma(1 + rnd_uniform * (self.epsilon_t - 1))
        weight = 1 / sigma ** 2
        return weight * _denoise_error(net, images, sigma, labels, augment_pipe)

    def sigma(self, t: Any) -> torch.Tensor:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()


@persistence.persistent_class
class VELoss:
    """Loss of the VE formulation: sigma = sigma_min (sigma_max/sigma_min)^u, lambda = 1/sigma^2."""

    def __init__(self, sigma_min: float = 0.02, sigma_max: float = 100):
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def __call__(self, net: Any, images: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 augment_pipe: Any = None) -> torch.Tensor:
        """Per-element weighted loss."""
        rnd_uniform = torch.rand([images.shape[0], 1, 1, 1], device=images.device)
        sigma = self.sigma_min * ((self.sigma_max / self.sigma_min) ** rnd_uniform)
        weight = 1 / sigma ** 2
        return weight * _denoise_error(net, images, sigma, labels, augment_pipe)


@persistence.persistent_class
class EDMLoss:
    """Loss of the EDM formulation: ln sigma ~ N(P_mean, P_std^2), lambda = (sigma^2 + sd^2) / (sigma sd)^2."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data

    def __call__(self, net: Any, images: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 augment_pipe: Any = None) -> torch.Tensor:
        """Per-element weighted loss."""
        rnd_normal = torch.randn([images.shape[0], 1, 1, 1], device=images.device)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        return weight * _denoise_error(net, images, sigma, labels, augment_pipe)
