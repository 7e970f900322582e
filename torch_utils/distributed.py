"""Thin wrapper over torch.distributed: works under torchrun and as a plain `python script.py` (a world of one).

NCCL on CUDA machines, gloo otherwise. On a machine without CUDA no CUDA function other than
`torch.cuda.is_available()` is ever called.
"""
import contextlib
import math
import os
import socket
from typing import Any, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist

from . import training_stats


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def device() -> torch.device:
    """The device this rank should use by default: cuda:LOCAL_RANK when CUDA is available, else cpu."""
    if torch.cuda.is_available():
        return torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
    return torch.device('cpu')


def init(backend: Optional[str] = None) -> None:
    """Join (or create) the process group from torchrun's environment; idempotent. backend: default nccl/gloo."""
    if dist.is_initialized():
        return
    os.environ.setdefault('MASTER_ADDR', 'localhost')
    if 'MASTER_PORT' not in os.environ:
        # A plain process gets a free port, so that two of them can run side by side.
        single = int(os.environ.get('WORLD_SIZE', '1')) == 1
        os.environ['MASTER_PORT'] = str(_free_port()) if single else '29500'
    os.environ.setdefault('RANK', '0')
    os.environ.setdefault('LOCAL_RANK', '0')
    os.environ.setdefault('WORLD_SIZE', '1')

    cuda = torch.cuda.is_available()
    if backend is None:
        backend = 'nccl' if cuda else 'gloo'
    if cuda:
        torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
    dist.init_process_group(backend=backend, init_method='env://')

    world = get_world_size()
    if world > 1:
        sync_device = torch.device('cuda', torch.cuda.current_device()) if backend == 'nccl' else torch.device('cpu')
    else:
        sync_device = None
    training_stats.init_multiprocessing(rank=get_rank(), sync_device=sync_device)


def get_rank() -> int:
    """Rank of this process (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for all ranks; a no-op without a process group or in a world of one."""
    if get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def rank0_first() -> Iterator[None]:
    """The body runs on rank 0 first, then on the other ranks (a download or cache fill happens once); the ranks
    meet again even when rank 0's body raises."""
    if get_rank() != 0:
        barrier()
    try:
        yield
    finally:
        if get_rank() == 0:
            barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank src's obj (picklable) on every rank; obj itself in a world of one."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rank_batches(items: Sequence[int], max_batch_size: int, rank: int, world_size: int) -> List[torch.Tensor]:
    """This rank's batches of `items` (seeds, image indices) as upstream splits them: ceil(n / (B * W)) * W nearly
    equal chunks in order, of which rank r takes r, r + W, r + 2W, ... (some may be empty)."""
    num_batches = max(math.ceil(len(items) / (max_batch_size * world_size)), 1) * world_size
    chunks = torch.as_tensor(list(items), dtype=torch.int64).tensor_split(num_batches)
    return list(chunks[rank::world_size])


def should_stop() -> bool:
    """Hook for cluster schedulers that want the training loop to stop early; always False."""
    return False


def update_progress(cur: int, total: int) -> None:
    """Hook for cluster schedulers that track progress; does nothing."""
    _ = cur, total


def print0(*args: Any, **kwargs: Any) -> None:
    """print() on rank 0 only."""
    if get_rank() == 0:
        print(*args, **kwargs)
