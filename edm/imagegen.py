"""Sample one image per seed across ranks and write them as PNGs: the library behind `python -m edm.generate` and
`generate_art.py`. Seeds are split across ranks as upstream does and every image depends only on its seed. A network
that carries an encoder (EDM2 files, edm.denoiser) has its samples decoded by it, as upstream EDM2 does; the others
are quantised as upstream EDM does."""
from typing import Any, Callable, Optional, Sequence

import PIL.Image
import torch
import tqdm

from dnnlib.util import UserError
from edm.images import image_path, save_images, save_png
from edm.rng import seed_latents
from torch_utils import distributed as dist

Sampler = Callable[..., torch.Tensor]  # (net, latents, class_labels, randn_like) -> images


def load_on_ranks(loader: Callable[[str], torch.nn.Module], spec: str, device: torch.device) -> torch.nn.Module:
    """loader(spec) on rank 0 first (it may download into the cache), then on the other ranks; eval, frozen, on
    device."""
    with dist.rank0_first():
        net = loader(spec)
    return net.eval().requires_grad_(False).to(device)


def check_class(net: torch.nn.Module, class_idx: Optional[int]) -> None:
    """UserError unless class_idx is None or a class of the net."""
    if class_idx is not None and not net.label_dim:
        raise UserError('--class given, but the network is unconditional')
    if class_idx is not None and class_idx >= net.label_dim:
        raise UserError(f'--class={class_idx} is out of range: the network has {net.label_dim} classes')


def init_encoder(net: torch.nn.Module, device: torch.device) -> Any:
    """The encoder the network carries (None: EDM's quantisation), ready on `device` and decoding in batches of 4
    when it batches (upstream EDM2's setting)."""
    encoder = getattr(net, 'encoder', None)
    if encoder is not None:
        encoder.init(device)
        if hasattr(encoder, 'batch_size'):
            encoder.batch_size = 4
    return encoder


def save_decoded(images: torch.Tensor, seeds: Sequence[int], outdir: str, subdirs: bool = False) -> None:
    """Write uint8 NCHW images (an encoder's decode) as one PNG per seed."""
    for seed, array in zip(seeds, images.permute(0, 2, 3, 1).cpu().numpy()):
        image = PIL.Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        save_png(image, image_path(outdir, seed, subdirs))


def generate_images(net: torch.nn.Module, outdir: str, seeds: Sequence[int], sampler: Sampler,
                    class_idx: Optional[int] = None, max_batch_size: int = 64, subdirs: bool = False,
                    device: torch.device = torch.device('cpu'), progress: bool = True) -> None:
    """Sample one image per seed with `sampler` and write `outdir/000123.png` files (this rank's share)."""
    check_class(net, class_idx)
    encoder = init_encoder(net, device)
    batches = dist.rank_batches(seeds, max_batch_size, dist.get_rank(), dist.get_world_size())
    for batch_seeds in tqdm.tqdm(batches, unit='batch', disable=(not progress or dist.get_rank() != 0)):
        dist.barrier()
        if len(batch_seeds) == 0:
            continue
        latents, class_labels, rnd = seed_latents(net, batch_seeds.tolist(), device, class_idx)
        images = sampler(net, latents, class_labels, randn_like=rnd.randn_like)
        if encoder is None:
            save_images(images, batch_seeds.tolist(), outdir, subdirs)
        else:
            save_decoded(encoder.decode(images), batch_seeds.tolist(), outdir, subdirs)
    dist.barrier()
