"""Main training loop (docs/edm-compat.md §7.5): EMA, ticks, snapshots, training-state dumps, stats.jsonl.

Runs on CPU or CUDA, as a world of one or under torchrun (DistributedDataParallel only when the world size is > 1).
"""
import copy
import json
import math
import os
import pickle
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import psutil
import torch

import dnnlib
from torch_utils import distributed as dist
from torch_utils import misc
from torch_utils import training_stats


def ema_beta(batch_size: int, cur_nimg: int, ema_halflife_kimg: float, ema_rampup_ratio: Optional[float]) -> float:
    """EMA decay per step: 0.5 ** (batch / max(half-life, 1e-8)), half-life capped at cur_nimg * ratio (§7.5)."""
    ema_halflife_nimg = ema_halflife_kimg * 1000
    if ema_rampup_ratio is not None:
        ema_halflife_nimg = min(ema_halflife_nimg, cur_nimg * ema_rampup_ratio)
    return 0.5 ** (batch_size / max(ema_halflife_nimg, 1e-8))


def learning_rate(lr: float, cur_nimg: int, lr_rampup_kimg: float) -> float:
    """lr * min(cur_nimg / (lr_rampup_kimg * 1000), 1) (§7.5)."""
    return lr * min(cur_nimg / max(lr_rampup_kimg * 1000, 1e-8), 1)


def load_training_state(path: str) -> dict:
    """Load a training-state-NNNNNN.pt dump written by this loop.

    The dump holds whole module objects, so it needs weights_only=False (torch >= 2.6 defaults to True). That runs
    pickled code: only use it on dumps you wrote yourself (train.py accepts only training-state-*.pt for --resume).
    """
    return torch.load(path, map_location=torch.device('cpu'), weights_only=False)


def resolution_multiple(channel_mult: Sequence[int]) -> int:
    """The UNets (SongUNet, DhariwalUNet) halve the image between their len(channel_mult) levels and take only sizes
    that are multiples of 2 ** (levels - 1): another size ends in a shape error at the first skip connection."""
    return 2 ** (len(channel_mult) - 1)


def network_interface(dataset_obj: Any) -> Dict[str, int]:
    """img_resolution, img_channels and label_dim of the network trained on a dataset."""
    return dict(img_resolution=dataset_obj.resolution, img_channels=dataset_obj.num_channels,
                label_dim=dataset_obj.label_dim)


def construct_network(network_kwargs: dict, interface: Dict[str, int], on_meta: bool = False) -> torch.nn.Module:
    """The network of network_kwargs (with its class_name) for a dataset's interface; on the meta device when asked
    (no weights drawn or held) and its constructor allows: VPPrecond and iDDPMPrecond read tensor values, which meta
    tensors lack, and are built on the CPU."""
    if on_meta:
        try:
            with torch.device('meta'):
                return dnnlib.util.construct_class_by_name(**network_kwargs, **interface)
        except Exception:
            pass
    return dnnlib.util.construct_class_by_name(**network_kwargs, **interface)


# A network the checks below compare with is built on the meta device from this many elements on: the first build
# there costs about 1.5 s (torch loads its meta kernels), while a smaller network is drawn on the CPU faster.
_META_BUILD_MIN_ELEMENTS = 20_000_000


def _summary(names: List[str], describe: Callable[[str], str] = str, shown: int = 2) -> str:
    """'N (a, b, ...)': a count and the first `shown` entries."""
    more = ', ...' if len(names) > shown else ''
    return f'{len(names)} ({", ".join(describe(name) for name in names[:shown])}{more})'


def network_mismatch(src: torch.nn.Module, network_kwargs: dict, interface: Dict[str, int],
                     exact: bool) -> Optional[str]:
    """What keeps the loop from starting the network of network_kwargs (for a dataset's interface) from `src`, a
    pickle's 'ema', in one line; None when nothing does.

    exact (a resume): the same class and the same parameter and buffer names and shapes, as the training state and
    the optimizer need. Otherwise (transfer learning; copy_params_and_buffers with require_all=False): at least one
    shared name, and no shared name with another shape."""
    kwargs = dict({k: v for k, v in network_kwargs.items() if k != 'class_name'}, **interface)
    src_class = f'{type(src).__module__}.{type(src).__name__}'
    src_kwargs = getattr(src, 'init_kwargs', None)
    if src_class == network_kwargs['class_name'] and src_kwargs == kwargs:
        return None                                                 # the same constructor call: the same tensors
    src_shapes = {name: list(t.shape) for name, t in misc.named_params_and_buffers(src)}
    on_meta = sum(math.prod(shape) for shape in src_shapes.values()) >= _META_BUILD_MIN_ELEMENTS
    with torch.random.fork_rng(devices=[]):                         # drawing the weights leaves the RNG as it was
        dst = construct_network(network_kwargs, interface, on_meta=on_meta)
    dst_shapes = {name: list(t.shape) for name, t in misc.named_params_and_buffers(dst)}
    missing, extra, reshaped = misc.shape_mismatch(dst_shapes, src_shapes)
    if exact:
        fits = src_class == network_kwargs['class_name'] and not (missing or extra or reshaped)
    else:
        fits = not reshaped and len(missing) < len(dst_shapes)
    if fits:
        return None
    differences = [f'{src_class} there, {network_kwargs["class_name"]} here'] \
        if src_class != network_kwargs['class_name'] else []
    if src_kwargs is not None:
        keys = [key for key in {**src_kwargs, **kwargs} if src_kwargs.get(key, kwargs) != kwargs.get(key, src_kwargs)]
        differences += [f'{key}={src_kwargs.get(key, "default")} there, {kwargs.get(key, "default")} here'
                        for key in keys]
    tensors = []
    if reshaped:
        tensors.append(f'{_summary(reshaped, lambda n: f"{n} {src_shapes[n]} there, {dst_shapes[n]} here")} of '
                       f'other shapes')
    if missing:
        tensors.append(f'{_summary(missing)} missing there')
    if extra:
        tensors.append(f'{_summary(extra)} only there')
    if tensors:
        differences = differences[:4] + (['...'] if len(differences) > 4 else []) + \
            [f'of the {len(dst_shapes)} tensors here, ' + ', '.join(tensors)]
    return '; '.join(differences)


def training_loop(
    run_dir: str = '.',                 # Output directory.
    dataset_kwargs: dict = {},          # Options for the training set.
    data_loader_kwargs: dict = {},      # Options for torch.utils.data.DataLoader.
    network_kwargs: dict = {},          # Options for the model and preconditioning.
    loss_kwargs: dict = {},             # Options for the loss function.
    optimizer_kwargs: dict = {},        # Options for the optimizer.
    augment_kwargs: Optional[dict] = None,  # Options for the augmentation pipeline, None = disable.
    seed: int = 0,                      # Global random seed.
    batch_size: int = 512,              # Total batch size for one training iteration.
    batch_gpu: Optional[int] = None,    # Limit batch size per device, None = no limit.
    total_kimg: int = 200000,           # Training duration, measured in thousands of training images.
    ema_halflife_kimg: float = 500,     # Half-life of the exponential moving average (EMA) of model weights.
    ema_rampup_ratio: Optional[float] = 0.05,  # EMA ramp-up coefficient, None = no rampup.
    lr_rampup_kimg: float = 10000,      # Learning rate ramp-up duration.
    loss_scaling: float = 1,            # Loss scaling factor for reducing FP16 under/overflows.
    kimg_per_tick: float = 50,          # Interval of progress prints.
    snapshot_ticks: Optional[int] = 50,  # How often to save network snapshots, None = disable.
    state_dump_ticks: Optional[int] = 500,  # How often to dump training state, None = disable.
    resume_pkl: Optional[str] = None,   # Start from the given network snapshot, None = random initialization.
    resume_state_dump: Optional[str] = None,  # Start from the given training state, None = reset training state.
    resume_kimg: int = 0,               # Start from the given training progress.
    cudnn_benchmark: bool = True,       # Enable torch.backends.cudnn.benchmark?
    load_pkl: Optional[Callable[[str], dict]] = None,  # Reads resume_pkl into a dict with 'ema' (given by the caller).
    device: torch.device = torch.device('cuda') if torch.cuda.is_available() else torch.device('cpu'),
) -> None:
    """Train a diffusion model and write snapshots, state dumps and stats.jsonl to run_dir.

    The caller passes `load_pkl` (edm.train passes the safe loader, edm.loading.load_network_pkl) when resume_pkl is
    given, so that this module needs nothing above `training/`.
    """
    if resume_pkl is not None and load_pkl is None:
        raise ValueError('resume_pkl needs load_pkl, the function that reads a network pickle')
    device = torch.device(device)
    cuda = device.type == 'cuda'
    rank, world = dist.get_rank(), dist.get_world_size()

    # Initialize (§7.5): per-rank seeding, TF32 off.
    start_time = time.time()
    np.random.seed((seed * world + rank) % (1 << 31))
    torch.manual_seed(np.random.randint(1 << 31))
    if cuda:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False

    # Select batch size per device.
    batch_gpu_total = batch_size // world
    if batch_gpu is None or batch_gpu > batch_gpu_total:
        batch_gpu = batch_gpu_total
    num_accumulation_rounds = batch_gpu_total // batch_gpu
    if not (batch_size == batch_gpu * num_accumulation_rounds * world):
        raise ValueError(f'batch size {batch_size} is not divisible by batch_gpu {batch_gpu} x world size {world}')

    # Load dataset.
    dist.print0('Loading dataset...')
    dataset_obj = dnnlib.util.construct_class_by_name(**dataset_kwargs)
    dataset_sampler = misc.InfiniteSampler(dataset=dataset_obj, rank=rank, num_replicas=world, seed=seed)
    loader_kwargs = dict(data_loader_kwargs)
    if not cuda:
        loader_kwargs.pop('pin_memory', None)
    if loader_kwargs.get('num_workers', 0) == 0:
        loader_kwargs.pop('prefetch_factor', None)
    dataset_iterator = iter(torch.utils.data.DataLoader(dataset=dataset_obj, sampler=dataset_sampler,
                                                        batch_size=batch_gpu, **loader_kwargs))

    # Construct network.
    dist.print0('Constructing network...')
    net = construct_network(network_kwargs, network_interface(dataset_obj))
    net.train().requires_grad_(True).to(device)
    if rank == 0:
        with torch.no_grad():
            images = torch.zeros([batch_gpu, net.img_channels, net.img_resolution, net.img_resolution], device=device)
            sigma = torch.ones([batch_gpu], device=device)
            labels = torch.zeros([batch_gpu, net.label_dim], device=device)
            misc.print_module_summary(net, [images, sigma, labels], max_nesting=2)

    # Setup optimizer.
    dist.print0('Setting up optimizer...')
    loss_fn = dnnlib.util.construct_class_by_name(**loss_kwargs)
    optimizer = dnnlib.util.construct_class_by_name(params=net.parameters(), **optimizer_kwargs)
    augment_pipe = dnnlib.util.construct_class_by_name(**augment_kwargs) if augment_kwargs is not None else None
    ddp = net
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if cuda else None)
    ema = copy.deepcopy(net).eval().requires_grad_(False)

    # Resume training from previous snapshot ("rank 0 first").
    if resume_pkl is not None:
        dist.print0(f'Loading network weights from "{resume_pkl}"...')
        with dist.rank0_first():
            data = load_pkl(resume_pkl)
        misc.copy_params_and_buffers(src_module=data['ema'], dst_module=net, require_all=False)
        misc.copy_params_and_buffers(src_module=data['ema'], dst_module=ema, require_all=False)
        del data
    if resume_state_dump:
        dist.print0(f'Loading training state from "{resume_state_dump}"...')
        data = load_training_state(resume_state_dump)
        misc.copy_params_and_buffers(src_module=data['net'], dst_module=net, require_all=True)
        optimizer.load_state_dict(data['optimizer_state'])
        del data

    # Train.
    dist.print0(f'Training for {total_kimg} kimg...')
    dist.print0()
    cur_nimg = resume_kimg * 1000
    cur_tick = 0
    tick_start_nimg = cur_nimg
    tick_start_time = time.time()
    maintenance_time = tick_start_time - start_time
    dist.update_progress(cur_nimg // 1000, total_kimg)
    stats_jsonl = None
    while True:

        # Accumulate gradients.
        optimizer.zero_grad(set_to_none=True)
        for round_idx in range(num_accumulation_rounds):
            with misc.ddp_sync(ddp, (round_idx == num_accumulation_rounds - 1)):
                images, labels = next(dataset_iterator)
                images = images.to(device).to(torch.float32) / 127.5 - 1
                labels = labels.to(device)
                loss = loss_fn(net=ddp, images=images, labels=labels, augment_pipe=augment_pipe)
                training_stats.report('Loss/loss', loss)
                loss.sum().mul(loss_scaling / batch_gpu_total).backward()

        # Update weights: learning-rate ramp-up, nan_to_num of gradients, optimizer step.
        for g in optimizer.param_groups:
            g['lr'] = learning_rate(optimizer_kwargs['lr'], cur_nimg, lr_rampup_kimg)
        for param in net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
        optimizer.step()

        # Update EMA (parameters only).
        beta = ema_beta(batch_size, cur_nimg, ema_halflife_kimg, ema_rampup_ratio)
        with torch.no_grad():
            for p_ema, p_net in zip(ema.parameters(), net.parameters()):
                p_ema.copy_(p_net.detach().lerp(p_ema, beta))

        # Perform maintenance tasks once per tick.
        cur_nimg += batch_size
        done = (cur_nimg >= total_kimg * 1000)
        if (not done) and (cur_tick != 0) and (cur_nimg < tick_start_nimg + kimg_per_tick * 1000):
            continue

        # Print status line, accumulating the same information in training_stats.
        tick_end_time = time.time()
        tick_sec, tick_nimg = tick_end_time - tick_start_time, max(cur_nimg - tick_start_nimg, 1)
        report, gib = training_stats.report0, 2 ** 30
        fields = [f"tick {report('Progress/tick', cur_tick):<5d}",
                  f"kimg {report('Progress/kimg', cur_nimg / 1e3):<9.1f}",
                  f"time {dnnlib.util.format_time(report('Timing/total_sec', tick_end_time - start_time)):<12s}",
                  f"sec/tick {report('Timing/sec_per_tick', tick_sec):<7.1f}",
                  f"sec/kimg {report('Timing/sec_per_kimg', tick_sec / tick_nimg * 1e3):<7.2f}",
                  f"maintenance {report('Timing/maintenance_sec', maintenance_time):<6.1f}",
                  f"cpumem {report('Resources/cpu_mem_gb', psutil.Process(os.getpid()).memory_info().rss / gib):<6.2f}"]
        if cuda:  # GPU memory statistics only exist on CUDA; no CUDA call is made on a CPU run
            peak, reserved = torch.cuda.max_memory_allocated(device) / gib, torch.cuda.max_memory_reserved(device) / gib
            fields += [f"gpumem {report('Resources/peak_gpu_mem_gb', peak):<6.2f}",
                       f"reserved {report('Resources/peak_gpu_mem_reserved_gb', reserved):<6.2f}"]
            torch.cuda.reset_peak_memory_stats()
        dist.print0(' '.join(fields))

        # Check for abort.
        if (not done) and dist.should_stop():
            done = True
            dist.print0()
            dist.print0('Aborting...')

        # Save network snapshot: deep copies on the CPU, consistency-checked across ranks; rank 0 writes atomically.
        if (snapshot_ticks is not None) and (done or cur_tick % snapshot_ticks == 0):
            data = dict(ema=ema, loss_fn=loss_fn, augment_pipe=augment_pipe, dataset_kwargs=dict(dataset_kwargs))
            for key, value in data.items():
                if isinstance(value, torch.nn.Module):
                    value = copy.deepcopy(value).eval().requires_grad_(False)
                    misc.check_ddp_consistency(value)
                    data[key] = value.cpu()
                del value  # conserve memory
            if rank == 0:
                dnnlib.util.atomic_write(os.path.join(run_dir, f'network-snapshot-{cur_nimg // 1000:06d}.pkl'),
                                         lambda f: pickle.dump(data, f))
            del data  # conserve memory

        # Save full dump of the training state.
        if (state_dump_ticks is not None) and (done or cur_tick % state_dump_ticks == 0) and cur_tick != 0 \
                and rank == 0:
            state = dict(net=net, optimizer_state=optimizer.state_dict())
            dnnlib.util.atomic_write(os.path.join(run_dir, f'training-state-{cur_nimg // 1000:06d}.pt'),
                                     lambda f: torch.save(state, f))

        # Update logs.
        training_stats.default_collector.update()
        if rank == 0:
            if stats_jsonl is None:
                stats_jsonl = open(os.path.join(run_dir, 'stats.jsonl'), 'at')
            entry = dict(training_stats.default_collector.as_dict(), timestamp=time.time())
            stats_jsonl.write(json.dumps(entry) + '\n')
            stats_jsonl.flush()
        dist.update_progress(cur_nimg // 1000, total_kimg)

        # Update state.
        cur_tick += 1
        tick_start_nimg = cur_nimg
        tick_start_time = time.time()
        maintenance_time = tick_start_time - tick_end_time
        if done:
            break

    # Done.
    if stats_jsonl is not None:
        stats_jsonl.close()
    dist.print0()
    dist.print0('Exiting...')
