"""Toy-size EDM2 networks and snapshot pickles for the tests of the tools that take EDM2 files (no downloads)."""
import pickle
from typing import Any

import torch

import dnnlib
from training.encoders import StandardRGBEncoder
from training.networks_edm2 import Precond


# Two levels, attention at 4x4 (4 heads): every part of the network.
TINY = dict(img_resolution=8, img_channels=3, label_dim=10, model_channels=16, channel_mult=[1, 2], num_blocks=1,
            attn_resolutions=[4], channels_per_head=8)
# One level, no attention, no encoder blocks: the smallest network, for the ART tools (a JVP per level).
TOY = dict(img_resolution=4, img_channels=3, label_dim=10, model_channels=8, channel_mult=[1], num_blocks=0,
           attn_resolutions=[], logvar_channels=8)


def tiny_edm2_net(seed: int = 0, dtype: torch.dtype = torch.float16, **kwargs) -> Precond:
    """EDM2's Precond with the TINY arguments updated by kwargs, random non-zero gains (upstream starts them at zero,
    which makes D = c_skip x) and parameters in `dtype` (release pickles hold float16)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = Precond(**dict(TINY, **kwargs))
    with torch.no_grad():
        for param in net.parameters():
            if param.ndim == 0:
                param.copy_(torch.empty(()).uniform_(0.5, 1.5, generator=generator))
    return net.eval().requires_grad_(False).to(dtype)


def write_edm2_pkl(path, net: Precond, encoder: Any = True) -> str:
    """Write `net` as an EDM2 snapshot (the training loop's dict layout) with the encoder: True for StandardRGBEncoder,
    False for none (older snapshots), or the encoder object. Returns the path as a string."""
    data = dnnlib.EasyDict(dataset_kwargs=dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset'),
                           loss_fn=None, ema=net)
    if encoder is not False:
        data = dnnlib.EasyDict(encoder=StandardRGBEncoder() if encoder is True else encoder, **data)
    with open(path, 'wb') as f:
        pickle.dump(data, f)
    return str(path)
