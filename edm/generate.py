"""Generate images with an EDM network: the options and behaviour of upstream generate.py, on CPU or GPUs.

    python -m edm.generate --network=PKL --outdir=out --seeds=0-63 --steps=18
    torchrun --standalone --nproc_per_node=2 -m edm.generate --network=PKL --outdir=out

Seeds are split across ranks as upstream does (docs/edm-compat.md §2.3), every image depends only on its seed, and the
network is loaded with the safe loader unless `--trust-pickle` is given. EDM2 files are sampled the same way (float64
Heun on the grid), autoguided with `--gnet` and `--guidance`, and their images are decoded by the file's encoder.
"""
from typing import List, Optional

import click
import torch

from edm.cli import Command, check_output_dir, check_sigma_range, generate_options, guidance_options
from edm.imagegen import generate_images, load_on_ranks
from edm.denoiser import load_denoiser
from edm.guidance import check_guidance_options
from edm.sampler import upstream_sampler
from torch_utils import distributed as dist


@click.command(cls=Command)
@click.option('--network', 'network_pkl', help='Network pickle filename or URL', metavar='PATH|URL', type=str,
              required=True)
@generate_options()
@click.option('--solver', help='Ablate ODE solver', type=click.Choice(['euler', 'heun']))
@guidance_options()
def main(network_pkl: str, outdir: str, seeds: List[int], subdirs: bool, class_idx: Optional[int],
         max_batch_size: int, device: torch.device, trust_pickle: bool, gnet: Optional[str],
         guidance: Optional[float], **sampler_kwargs) -> None:
    """Generate random images using the techniques described in the paper
    "Elucidating the Design Space of Diffusion-Based Generative Models".

    \b
    python -m edm.generate --outdir=out --seeds=0-63 --batch=64 \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl
    """
    check_output_dir(outdir, '--outdir')
    guidance = check_guidance_options(gnet, guidance)
    discretization = sampler_kwargs['discretization'] or 'edm'
    check_sigma_range(sampler_kwargs['sigma_min'], sampler_kwargs['sigma_max'], discretization)
    dist.init()
    dist.print0(f'Loading network from "{network_pkl}"...')
    if gnet is not None:
        dist.print0(f'Guiding it by "{gnet}" with weight {guidance:g}...')
    net = load_on_ranks(lambda spec: load_denoiser(spec, gnet, guidance, trust_embedded_code=trust_pickle),
                        network_pkl, device)
    check_sigma_range(sampler_kwargs['sigma_min'], sampler_kwargs['sigma_max'], discretization, net)
    dist.print0(f'Generating {len(seeds)} images to "{outdir}"...')
    generate_images(net, outdir, seeds, upstream_sampler(**sampler_kwargs), class_idx=class_idx,
                    max_batch_size=max_batch_size, subdirs=subdirs, device=device)
    dist.print0('Done.')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
