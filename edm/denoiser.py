"""Any network as the denoiser D(x; sigma) that the samplers and every ART method take: `as_denoiser`.

The samplers and grids ask of a network EDM's interface (`INTERFACE`, with `img_resolution`, `img_channels` and
`label_dim`). Networks that have it (EDM's, analytic models) are used as they are. The others (EDM2's `Precond` has
no `round_sigma`, `sigma_min`, `sigma_max`) are seen through a `Denoiser`, which gives them the interface of
EDMPrecond: continuous noise levels (identity rounding) on [0, inf), so the grids keep their defaults (0.002 to 80,
EDM2's too). A Denoiser also carries the encoder of the network's file, which turns EDM2 samples (latents or [-1, 1]
pixels) into uint8 images, and applies autoguidance by a guiding network (edm.guidance).

`as_denoiser` is the one entry point: adapters for other kinds of networks join it here.
"""

import math
from typing import Any, Optional

import torch

from edm.guidance import autoguide, check_guidance
from edm.loading import load_network_pkl
from training.encoders import StandardRGBEncoder

INTERFACE = ('round_sigma', 'sigma_min', 'sigma_max')   # what the samplers and grids ask of a network


def has_interface(net: Any) -> bool:
    """True when net has EDM's sampler interface (INTERFACE) of its own."""
    return all(hasattr(net, name) for name in INTERFACE)


class Denoiser(torch.nn.Module):
    """D(x; sigma) of `net` with EDM's network interface, autoguided by `gnet` with weight `guidance`, carrying the
    encoder of its file."""

    def __init__(self, net: torch.nn.Module, gnet: Optional[torch.nn.Module] = None, guidance: float = 1.0,
                 encoder: Any = None):
        super().__init__()
        self.guidance = check_guidance(net, gnet, guidance)
        self.net, self.gnet, self.encoder = net, gnet, encoder
        self.img_resolution, self.img_channels, self.label_dim = net.img_resolution, net.img_channels, net.label_dim
        nets = [net] if gnet is None else [net, gnet]     # where both are defined
        self.sigma_min = max(float(getattr(n, 'sigma_min', 0.0)) for n in nets)
        self.sigma_max = min(float(getattr(n, 'sigma_max', math.inf)) for n in nets)

    def round_sigma(self, sigma: Any) -> torch.Tensor:
        """The net's rounding of noise levels; the identity for networks with continuous levels (EDM2)."""
        if hasattr(self.net, 'round_sigma'):
            return self.net.round_sigma(sigma)
        return torch.as_tensor(sigma)

    def forward(self, x: torch.Tensor, sigma: Any, class_labels: Optional[torch.Tensor] = None,
                **model_kwargs) -> torch.Tensor:
        """D(x; sigma) of net, or with a guide its autoguided field (gnet is called right after net, and not at all
        when the weight is 1)."""
        D = self.net(x, sigma, class_labels, **model_kwargs)
        if self.gnet is None or self.guidance == 1:
            return D
        return autoguide(D, self.gnet(x, sigma, class_labels, **model_kwargs), self.guidance)


def as_denoiser(net: torch.nn.Module, gnet: Optional[torch.nn.Module] = None, guidance: float = 1.0,
                encoder: Any = None) -> torch.nn.Module:
    """Any network as a denoiser with EDM's interface: net itself when it has the interface and nothing is added (EDM
    and analytic networks stay as they are), else a Denoiser."""
    if gnet is None and guidance == 1 and encoder is None and has_interface(net):
        return net
    return Denoiser(net, gnet, guidance, encoder)


def load_denoiser(network_pkl: str, gnet_pkl: Optional[str] = None, guidance: float = 1.0,
                  trust_embedded_code: bool = False) -> torch.nn.Module:
    """The network of a pickle as the tools use it (as_denoiser): its 'ema' with the file's encoder, guided by the
    'ema' of gnet_pkl (nothing else of the guide's file is read). EDM2 files without an encoder get
    StandardRGBEncoder; EDM files keep EDM's quantisation of the samples (no encoder)."""
    data = load_network_pkl(network_pkl, trust_embedded_code=trust_embedded_code)
    net, encoder = data['ema'], data.get('encoder')
    if encoder is None and not has_interface(net):   # EDM2 (upstream's default)
        encoder = StandardRGBEncoder()
    gnet = None if gnet_pkl is None else load_network_pkl(gnet_pkl, trust_embedded_code=trust_embedded_code)['ema']
    return as_denoiser(net, gnet, guidance, encoder)
