"""Load the network a schedule is learned for (an analytic model or an EDM network pickle); the embedded networks.

The default network (used when a CLI gets no --network) is an EDM network trained here on Fashion-MNIST
(`assets/edm-fmnist28-cond.pkl`, card beside it); the exact Gaussian mixture of Fashion-MNIST images stays as the
analytic benchmark (`MIXTURE_NETWORK`). Shipped schedules live in `assets/schedules/<network name>/<method>-k<K>.json`.
"""

import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from art.analytic import load_analytic
from dnnlib.util import UserError
from edm.denoiser import load_denoiser
from edm.diffusers_net import PREFIX as DIFFUSERS_PREFIX, load_diffusers
from edm.guidance import split_guided_spec

ASSETS = Path(__file__).resolve().parents[1] / 'assets'
DEFAULT_NETWORK = str(ASSETS / 'edm-fmnist28-cond.pkl')            # EDM network trained here, 1x28x28, 10 classes
MIXTURE_NETWORK = f'analytic:gmm:{ASSETS / "fmnist-gmm.npz"}'   # exact mixture of Fashion-MNIST images, 1x32x32
SHIPPED_METHODS = ('art-rl', 'closed-form')                      # preference order of shipped schedules

SPEC_HELP = ('expected a network pickle path or URL, diffusers:FOLDER, or analytic:gauss1d, '
             'analytic:gauss:std=S,shape=CxHxW, analytic:gmm:FILE.npz')


class NetworkSpecError(UserError, ValueError):
    """A network spec that names nothing loadable; the message is one line."""


def load_network_spec(spec: str, device: str = 'cpu', trust_embedded_code: bool = False) -> torch.nn.Module:
    """'analytic:...' -> exact model; 'diffusers:FOLDER' -> a diffusers VP model as EDM's denoiser
    (edm.diffusers_net); otherwise a pickle path or URL -> its 'ema' network (eval, frozen, on device).

    Pickles are read by edm.denoiser.load_denoiser (edm.loading.load_network_pkl, safe unless trust_embedded_code;
    its errors are UserErrors): EDM2 networks come with EDM's interface and their file's encoder. A guided spec
    (edm.guidance.guided_spec, `PKL?gnet=GUIDE_PKL&guidance=W`) gives the autoguided field as one network, so that
    every ART method learns on the field the sampler integrates.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise NetworkSpecError(f'network spec must be a non-empty string; {SPEC_HELP}')
    network, gnet, guidance = split_guided_spec(spec)
    if network.startswith('analytic:') and gnet is None:
        net = load_analytic(network)
    elif network.startswith('analytic:'):
        raise NetworkSpecError(f'{network!r}: an analytic model takes no guiding network; guide a network pickle')
    elif network.startswith(DIFFUSERS_PREFIX) and gnet is None:
        net = load_diffusers(network[len(DIFFUSERS_PREFIX):])
    elif network.startswith(DIFFUSERS_PREFIX):
        raise NetworkSpecError(f'{network!r}: a diffusers model takes no guiding network; guide a network pickle')
    elif '://' in network or os.path.isfile(network):
        if gnet is not None and not ('://' in gnet or os.path.isfile(gnet)):
            raise NetworkSpecError(f'{gnet!r}: no such file; the guiding network must be a network pickle path or URL')
        net = load_denoiser(network, gnet, guidance, trust_embedded_code=trust_embedded_code)
    else:
        raise NetworkSpecError(f'{network!r}: no such file; {SPEC_HELP}')
    return net.eval().requires_grad_(False).to(device)


def network_name(spec: str) -> str:
    """Short name of a network spec: the file stem of a pickle or npz, the diffusers folder's name, or the analytic
    kind."""
    stem = spec.rsplit(':', 1)[-1] if spec.startswith(('analytic:gmm:', DIFFUSERS_PREFIX)) else spec
    if spec.startswith('analytic:') and not spec.startswith('analytic:gmm:'):
        return spec.split(':')[1]
    return os.path.splitext(os.path.basename(stem.rstrip('/')))[0] or 'network'


def shipped_schedule_path(spec: str, num_steps: int, methods: Sequence[str] = SHIPPED_METHODS) -> Optional[Path]:
    """The shipped schedule file of one of `methods` for this network: K itself if shipped (earlier methods first),
    else the shipped K nearest to num_steps (to be resampled); None when nothing is shipped for the network."""
    folder = ASSETS / 'schedules' / network_name(spec)
    files = [folder / f'{method}-k{num_steps}.json' for method in methods]
    for path in files:
        if path.is_file():
            return path
    shipped = sorted(path for path in folder.glob('*-k*.json') if path.stem.rpartition('-k')[0] in methods) \
        if folder.is_dir() else []
    if not shipped:
        return None
    rank = {method: i for i, method in enumerate(methods)}
    def key(path: Path):
        method, _, k = path.stem.rpartition('-k')
        return abs(int(k) - num_steps), rank.get(method, len(rank))
    return min(shipped, key=key)
