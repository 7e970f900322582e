"""Assorted torch helpers used by the training stack and by upstream network pickles (`constant`)."""
import contextlib
import re
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

import dnnlib

# ----------------------------------------------------------------------------------------------------------------------
# Cached constants and small tensor helpers.

_constant_cache: Dict[tuple, torch.Tensor] = {}


def constant(value: Any, shape: Optional[Sequence[int]] = None, dtype: Optional[torch.dtype] = None,
             device: Optional[Union[str, torch.device]] = None,
             memory_format: Optional[torch.memory_format] = None) -> torch.Tensor:
    """A tensor holding value (broadcast to shape), cached so equal requests return the same object; do not modify."""
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    device = torch.device('cpu') if device is None else torch.device(device)
    if memory_format is None:
        memory_format = torch.contiguous_format
    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    tensor = _constant_cache.get(key)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor = torch.broadcast_to(tensor, shape)
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor


def nan_to_num(input: torch.Tensor, nan: float = 0.0, posinf: Optional[float] = None,
               neginf: Optional[float] = None, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Replace nan, +inf and -inf by finite numbers (torch.nan_to_num)."""
    return torch.nan_to_num(input, nan=nan, posinf=posinf, neginf=neginf, out=out)


def symbolic_assert(condition: Any, message: str = '') -> None:
    """An assert that also works while tracing (torch._assert)."""
    torch._assert(condition, message)


@contextlib.contextmanager
def suppress_tracer_warnings() -> Iterator[None]:
    """Silence torch.jit.TracerWarning inside the block (for shape checks made while tracing)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', category=torch.jit.TracerWarning)
        yield


def assert_shape(tensor: torch.Tensor, ref_shape: Sequence[Optional[Union[int, torch.Tensor]]]) -> None:
    """Raise AssertionError unless tensor.shape matches ref_shape (None entries match any size)."""
    if tensor.ndim != len(ref_shape):
        raise AssertionError(f'Wrong number of dimensions: got {tensor.ndim}, expected {len(ref_shape)}')
    for idx, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape)):
        if ref_size is None:
            continue
        if isinstance(ref_size, torch.Tensor) or isinstance(size, torch.Tensor):
            with suppress_tracer_warnings():
                ok = bool(torch.equal(torch.as_tensor(size), torch.as_tensor(ref_size)))
        else:
            ok = size == ref_size
        if not ok:
            raise AssertionError(f'Wrong size for dimension {idx}: got {size}, expected {ref_size}')


def profiled_function(fn: Any) -> Any:
    """Decorator that names the function's region in the autograd profiler."""
    def decorator(*args: Any, **kwargs: Any) -> Any:
        with torch.autograd.profiler.record_function(fn.__name__):
            return fn(*args, **kwargs)
    decorator.__name__ = fn.__name__
    decorator.__doc__ = fn.__doc__
    return decorator


# ----------------------------------------------------------------------------------------------------------------------
# Sampler.


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless stream of dataset indices, split across ranks, reshuffled gradually by swaps within a sliding window."""

    def __init__(self, dataset: Any, rank: int = 0, num_replicas: int = 1, shuffle: bool = True, seed: int = 0,
                 window_size: float = 0.5):
        if len(dataset) <= 0:
            raise ValueError('InfiniteSampler needs a non-empty dataset')
        if num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f'invalid rank {rank} for num_replicas {num_replicas}')
        if not 0 <= window_size <= 1:
            raise ValueError('window_size must be in [0, 1]')
        super().__init__()
        self.dataset = dataset
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.window_size = window_size

    def __iter__(self) -> Iterator[int]:
        order = np.arange(len(self.dataset))
        rnd = None
        window = 0
        if self.shuffle:
            rnd = np.random.RandomState(self.seed)
            rnd.shuffle(order)
            window = int(np.rint(order.size * self.window_size))
        # Every rank walks the same sequence (same RNG draws) and keeps every num_replicas-th position.
        idx = 0
        while True:
            i = idx % order.size
            if idx % self.num_replicas == self.rank:
                yield int(order[i])
            if window >= 2:
                j = (i - rnd.randint(window)) % order.size
                order[i], order[j] = order[j], order[i]
            idx += 1


# ----------------------------------------------------------------------------------------------------------------------
# Parameters, buffers and DDP.


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (cpu if it has none)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device('cpu')


def params_and_buffers(module: torch.nn.Module) -> List[torch.Tensor]:
    """All parameters followed by all buffers of module."""
    return list(module.parameters()) + list(module.buffers())


def shape_mismatch(expected: Dict[str, Sequence[int]],
                   found: Dict[str, Sequence[int]]) -> Tuple[List[str], List[str], List[str]]:
    """Tensor names of `expected` missing from `found`, names only in `found`, and shared names of another shape
    (in the order of the dicts)."""
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in expected]
    reshaped = [name for name in expected if name in found and list(found[name]) != list(expected[name])]
    return missing, extra, reshaped


def named_params_and_buffers(module: torch.nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """(name, tensor) for all parameters followed by all buffers of module."""
    return list(module.named_parameters()) + list(module.named_buffers())


@torch.no_grad()
def copy_params_and_buffers(src_module: torch.nn.Module, dst_module: torch.nn.Module,
                            require_all: bool = False) -> None:
    """Copy same-named parameters and buffers from src_module into dst_module (all of dst's if require_all)."""
    src = dict(named_params_and_buffers(src_module))
    for name, tensor in named_params_and_buffers(dst_module):
        if name not in src:
            if require_all:
                raise KeyError(f'copy_params_and_buffers: "{name}" is missing in the source module')
            continue
        if src[name].shape != tensor.shape:
            raise ValueError(f'copy_params_and_buffers: "{name}" has shape {list(src[name].shape)} in the source '
                             f'but {list(tensor.shape)} in the destination')
        tensor.copy_(src[name].detach())


@contextlib.contextmanager
def ddp_sync(module: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Inside the block, a DistributedDataParallel module skips gradient all-reduce unless sync is True."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError('ddp_sync expects a torch.nn.Module')
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield


def check_ddp_consistency(module: torch.nn.Module, ignore_regex: Optional[str] = None) -> None:
    """Assert that every parameter and buffer equals rank 0's copy (no-op without a process group of 2+)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    for name, tensor in named_params_and_buffers(module):
        full_name = type(module).__name__ + '.' + name
        if ignore_regex is not None and re.fullmatch(ignore_regex, full_name):
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = nan_to_num(tensor)  # nan != nan would fail the comparison
        other = tensor.clone()
        dist.broadcast(tensor=other, src=0)
        if not (tensor == other).all():
            raise AssertionError(f'DDP consistency check failed: {full_name} differs from rank 0')


# ----------------------------------------------------------------------------------------------------------------------
# Module summary.


def print_module_summary(module: torch.nn.Module, inputs: Sequence[Any], max_nesting: int = 3,
                         skip_redundant: bool = True) -> Any:
    """Run module(*inputs), print a table of submodules (params, buffers, output shape, dtype); return the outputs."""
    if not isinstance(module, torch.nn.Module) or isinstance(module, torch.jit.ScriptModule):
        raise TypeError('print_module_summary expects a (non-scripted) torch.nn.Module')
    if not isinstance(inputs, (tuple, list)):
        raise TypeError('inputs must be a tuple or list')

    # Record each submodule call (innermost first) that lies within max_nesting levels.
    entries: List[dnnlib.EasyDict] = []
    depth = [0]

    def pre_hook(_mod: torch.nn.Module, _inputs: Any) -> None:
        depth[0] += 1

    def post_hook(mod: torch.nn.Module, _inputs: Any, outputs: Any) -> None:
        depth[0] -= 1
        if depth[0] <= max_nesting:
            outs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            entries.append(dnnlib.EasyDict(mod=mod, outputs=[t for t in outs if isinstance(t, torch.Tensor)]))

    handles = [m.register_forward_pre_hook(pre_hook) for m in module.modules()]
    handles += [m.register_forward_hook(post_hook) for m in module.modules()]
    try:
        outputs = module(*inputs)
    finally:
        for h in handles:
            h.remove()

    # Attribute each tensor to the first (innermost) entry that owns it.
    seen: set = set()
    for e in entries:
        e.params = [t for t in e.mod.parameters() if id(t) not in seen]
        e.buffers = [t for t in e.mod.buffers() if id(t) not in seen]
        e.new_outputs = [t for t in e.outputs if id(t) not in seen]
        seen |= {id(t) for t in e.params + e.buffers + e.new_outputs}
    if skip_redundant:
        entries = [e for e in entries if e.params or e.buffers or e.new_outputs]

    # Build and print the table.
    names = {mod: name for name, mod in module.named_modules()}
    names[module] = '<top-level>'
    rows = [[type(module).__name__, 'Parameters', 'Buffers', 'Output shape', 'Datatype']]
    rows.append(None)  # separator
    total_params = total_buffers = 0
    for e in entries:
        name = names.get(e.mod, type(e.mod).__name__)
        n_params = sum(t.numel() for t in e.params)
        n_buffers = sum(t.numel() for t in e.buffers)
        total_params += n_params
        total_buffers += n_buffers
        outs = (e.new_outputs if skip_redundant else e.outputs) or [None]
        for k, t in enumerate(outs):
            rows.append([
                name + (f':{k}' if len(outs) > 1 else ''),
                (str(n_params) if n_params else '-') if k == 0 else '',
                (str(n_buffers) if n_buffers else '-') if k == 0 else '',
                str(list(t.shape)) if t is not None else '-',
                str(t.dtype).split('.')[-1] if t is not None else '-',
            ])
    rows.append(None)
    rows.append(['Total', str(total_params), str(total_buffers), '', ''])
    widths = [max(len(r[c]) for r in rows if r is not None) for c in range(len(rows[0]))]
    print()
    for row in rows:
        row = row if row is not None else ['-' * w for w in widths]
        print('  '.join(cell + ' ' * (w - len(cell)) for cell, w in zip(row, widths)).rstrip())
    print()
    return outputs
