"""Autoguidance: a network guided by a bad version of itself, its options and its one-string name.

Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself") extrapolates the
denoiser away from a guiding network gnet (a smaller or less trained version of it, or an unconditional one, which
is classifier-free guidance):

    D_w(x; sigma) = D_g(x; sigma) + w (D(x; sigma) - D_g(x; sigma))     (torch.lerp(D_g, D, w); w = 1 is D itself)

`autoguide` is that extrapolation and `check_guidance` what a guide and its weight must satisfy; the guided field as
one network, with EDM's interface, is `edm.denoiser.as_denoiser(net, gnet, guidance)`.

A guided network is named by one string, `NET?gnet=GUIDE&guidance=W` (`guided_spec`), so that a schedule's
provenance and a run's options record the field a schedule was learned on.
"""

import math
from typing import Any, Optional, Tuple

import torch

from dnnlib.util import UserError

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


def check_guidance(net: Any, gnet: Any, guidance: float) -> float:
    """The guidance weight as a float; GuideError unless it is a number > 0, a weight other than 1 has a guide, and the
    guide fits net (check_guide)."""
    guidance = float(guidance)
    if not (math.isfinite(guidance) and guidance > 0):
        raise GuideError(f'the guidance weight must be a number > 0, got {guidance:g}')
    if gnet is None and guidance != 1:
        raise GuideError(f'guidance {guidance:g} needs a guiding network')
    if gnet is not None:
        check_guide(net, gnet)
    return guidance


def autoguide(D: torch.Tensor, D_g: torch.Tensor, guidance: float) -> torch.Tensor:
    """D_w = D_g.lerp(D, w), in the precision of the two outputs."""
    dtype = torch.promote_types(D.dtype, D_g.dtype)
    return D_g.to(dtype).lerp(D.to(dtype), guidance)


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
