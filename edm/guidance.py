"""Autoguidance and EDM2 networks as one denoiser: what the sampler and every ART method see as "the network".

Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself") extrapolates the
denoiser away from a guiding network gnet (a smaller or less trained version of it, or an unconditional one, which
is classifier-free guidance):

    D_w(x; sigma) = D_g(x; sigma) + w (D(x; sigma) - D_g(x; sigma))     (torch.lerp(D_g, D, w); w = 1 is D itself)

`GuidedDenoiser` is that field as one module. It also gives networks without EDM's sampler interface (EDM2's
`Precond` has no `round_sigma`, `sigma_min`, `sigma_max`) the interface of EDMPrecond: continuous noise levels
(identity rounding) on [0, inf), so the grids keep their defaults (0.002 to 80, EDM2's too). It carries the encoder
of the network's file, which turns EDM2 samples (latents or [-1, 1] pixels) into uint8 images.

A guided network is named by one string, `NET?gnet=GUIDE&guidance=W` (`guided_spec`), so that a schedule's
provenance and a run's options record the field a schedule was learned on.
"""

import math
from typing import Any, Optional, Tuple

import torch

from dnnlib.util import UserError
from edm.loading import load_network_pkl
from training.encoders import StandardRGBEncoder

INTERFACE = ('round_sigma', 'sigma_min', 'sigma_max')   # what the samplers and grids ask of a network
_GNET, _GUIDANCE = '?gnet=', '&guidance='                # the separators of a guided network spec


class GuideError(UserError, ValueError):
    """A guide or guidance weight that does not fit; the message is one line."""


def check_guide(net: Any, gnet: Any) -> None:
    """GuideError unless gnet denoises the images of net: same resolution and channels, and the same classes or none
    (an unconditional guide ignores the labels: classifier-free guidance)."""
    shape, guide_shape = ((n.img_channels, n.img_resolution, n.img_resolution) for n in (net, gnet))
    if guide_shape != shape:
        raise GuideError(f'the guiding network works on {"x".join(map(str, guide_shape))} images, the network on '
                         f'{"x".join(map(str, shape))}; give a guide of the same resolution and channels')
    if gnet.label_dim not in (0, net.label_dim):
        raise GuideError(f'the guiding network has {gnet.label_dim} classes, the network {net.label_dim}; give a guide '
                         f'with the same classes or an unconditional one')


class GuidedDenoiser(torch.nn.Module):
    """D(x; sigma) of `net`, autoguided by `gnet` with weight `guidance`, with EDM's network interface."""

    def __init__(self, net: torch.nn.Module, gnet: Optional[torch.nn.Module] = None, guidance: float = 1.0,
                 encoder: Any = None):
        super().__init__()
        guidance = float(guidance)
        if not (math.isfinite(guidance) and guidance > 0):
            raise GuideError(f'the guidance weight must be a number > 0, got {guidance:g}')
        if gnet is None and guidance != 1:
            raise GuideError(f'guidance {guidance:g} needs a guiding network')
        if gnet is not None:
            check_guide(net, gnet)
        self.net, self.gnet, self.guidance, self.encoder = net, gnet, guidance, encoder
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
        """D_w(x; sigma): net's D, or with a guide D_g.lerp(D, w) in the networks' output precision (gnet is called
        right after net, and not at all when w = 1)."""
        D = self.net(x, sigma, class_labels, **model_kwargs)
        if self.gnet is None or self.guidance == 1:
            return D
        D_g = self.gnet(x, sigma, class_labels, **model_kwargs)
        dtype = torch.promote_types(D.dtype, D_g.dtype)
        return D_g.to(dtype).lerp(D.to(dtype), self.guidance)


def as_denoiser(net: torch.nn.Module, gnet: Optional[torch.nn.Module] = None, guidance: float = 1.0,
                encoder: Any = None) -> torch.nn.Module:
    """net itself when it has EDM's interface and nothing is added (EDM and analytic networks stay as they are), else
    a GuidedDenoiser."""
    if gnet is None and guidance == 1 and encoder is None and all(hasattr(net, name) for name in INTERFACE):
        return net
    return GuidedDenoiser(net, gnet, guidance, encoder)


def load_guided_pkl(network_pkl: str, gnet_pkl: Optional[str] = None, guidance: float = 1.0,
                    trust_embedded_code: bool = False) -> torch.nn.Module:
    """The network of a pickle as the tools use it (as_denoiser): its 'ema' with the file's encoder, guided by the
    'ema' of gnet_pkl (nothing else of the guide's file is read). EDM2 files without an encoder get
    StandardRGBEncoder; EDM files keep EDM's quantisation of the samples (no encoder)."""
    data = load_network_pkl(network_pkl, trust_embedded_code=trust_embedded_code)
    net, encoder = data['ema'], data.get('encoder')
    if encoder is None and not all(hasattr(net, name) for name in INTERFACE):   # EDM2 (upstream's default)
        encoder = StandardRGBEncoder()
    gnet = None if gnet_pkl is None else load_network_pkl(gnet_pkl, trust_embedded_code=trust_embedded_code)['ema']
    return as_denoiser(net, gnet, guidance, encoder)


def check_guidance_options(gnet: Optional[str], guidance: Optional[float]) -> float:
    """The guidance weight of the options --gnet and --guidance (1 without a guide); GuideError when they do not go
    together or the weight is not > 0."""
    if gnet is None and guidance is not None:
        raise GuideError('--guidance needs a guiding network: give --gnet=PKL as well, or leave out --guidance')
    if gnet is not None and guidance is None:
        raise GuideError('--gnet needs --guidance=W, the guidance weight (W > 1 extrapolates away from the guide; '
                         'W = 1 leaves it unused)')
    if guidance is not None and not (math.isfinite(guidance) and guidance > 0):
        raise GuideError(f'--guidance must be a number > 0, got {guidance:g}')
    return 1.0 if guidance is None else float(guidance)


def guided_spec(network: str, gnet: Optional[str] = None, guidance: float = 1.0) -> str:
    """The one-string name of a network guided by gnet with weight guidance; the network itself when the field is
    unguided (no guide, or w = 1)."""
    if gnet is None or float(guidance) == 1:
        return network
    return f'{network}{_GNET}{gnet}{_GUIDANCE}{float(guidance)!r}'


def split_guided_spec(spec: str) -> Tuple[str, Optional[str], float]:
    """(network, gnet or None, guidance) of a spec written by guided_spec; a plain spec is (spec, None, 1.0)."""
    head, sep, weight = spec.rpartition(_GUIDANCE)
    network, sep2, gnet = head.rpartition(_GNET)
    if not (sep and sep2 and network and gnet):
        return spec, None, 1.0
    try:
        guidance = float(weight)
    except ValueError:
        raise GuideError(f'{spec!r}: the guidance weight {weight!r} is not a number') from None
    return network, gnet, guidance
