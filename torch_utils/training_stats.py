"""Scalar statistics gathered during training and reduced across processes.

`report(name, value)` adds [count, sum, sum of squares] of the values to a float64 counter kept on the device the
values live on (no GPU sync). A `Collector` moves those counters into process-wide cumulative totals on `update()`,
all-reducing them across ranks over the sync device, and exposes num / mean / std of what arrived since its previous
update. Several collectors can coexist: each remembers the totals it saw last.

All ranks must call `Collector.update()` (and construct collectors) at the same points. They do not have to report
the same names: the union of names is agreed on before the reduction.
"""
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

import dnnlib

_NUM_MOMENTS = 3  # count, sum, sum of squares
_DTYPE = torch.float64

_rank: int = 0
_sync_device: Optional[torch.device] = None
_sync_called: bool = False
_counters: Dict[str, Dict[torch.device, torch.Tensor]] = {}  # name -> device -> moments not yet synced
_cumulative: Dict[str, torch.Tensor] = {}  # name -> moments synced so far (CPU)


def init_multiprocessing(rank: int, sync_device: Optional[torch.device]) -> None:
    """Set this process's rank and the device used for cross-rank reduction (None: no reduction)."""
    global _rank, _sync_device
    if _sync_called:
        raise RuntimeError('init_multiprocessing() must be called before the first Collector.update()')
    _rank = rank
    _sync_device = torch.device(sync_device) if sync_device is not None else None


def report(name: str, value: Any) -> Any:
    """Accumulate the elements of value (scalar, list, array or tensor) under name; returns value unchanged."""
    counters = _counters.setdefault(name, {})
    elems = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value, dtype=np.float64))
    if elems.numel() == 0:
        return value
    elems = elems.detach().flatten().to(_DTYPE)
    moments = torch.stack([torch.ones_like(elems).sum(), elems.sum(), elems.square().sum()])
    if moments.device not in counters:
        counters[moments.device] = torch.zeros_like(moments)
    counters[moments.device].add_(moments)
    return value


def report0(name: str, value: Any) -> Any:
    """Like report(), but only rank 0 contributes values (other ranks still register the name)."""
    report(name, value if _rank == 0 else [])
    return value


def _distributed() -> bool:
    return _sync_device is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sync(names: List[str]) -> List[Tuple[str, torch.Tensor]]:
    """Fold the pending counters of names into the cumulative totals, across ranks; return (name, totals)."""
    global _sync_called
    if _distributed():
        gathered: List[Optional[List[str]]] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, names)
        names = sorted(set().union(*gathered))
    if not names:
        return []
    _sync_called = True
    device = _sync_device if _sync_device is not None else torch.device('cpu')
    deltas = torch.zeros(len(names), _NUM_MOMENTS, dtype=_DTYPE, device=device)
    for i, name in enumerate(names):
        for counter in _counters.setdefault(name, {}).values():
            deltas[i].add_(counter.to(device))
            counter.zero_()
    if _distributed():
        dist.all_reduce(deltas)
    deltas = deltas.cpu()
    for i, name in enumerate(names):
        _cumulative.setdefault(name, torch.zeros(_NUM_MOMENTS, dtype=_DTYPE)).add_(deltas[i])
    return [(name, _cumulative[name]) for name in names]


class Collector:
    """Reads the statistics reported since the previous update() for names matching regex."""

    def __init__(self, regex: str = '.*', keep_previous: bool = True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._cumulative: Dict[str, torch.Tensor] = {}
        self._moments: Dict[str, torch.Tensor] = {}
        self.update()
        self._moments.clear()

    def names(self) -> List[str]:
        """Names reported so far that match the regex."""
        return [name for name in _counters if self._regex.fullmatch(name)]

    def update(self) -> None:
        """Gather everything reported since the last update (on all ranks) and make it readable."""
        if not self._keep_previous:
            self._moments.clear()
        for name, cumulative in _sync(self.names()):
            if not self._regex.fullmatch(name):
                continue
            seen = self._cumulative.setdefault(name, torch.zeros(_NUM_MOMENTS, dtype=_DTYPE))
            delta = cumulative - seen
            seen.copy_(cumulative)
            if float(delta[0]) != 0:
                self._moments[name] = delta

    def _get(self, name: str) -> torch.Tensor:
        return self._moments.get(name, torch.zeros(_NUM_MOMENTS, dtype=_DTYPE))

    def num(self, name: str) -> int:
        """Number of values of name in the last interval."""
        return int(self._get(name)[0])

    def mean(self, name: str) -> float:
        """Mean of name in the last interval (nan when there were none)."""
        count, total, _ = self._get(name).tolist()
        return total / count if count else float('nan')

    def std(self, name: str) -> float:
        """Population standard deviation of name in the last interval (nan when there were none)."""
        count, total, sq = self._get(name).tolist()
        if not count:
            return float('nan')
        mean = total / count
        if not np.isfinite(mean):
            return float('nan')
        return float(np.sqrt(max(sq / count - mean ** 2, 0.0)))

    def as_dict(self) -> Dict[str, dnnlib.EasyDict]:
        """name -> EasyDict(num, mean, std) for every name with values in the last interval."""
        return {name: dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
                for name in self.names() if name in self._moments}

    def __getitem__(self, name: str) -> float:
        return self.mean(name)


default_collector = Collector()
