"""Generate images with an EDM network: the options and behaviour of upstream generate.py, on CPU or GPUs.

    python -m edm.generate --network=PKL --outdir=out --seeds=0-63 --steps=18
    torchrun --standalone --nproc_per_node=2 -m edm.generate --network=PKL --outdir=out

Seeds are split across ranks as upstream does (edm-interface.md section 2.2), every image depends only on its
seed, and the network is loaded with the safe loader unless `--trust-pickle` is given.
"""

import math
import os
from typing import Callable, List, Optional, Sequence

import click
import torch
import tqdm

import dnnlib
from edm.errors import Command, UserError
from edm.images import save_images
from edm.loading import load_network_pkl
from edm.rng import StackedRandomGenerator
from edm.sampler import ablation_sampler, edm_sampler
from torch_utils import distributed as dist

Sampler = Callable[..., torch.Tensor]  # (net, latents, class_labels, randn_like) -> images


def default_device() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
    return torch.device('cpu')


def rank_batches(seeds: Sequence[int], max_batch_size: int, rank: int, world_size: int) -> List[torch.Tensor]:
    """This rank's batches of seeds: ceil(n/(B*W))*W nearly equal chunks, rank r takes r, r+W, ... (upstream)."""
    num_batches = max(math.ceil(len(seeds) / (max_batch_size * world_size)), 1) * world_size
    chunks = torch.as_tensor(list(seeds), dtype=torch.int64).tensor_split(num_batches)
    return list(chunks[rank::world_size])


def load_network(network: str, device: torch.device, trust_pickle: bool = False,
                 loader: Optional[Callable[[str], torch.nn.Module]] = None) -> torch.nn.Module:
    """Load a pickle's 'ema' network (or what `loader` returns) on rank 0 first, which may download into the
    cache, then on the other ranks."""
    loader = loader or (lambda spec: load_network_pkl(spec, trust_embedded_code=trust_pickle)['ema'])
    if dist.get_rank() != 0:
        dist.barrier()
    try:
        net = loader(network)
    finally:
        if dist.get_rank() == 0:
            dist.barrier()
    return net.eval().requires_grad_(False).to(device)


def generate_images(net: torch.nn.Module, outdir: str, seeds: Sequence[int], sampler: Sampler,
                    class_idx: Optional[int] = None, max_batch_size: int = 64, subdirs: bool = False,
                    device: torch.device = torch.device('cpu'), progress: bool = True) -> None:
    """Sample one image per seed with `sampler` and write `outdir/000123.png` files (this rank's share)."""
    if class_idx is not None and not net.label_dim:
        raise UserError('--class given, but the network is unconditional')
    if class_idx is not None and class_idx >= net.label_dim:
        raise UserError(f'--class={class_idx} is out of range: the network has {net.label_dim} classes')
    batches = rank_batches(seeds, max_batch_size, dist.get_rank(), dist.get_world_size())
    for batch_seeds in tqdm.tqdm(batches, unit='batch', disable=(not progress or dist.get_rank() != 0)):
        dist.barrier()
        if len(batch_seeds) == 0:
            continue
        rnd = StackedRandomGenerator(device, batch_seeds)
        # Draw order of upstream: latents, then class indices (even when --class overrides them), then the sampler.
        latents = rnd.randn([len(batch_seeds), net.img_channels, net.img_resolution, net.img_resolution], device=device)
        class_labels = None
        if net.label_dim:
            class_labels = torch.eye(net.label_dim, device=device)[rnd.randint(net.label_dim, size=[len(batch_seeds)], device=device)]
            if class_idx is not None:
                class_labels[:, :] = 0
                class_labels[:, class_idx] = 1
        images = sampler(net, latents, class_labels, randn_like=rnd.randn_like)
        save_images(images, batch_seeds.tolist(), outdir, subdirs)
    dist.barrier()


def int_list_callback(minimum: int, what: str) -> Callable[[click.Context, click.Parameter, str], List[int]]:
    """click callback factory: a non-empty parse_int_list (e.g. 1,2,5-10) of integers >= minimum."""
    def callback(ctx: click.Context, param: click.Parameter, value: str) -> List[int]:
        try:
            values = dnnlib.util.parse_int_list(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        if not values:
            raise click.BadParameter(f'no {what} given')
        if min(values) < minimum:
            raise click.BadParameter(f'{what} must be integers >= {minimum}')
        return values
    return callback


parse_seeds = int_list_callback(0, 'seeds')


def parse_device(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> torch.device:
    """click callback: `--device`, default cuda:LOCAL_RANK when available, else cpu."""
    if value is None:
        return default_device()
    try:
        device = torch.device(value)
    except RuntimeError:
        raise click.BadParameter(f'{value!r} is not a torch device (use cpu or cuda)') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise click.BadParameter('CUDA is not available on this machine; use --device=cpu')
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
    return device


def generate_options(sigma_schedule_flag: str = '--schedule', default_outdir: Optional[str] = None
                     ) -> Callable[[Callable], Callable]:
    """The options of upstream generate.py plus --device and --trust-pickle (shared with generate_art.py, which
    names the ablation option for sigma(t) `--sigma-schedule` and has a default output folder)."""
    options = [
        click.option('--outdir', help='Where to save the output images', metavar='DIR', type=str,
                     required=default_outdir is None, default=default_outdir, show_default=default_outdir is not None),
        click.option('--seeds', help='Random seeds (e.g. 1,2,5-10)', metavar='LIST', type=str, default='0-63',
                     show_default=True, callback=parse_seeds),
        click.option('--subdirs', help='Create subdirectory for every 1000 seeds', is_flag=True),
        click.option('--class', 'class_idx', help='Class label  [default: random]', metavar='INT',
                     type=click.IntRange(min=0), default=None),
        click.option('--batch', 'max_batch_size', help='Maximum batch size', metavar='INT',
                     type=click.IntRange(min=1), default=64, show_default=True),
        click.option('--steps', 'num_steps', help='Number of sampling steps', metavar='INT',
                     type=click.IntRange(min=1), default=18, show_default=True),
        click.option('--sigma_min', help='Lowest noise level  [default: varies]', metavar='FLOAT',
                     type=click.FloatRange(min=0, min_open=True)),
        click.option('--sigma_max', help='Highest noise level  [default: varies]', metavar='FLOAT',
                     type=click.FloatRange(min=0, min_open=True)),
        click.option('--rho', help='Time step exponent', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True),
                     default=7, show_default=True),
        click.option('--S_churn', 'S_churn', help='Stochasticity strength', metavar='FLOAT',
                     type=click.FloatRange(min=0), default=0, show_default=True),
        click.option('--S_min', 'S_min', help='Stoch. min noise level', metavar='FLOAT',
                     type=click.FloatRange(min=0), default=0, show_default=True),
        click.option('--S_max', 'S_max', help='Stoch. max noise level', metavar='FLOAT',
                     type=click.FloatRange(min=0), default='inf', show_default=True),
        click.option('--S_noise', 'S_noise', help='Stoch. noise inflation', metavar='FLOAT', type=float,
                     default=1, show_default=True),
        click.option('--disc', 'discretization', help='Ablate time step discretization {t_i}',
                     type=click.Choice(['vp', 've', 'iddpm', 'edm'])),
        click.option(sigma_schedule_flag, 'schedule', help='Ablate noise schedule sigma(t)',
                     type=click.Choice(['vp', 've', 'linear'])),
        click.option('--scaling', help='Ablate signal scaling s(t)', type=click.Choice(['vp', 'none'])),
        click.option('--device', help='Device  [default: cuda if available, else cpu]', metavar='DEVICE',
                     type=str, default=None, callback=parse_device),
        click.option('--trust-pickle', 'trust_pickle', is_flag=True,
                     help='Run the code embedded in the network pickle (only for files you trust)'),
    ]

    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def upstream_sampler(solver: Optional[str], discretization: Optional[str], schedule: Optional[str],
                     scaling: Optional[str], **sampler_kwargs) -> Sampler:
    """The sampler upstream generate.py picks: ablation_sampler if any ablation option is given, else edm_sampler."""
    sampler_kwargs = {key: value for key, value in sampler_kwargs.items() if value is not None}
    ablation = dict(solver=solver, discretization=discretization, schedule=schedule, scaling=scaling)
    ablation = {key: value for key, value in ablation.items() if value is not None}
    if ablation:
        return lambda net, latents, class_labels, randn_like: ablation_sampler(
            net, latents, class_labels, randn_like=randn_like, **ablation, **sampler_kwargs)
    return lambda net, latents, class_labels, randn_like: edm_sampler(
        net, latents, class_labels, randn_like=randn_like, **sampler_kwargs)


@click.command(cls=Command)
@click.option('--network', 'network_pkl', help='Network pickle filename or URL', metavar='PATH|URL', type=str, required=True)
@generate_options()
@click.option('--solver', help='Ablate ODE solver', type=click.Choice(['euler', 'heun']))
def main(network_pkl: str, outdir: str, seeds: List[int], subdirs: bool, class_idx: Optional[int],
         max_batch_size: int, device: torch.device, trust_pickle: bool, **sampler_kwargs) -> None:
    """Generate random images using the techniques described in the paper
    "Elucidating the Design Space of Diffusion-Based Generative Models".

    \b
    python -m edm.generate --outdir=out --seeds=0-63 --batch=64 \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl
    """
    dist.init()
    dist.print0(f'Loading network from "{network_pkl}"...')
    net = load_network(network_pkl, device, trust_pickle)
    dist.print0(f'Generating {len(seeds)} images to "{outdir}"...')
    generate_images(net, outdir, seeds, upstream_sampler(**sampler_kwargs), class_idx=class_idx,
                    max_batch_size=max_batch_size, subdirs=subdirs, device=device)
    dist.print0('Done.')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
