"""Load the network a schedule is learned for: an analytic model or an EDM network pickle."""

import os

import torch

from art.analytic import load_analytic
from edm.errors import UserError
from edm.loading import load_network_pkl

SPEC_HELP = ('expected a network pickle path or URL, or analytic:gauss1d, analytic:gauss:std=S,shape=CxHxW, '
             'analytic:gmm:FILE.npz')


class NetworkSpecError(UserError, ValueError):
    """A network spec that names nothing loadable; the message is one line."""


def load_network(spec: str, device: str = 'cpu', trust_embedded_code: bool = False) -> torch.nn.Module:
    """'analytic:...' -> exact model; otherwise a pickle path or URL -> its 'ema' network (eval, frozen, on device).

    Pickles are read by edm.loading.load_network_pkl (safe unless trust_embedded_code), whose errors are UserErrors.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise NetworkSpecError(f'network spec must be a non-empty string; {SPEC_HELP}')
    if spec.startswith('analytic:'):
        net = load_analytic(spec)
    elif '://' in spec or os.path.isfile(spec):
        net = load_network_pkl(spec, trust_embedded_code=trust_embedded_code)['ema']
    else:
        raise NetworkSpecError(f'{spec!r}: no such file; {SPEC_HELP}')
    return net.eval().requires_grad_(False).to(device)
