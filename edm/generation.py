"""Sample one image per seed across ranks and write them as PNGs: the library behind `python -m edm.generate` and
`generate_art.py`. Seeds are split across ranks as upstream does and every image depends only on its seed."""
import math
from typing import Callable, List, Optional, Sequence

import torch
import tqdm

from dnnlib.util import UserError
from edm.images import save_images
from edm.rng import seed_latents
from torch_utils import distributed as dist

Sampler = Callable[..., torch.Tensor]  # (net, latents, class_labels, randn_like) -> images


def rank_batches(seeds: Sequence[int], max_batch_size: int, rank: int, world_size: int) -> List[torch.Tensor]:
    """This rank's batches of seeds: ceil(n/(B*W))*W nearly equal chunks, rank r takes r, r+W, ... (upstream)."""
    num_batches = max(math.ceil(len(seeds) / (max_batch_size * world_size)), 1) * world_size
    chunks = torch.as_tensor(list(seeds), dtype=torch.int64).tensor_split(num_batches)
    return list(chunks[rank::world_size])


def load_on_ranks(loader: Callable[[str], torch.nn.Module], spec: str, device: torch.device) -> torch.nn.Module:
    """loader(spec) on rank 0 first (it may download into the cache), then on the other ranks; eval, frozen, on
    device."""
    if dist.get_rank() != 0:
        dist.barrier()
    try:
        net = loader(spec)
    finally:
        if dist.get_rank() == 0:
            dist.barrier()
    return net.eval().requires_grad_(False).to(device)


def check_class(net: torch.nn.Module, class_idx: Optional[int]) -> None:
    """UserError unless class_idx is None or a class of the net."""
    if class_idx is not None and not net.label_dim:
        raise UserError('--class given, but the network is unconditional')
    if class_idx is not None and class_idx >= net.label_dim:
        raise UserError(f'--class={class_idx} is out of range: the network has {net.label_dim} classes')


def generate_images(net: torch.nn.Module, outdir: str, seeds: Sequence[int], sampler: Sampler,
                    class_idx: Optional[int] = None, max_batch_size: int = 64, subdirs: bool = False,
                    device: torch.device = torch.device('cpu'), progress: bool = True) -> None:
    """Sample one image per seed with `sampler` and write `outdir/000123.png` files (this rank's share)."""
    check_class(net, class_idx)
    batches = rank_batches(seeds, max_batch_size, dist.get_rank(), dist.get_world_size())
    for batch_seeds in tqdm.tqdm(batches, unit='batch', disable=(not progress or dist.get_rank() != 0)):
        dist.barrier()
        if len(batch_seeds) == 0:
            continue
        latents, class_labels, rnd = seed_latents(net, batch_seeds.tolist(), device, class_idx)
        images = sampler(net, latents, class_labels, randn_like=rnd.randn_like)
        save_images(images, batch_seeds.tolist(), outdir, subdirs)
    dist.barrier()
