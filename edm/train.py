"""Train diffusion models: `python -m edm.train` (upstream train.py options, docs/edm-compat.md §7.1).

Example: torchrun --standalone --nproc_per_node=8 -m edm.train --outdir=training-runs \\
             --data=datasets/cifar10-32x32.zip --cond=1 --arch=ddpmpp
"""
import json
import os
import re
import warnings
from typing import Any, Dict, List

import click
import torch

import dnnlib
from dnnlib.util import UserError
from edm.cli import Command, check_output_dir, int_list_callback, parse_device
from edm.imagegen import load_on_ranks
from edm.loading import load_network_pkl
from torch_utils import distributed as dist
from training import training_loop

warnings.filterwarnings('ignore', 'Grad strides do not match bucket view strides')  # False warning printed by DDP.


def network_config(arch: str, precond: str) -> dnnlib.EasyDict:
    """network_kwargs for --arch and --precond (§4.7)."""
    net = dnnlib.EasyDict()
    if arch == 'ddpmpp':
        net.update(model_type='SongUNet', embedding_type='positional', encoder_type='standard',
                   decoder_type='standard', channel_mult_noise=1, resample_filter=[1, 1], model_channels=128,
                   channel_mult=[2, 2, 2])
    elif arch == 'ncsnpp':
        net.update(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2])
    else:
        assert arch == 'adm'
        net.update(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4])
    net.class_name = {'vp': 'training.networks.VPPrecond', 've': 'training.networks.VEPrecond',
                      'edm': 'training.networks.EDMPrecond'}[precond]
    return net


def loss_config(precond: str) -> dnnlib.EasyDict:
    """loss_kwargs for --precond."""
    return dnnlib.EasyDict(class_name={'vp': 'training.loss.VPLoss', 've': 'training.loss.VELoss',
                                       'edm': 'training.loss.EDMLoss'}[precond])


@click.command(cls=Command)
# Main options.
@click.option('--outdir', help='Where to save the results', metavar='DIR', type=str, required=True)
@click.option('--data', help='Path to the dataset', metavar='ZIP|DIR', type=str, required=True)
@click.option('--cond', help='Train class-conditional model', metavar='BOOL', type=bool, default=False,
              show_default=True)
@click.option('--arch', help='Network architecture', metavar='ddpmpp|ncsnpp|adm',
              type=click.Choice(['ddpmpp', 'ncsnpp', 'adm']), default='ddpmpp', show_default=True)
@click.option('--precond', help='Preconditioning & loss function', metavar='vp|ve|edm',
              type=click.Choice(['vp', 've', 'edm']), default='edm', show_default=True)
# Hyperparameters.
@click.option('--duration', help='Training duration', metavar='MIMG', type=click.FloatRange(min=0, min_open=True),
              default=200, show_default=True)
@click.option('--batch', help='Total batch size', metavar='INT', type=click.IntRange(min=1), default=512,
              show_default=True)
@click.option('--batch-gpu', help='Limit batch size per GPU', metavar='INT', type=click.IntRange(min=1))
@click.option('--cbase', help='Channel multiplier  [default: varies]', metavar='INT', type=click.IntRange(min=1))
@click.option('--cres', help='Channels per resolution  [default: varies]', metavar='LIST', type=str,
              callback=int_list_callback(1, 'channel multipliers'))
@click.option('--lr', help='Learning rate', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True),
              default=10e-4, show_default=True)
@click.option('--ema', help='EMA half-life', metavar='MIMG', type=click.FloatRange(min=0), default=0.5,
              show_default=True)
@click.option('--dropout', help='Dropout probability', metavar='FLOAT', type=click.FloatRange(min=0, max=1),
              default=0.13, show_default=True)
@click.option('--augment', help='Augment probability', metavar='FLOAT', type=click.FloatRange(min=0, max=1),
              default=0.12, show_default=True)
@click.option('--xflip', help='Enable dataset x-flips', metavar='BOOL', type=bool, default=False, show_default=True)
# Performance-related.
@click.option('--fp16', help='Enable mixed-precision training', metavar='BOOL', type=bool, default=False,
              show_default=True)
@click.option('--ls', help='Loss scaling', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=1,
              show_default=True)
@click.option('--bench', help='Enable cuDNN benchmarking', metavar='BOOL', type=bool, default=True,
              show_default=True)
@click.option('--cache', help='Cache dataset in CPU memory', metavar='BOOL', type=bool, default=True,
              show_default=True)
@click.option('--workers', help='DataLoader worker processes', metavar='INT', type=click.IntRange(min=0), default=1,
              show_default=True)
# I/O-related.
@click.option('--desc', help='String to include in result dir name', metavar='STR', type=str)
@click.option('--nosubdir', help='Do not create a subdirectory for results', is_flag=True)
@click.option('--tick', help='How often to print progress', metavar='KIMG', type=click.IntRange(min=1), default=50,
              show_default=True)
@click.option('--snap', help='How often to save snapshots', metavar='TICKS', type=click.IntRange(min=1), default=50,
              show_default=True)
@click.option('--dump', help='How often to dump state', metavar='TICKS', type=click.IntRange(min=1), default=500,
              show_default=True)
@click.option('--seed', help='Random seed  [default: random]', metavar='INT', type=click.IntRange(0, 2 ** 32 - 1))
@click.option('--transfer', help='Transfer learning from network pickle', metavar='PKL|URL', type=str)
@click.option('--resume', help='Resume from previous training state', metavar='PT', type=str)
@click.option('-n', '--dry-run', help='Print training options and exit', is_flag=True)
# Ours.
@click.option('--blocks', help='Residual blocks per resolution  [default: varies]', metavar='INT',
              type=click.IntRange(min=1))
@click.option('--lr-rampup', help='Learning-rate ramp-up  [default: 10000]', metavar='KIMG',
              type=click.FloatRange(min=0))
@click.option('--device', help='Device (cpu, cuda, cuda:N)  [default: cuda if available, else cpu]', metavar='DEV',
              type=str, default=None, callback=parse_device)
def main(**kwargs: Any) -> None:
    """Train diffusion-based generative model using the techniques described in the paper
    "Elucidating the Design Space of Diffusion-Based Generative Models"."""
    opts = dnnlib.EasyDict(kwargs)
    device: torch.device = opts.device
    torch.multiprocessing.set_start_method('spawn', force=True)
    dist.init(backend='nccl' if device.type == 'cuda' else 'gloo')
    run(opts)


def build_config(opts: dnnlib.EasyDict) -> dnnlib.EasyDict:
    """Turn parsed options into the keyword arguments of training_loop() (§7.1)."""
    check_output_dir(opts.outdir, '--outdir')
    c = dnnlib.EasyDict()
    c.dataset_kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=opts.data,
                                       use_labels=opts.cond, xflip=opts.xflip, cache=opts.cache)
    c.data_loader_kwargs = dnnlib.EasyDict(pin_memory=True, num_workers=opts.workers, prefetch_factor=2)
    c.network_kwargs = dnnlib.EasyDict()
    c.loss_kwargs = dnnlib.EasyDict()
    c.optimizer_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=opts.lr, betas=[0.9, 0.999], eps=1e-8)

    # Validate dataset options; train.py records resolution and max_size explicitly.
    try:
        dataset_obj = dnnlib.util.construct_class_by_name(**c.dataset_kwargs)
    except UserError:
        raise
    except (OSError, ValueError) as exc:
        raise UserError(f'cannot read dataset {opts.data!r}: {exc}') from None
    dataset_name = dataset_obj.name
    _channels, height, width = dataset_obj.image_shape
    if height != width:
        raise UserError(f'{opts.data!r} holds {width}x{height} images, but the networks take square ones; make them '
                        f'square with edm.dataset_tool --transform=center-crop --resolution=NxN')
    interface = training_loop.network_interface(dataset_obj)
    c.dataset_kwargs.resolution = dataset_obj.resolution
    c.dataset_kwargs.max_size = len(dataset_obj)
    if opts.cond and not dataset_obj.has_labels:
        raise UserError('--cond=True requires labels specified in dataset.json')
    del dataset_obj  # conserve memory

    # Network architecture, preconditioning and loss.
    c.network_kwargs.update(network_config(opts.arch, opts.precond))
    c.loss_kwargs.update(loss_config(opts.precond))

    # Network options.
    if opts.cbase is not None:
        c.network_kwargs.model_channels = opts.cbase
    if opts.cres is not None:
        c.network_kwargs.channel_mult = opts.cres
    if opts.augment:
        c.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe', p=opts.augment)
        c.augment_kwargs.update(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
        c.network_kwargs.augment_dim = 9
    if opts.blocks is not None:
        c.network_kwargs.num_blocks = opts.blocks
    c.network_kwargs.update(dropout=opts.dropout, use_fp16=opts.fp16)
    check_resolution(interface['img_resolution'], c.network_kwargs.channel_mult, opts.arch)

    # Training options.
    c.total_kimg = max(int(opts.duration * 1000), 1)
    ema_kimg = opts.ema * 1000
    c.ema_halflife_kimg = int(ema_kimg) if float(ema_kimg).is_integer() else ema_kimg  # no silent truncation
    c.update(batch_size=opts.batch, batch_gpu=opts.batch_gpu)
    c.update(loss_scaling=opts.ls, cudnn_benchmark=opts.bench)
    if opts.lr_rampup is not None:
        c.lr_rampup_kimg = opts.lr_rampup
    c.update(kimg_per_tick=opts.tick, snapshot_ticks=opts.snap, state_dump_ticks=opts.dump)
    c.device = str(opts.device)

    # Random seed: drawn on rank 0 and broadcast when not given.
    if opts.seed is not None:
        c.seed = opts.seed
    else:
        seed = torch.randint(1 << 31, size=[], device=torch.device('cpu'))
        if dist.get_world_size() > 1:
            seed = seed.to(opts.device) if torch.device(opts.device).type == 'cuda' else seed
            torch.distributed.broadcast(seed, src=0)
        c.seed = int(seed)

    # Transfer learning and resume.
    if opts.transfer is not None:
        if opts.resume is not None:
            raise UserError('--transfer and --resume cannot be specified at the same time')
        c.resume_pkl = opts.transfer
        c.ema_rampup_ratio = None
    elif opts.resume is not None:
        match = re.fullmatch(r'training-state-(\d+)\.pt', os.path.basename(opts.resume))
        if not match or not os.path.isfile(opts.resume):
            raise UserError('--resume must point to training-state-*.pt from a previous training run')
        c.resume_pkl = os.path.join(os.path.dirname(opts.resume), f'network-snapshot-{match.group(1)}.pkl')
        if not os.path.isfile(c.resume_pkl):
            raise UserError(f'--resume: the matching network snapshot {c.resume_pkl!r} does not exist')
        c.resume_kimg = int(match.group(1))
        c.resume_state_dump = opts.resume
    if 'resume_pkl' in c:
        check_start_network(c.resume_pkl, c.network_kwargs, interface, '--transfer' if opts.transfer else '--resume')

    # Description string.
    cond_str = 'cond' if c.dataset_kwargs.use_labels else 'uncond'
    dtype_str = 'fp16' if c.network_kwargs.use_fp16 else 'fp32'
    desc = (f'{dataset_name:s}-{cond_str:s}-{opts.arch:s}-{opts.precond:s}-gpus{dist.get_world_size():d}'
            f'-batch{c.batch_size:d}-{dtype_str:s}')
    if opts.desc is not None:
        desc += f'-{opts.desc}'

    # Pick output directory.
    if dist.get_rank() != 0:
        c.run_dir = None
    elif opts.nosubdir:
        c.run_dir = opts.outdir
    else:
        c.run_dir = dnnlib.util.next_run_dir(opts.outdir, desc)
        if os.path.exists(c.run_dir):
            raise UserError(f'run directory {c.run_dir!r} already exists')
    return c


def check_resolution(resolution: int, channel_mult: List[int], arch: str) -> None:
    """UserError unless the UNet's levels can halve images of this size (the dry run checks it too)."""
    multiple = training_loop.resolution_multiple(channel_mult)
    if resolution % multiple:
        raise UserError(f'{resolution}x{resolution} images do not fit the {arch} network: its {len(channel_mult)} '
                        f'levels (--cres={",".join(map(str, channel_mult))}) halve the image {len(channel_mult) - 1} '
                        f'times, so the size must be a multiple of {multiple}; resize the dataset (edm.dataset_tool '
                        f'--resolution) or give fewer levels with --cres')


def check_start_network(pkl: str, network_kwargs: dict, interface: Dict[str, int], option: str) -> None:
    """UserError unless the network in `pkl` (--resume's snapshot, --transfer's pickle) can start this run's network:
    read on every rank (rank 0 first, as it may download), before any work and before the run folder exists."""
    try:
        src = load_on_ranks(lambda spec: load_network_pkl(spec)['ema'], pkl, torch.device('cpu'))
    except UserError as exc:
        raise UserError(f'{option}: {exc}') from None
    problem = training_loop.network_mismatch(src, network_kwargs, interface, exact=(option == '--resume'))
    if problem is not None:
        advice = ('resume with the options and dataset of the run that wrote it (its training_options.json)'
                  if option == '--resume' else 'give a pickle of this architecture, or options and data that fit it')
        raise UserError(f'{option}: the network in {pkl} does not fit this run\'s ({problem}); {advice}')


def run(opts: dnnlib.EasyDict) -> None:
    """Build the config, print it, and (unless --dry-run) create the run directory and train."""
    c = build_config(opts)

    # Print options.
    dist.print0()
    dist.print0('Training options:')
    dist.print0(json.dumps(c, indent=2))
    dist.print0()
    dist.print0(f'Output directory:        {c.run_dir}')
    dist.print0(f'Dataset path:            {c.dataset_kwargs.path}')
    dist.print0(f'Class-conditional:       {c.dataset_kwargs.use_labels}')
    dist.print0(f'Network architecture:    {opts.arch}')
    dist.print0(f'Preconditioning & loss:  {opts.precond}')
    dist.print0(f'Number of GPUs:          {dist.get_world_size()}')
    dist.print0(f'Batch size:              {c.batch_size}')
    dist.print0(f'Mixed-precision:         {c.network_kwargs.use_fp16}')
    dist.print0(f'Device:                  {c.device}')
    dist.print0()

    # Dry run?
    if opts.dry_run:
        dist.print0('Dry run; exiting.')
        return

    # Create output directory.
    dist.print0('Creating output directory...')
    logger = None
    if dist.get_rank() == 0:
        os.makedirs(c.run_dir, exist_ok=True)
        dnnlib.util.atomic_write_json(os.path.join(c.run_dir, 'training_options.json'), c)
        logger = dnnlib.util.Logger(file_name=os.path.join(c.run_dir, 'log.txt'), file_mode='a', should_flush=True)

    # Train.
    try:
        training_loop.training_loop(**c, load_pkl=load_network_pkl)
    finally:
        if logger is not None:
            logger.close()
    dist.barrier()


if __name__ == '__main__':
    main()
