"""Loading network pickles in upstream EDM's and EDM2's format, safely by default.

Safe mode (the default) executes nothing that the file carries:
- a restricted unpickler resolves only the globals a network pickle needs (tensor and parameter rebuilding,
  `collections.OrderedDict`, torch module containers, NumPy scalars, dtypes and arrays, `dnnlib.util.EasyDict`
  and the persistence hook); any other global is refused with a message that names it;
- tensor storages are small legacy `torch.save` streams: their header may reference torch's typed storage classes
  and nothing else, and they are read with `torch.load(..., weights_only=True)` instead of the unrestricted loader;
- a persistent object (docs/edm-compat.md §5.2) becomes a record of its metadata. Records whose `class_name`
  is one of ours (EDM's networks, losses and augmentation; EDM2's networks and encoders) are rebuilt by calling our
  constructor with the recorded constructor arguments (large networks on the meta device, so that their random
  initial weights are neither drawn nor held) and loading the recorded parameters and buffers strictly, in the dtype
  the file holds them (EDM2 snapshots are float16); the embedded `module_src` is never run. Other records (EDM2's
  `EDM2Loss`, say) stay as inert `PersistentPlaceholder` objects that keep their metadata and fail clearly when used.

With `trust_embedded_code=True` the file is read with the plain unpickler and `torch_utils.persistence`, which runs
the embedded module source as upstream does (needed for architectures that are not ours).
"""

import collections
import io
import itertools
import os
import pickle
import pickletools
import warnings
from typing import Any, Dict, Iterator, Tuple

import numpy as np
import torch
from numpy._core import multiarray as _multiarray

import dnnlib
from dnnlib.util import UserError
from torch_utils import persistence
from training import augment, encoders, loss, networks, networks_edm2

# Modules whose persistent classes safe mode rebuilds as ours (pickles name a class, not its module).
_OUR_MODULES = (networks, loss, augment, networks_edm2, encoders)

# From this many tensor elements on, a network is built on the meta device: that costs a fixed ~1.5 s (torch imports
# its meta kernels on first use), drawing the random initial weights on the CPU ~30 ns per element and their memory.
_META_BUILD_MIN_ELEMENTS = 50_000_000

# The only globals a pickled tensor storage may reference: torch's typed storage classes (legacy torch.save format).
_STORAGE_GLOBALS = frozenset(f'torch {kind}Storage' for kind in
                             ('Half', 'BFloat16', 'Float', 'Double', 'Byte', 'Char', 'Short', 'Int', 'Long', 'Bool'))


class PickleSecurityError(UserError):
    """The pickle asks for something safe mode does not allow."""


class PersistentPlaceholder:
    """Inert stand-in for a persistent object of a class that safe mode cannot rebuild."""

    def __init__(self, meta: dict):
        object.__setattr__(self, 'meta', meta)

    @property
    def class_name(self) -> str:
        """The class name recorded in the pickle."""
        return self.meta.get('class_name', '?')

    def __getattr__(self, name):
        raise UserError(f'the pickled object of class {self.class_name!r} was not rebuilt in safe mode; '
                        f'load the file with trust_embedded_code=True (--trust-pickle) if you trust it')

    def __call__(self, *args, **kwargs):
        return self.__getattr__('__call__')

    def __repr__(self) -> str:
        return f'PersistentPlaceholder({self.class_name!r})'


class _Record:
    """Metadata of a persistent object, collected while unpickling and materialised afterwards."""

    def __init__(self, meta: Any):
        if not isinstance(meta, dict) or meta.get('type') != 'class' or not isinstance(meta.get('class_name'), str):
            raise PickleSecurityError('malformed persistent-object record (expected type "class" and a class_name)')
        if meta.get('version') != persistence._version:
            raise PickleSecurityError(f'persistent-object record has version {meta.get("version")!r}; '
                                      f'only version {persistence._version} is supported')
        if not isinstance(meta.get('state'), dict):
            raise PickleSecurityError(f'persistent object {meta["class_name"]!r} has no state dictionary')
        self.meta = meta

    @property
    def class_name(self) -> str:
        return self.meta['class_name']

    @property
    def state(self) -> dict:
        return self.meta['state']


def _check_storage_stream(data: bytes) -> None:
    """Refuse a storage stream that is not torch's legacy format or whose header references other globals.

    The legacy format is five pickles (magic number, protocol version, system info, the storage as a persistent id
    naming its typed storage class, the storage keys) followed by the raw data.
    """
    stream = io.BytesIO(data)
    try:
        for _ in range(5):
            for opcode, arg, _pos in pickletools.genops(stream):
                if opcode.name in ('GLOBAL', 'INST') and arg not in _STORAGE_GLOBALS:
                    raise PickleSecurityError(f'an embedded tensor storage references the global '
                                              f'{arg.replace(" ", ".")}, which safe loading does not allow')
                if opcode.name in ('STACK_GLOBAL', 'EXT1', 'EXT2', 'EXT4'):
                    raise PickleSecurityError('an embedded tensor storage looks up globals indirectly')
    except ValueError as exc:
        raise PickleSecurityError(f'an embedded tensor storage is not in torch\'s legacy format ({exc})') from None


def _load_storage(data: bytes) -> Any:
    """Rebuild a tensor storage embedded by plain pickling, with torch's weights-only loader."""
    if not isinstance(data, bytes):
        raise PickleSecurityError('an embedded tensor storage is not a byte string')
    _check_storage_stream(data)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        try:
            return torch.load(io.BytesIO(data), weights_only=True, map_location='cpu')
        except Exception as exc:
            raise PickleSecurityError(f'an embedded tensor storage was refused by the weights-only loader '
                                      f'({str(exc).splitlines()[0][:200]})') from None


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool, backward_hooks: Any) -> torch.nn.Parameter:
    """Rebuild a parameter, refusing backward hooks (they would be callables from the file)."""
    if backward_hooks:
        raise PickleSecurityError('a pickled parameter carries backward hooks')
    return torch.nn.Parameter(data, requires_grad=requires_grad)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """Rebuild a tensor, refusing backward hooks and metadata."""
    if backward_hooks or metadata:
        raise PickleSecurityError('a pickled tensor carries backward hooks or metadata')
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, collections.OrderedDict())


_SAFE_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch.storage', '_load_from_bytes'): _load_storage,
    ('torch.nn.modules.container', 'ModuleDict'): torch.nn.ModuleDict,
    ('torch.nn.modules.container', 'ModuleList'): torch.nn.ModuleList,
    ('numpy', 'dtype'): np.dtype,
    ('numpy', 'ndarray'): np.ndarray,
    ('dnnlib.util', 'EasyDict'): dnnlib.EasyDict,
    ('dnnlib', 'EasyDict'): dnnlib.EasyDict,
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _Record,
}
for _module in ('numpy.core.multiarray', 'numpy._core.multiarray'):  # pickles from NumPy 1 and NumPy 2
    _SAFE_GLOBALS[(_module, 'scalar')] = _multiarray.scalar
    _SAFE_GLOBALS[(_module, '_reconstruct')] = _multiarray._reconstruct


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in `_SAFE_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        found = _SAFE_GLOBALS.get((module, name))
        if found is None:
            raise PickleSecurityError(f'it references the global {module}.{name}, which safe loading does not allow')
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise PickleSecurityError('it uses persistent IDs (a torch.save checkpoint, not a network pickle)')


def _our_classes() -> Dict[str, type]:
    """Persistent classes that safe mode rebuilds, by class name (unique across `_OUR_MODULES`)."""
    return {name: obj for module in _OUR_MODULES for name, obj in vars(module).items()
            if isinstance(obj, type) and persistence.is_persistent(obj) and obj.__module__ == module.__name__}


def _children(node: Any) -> Iterator[Tuple[str, Any]]:
    """Named submodules of a record or of a plainly unpickled module container."""
    state = node.state if isinstance(node, _Record) else getattr(node, '__dict__', {})
    for name, child in (state.get('_modules') or {}).items():
        if child is not None:
            yield name, child


def _flat_state(node: Any, prefix: str = '') -> Dict[str, torch.Tensor]:
    """The state_dict that a record tree describes: parameters and persistent buffers by dotted name."""
    state = node.state if isinstance(node, _Record) else getattr(node, '__dict__', {})
    out = {}
    for name, value in (state.get('_parameters') or {}).items():
        if value is not None:
            out[prefix + name] = value
    skip = state.get('_non_persistent_buffers_set') or set()
    for name, value in (state.get('_buffers') or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = value
    for name, child in _children(node):
        out.update(_flat_state(child, prefix + name + '.'))
    return out


def _unknown_classes(node: Any, classes: Dict[str, type]) -> Iterator[str]:
    """Class names in a record tree that safe mode cannot rebuild."""
    if isinstance(node, _Record) and node.class_name not in classes:
        yield node.class_name
    for _name, child in _children(node):
        yield from _unknown_classes(child, classes)


def _construct(cls: type, args: tuple, kwargs: dict, on_meta: bool) -> Any:
    """Call our constructor, on the meta device if asked and the constructor allows (loading then replaces every
    tensor the network holds)."""
    if on_meta and issubclass(cls, torch.nn.Module):
        try:
            with torch.device('meta'):
                return cls(*args, **kwargs)
        except Exception:   # a constructor that reads tensor values (iDDPMPrecond's noise levels) runs on the CPU
            pass
    return cls(*args, **kwargs)


def _materialise(record: _Record, classes: Dict[str, type]) -> Any:
    """Build our object for a record (constructor arguments + strict weights), or a placeholder."""
    unknown = sorted(set(_unknown_classes(record, classes)))
    if unknown:
        return PersistentPlaceholder(record.meta)
    state = record.state
    args = state.get('_init_args') or ()
    kwargs = state.get('_init_kwargs') or {}
    weights = _flat_state(record)
    on_meta = sum(t.numel() for t in weights.values() if isinstance(t, torch.Tensor)) >= _META_BUILD_MIN_ELEMENTS
    try:
        obj = _construct(classes[record.class_name], args, dict(kwargs), on_meta)
    except Exception as exc:
        raise UserError(f'cannot rebuild {record.class_name} from its recorded constructor arguments '
                        f'({type(exc).__name__}: {str(exc).splitlines()[0][:200]})') from None
    if isinstance(obj, torch.nn.Module):
        requires_grad = {name: tensor.requires_grad for name, tensor in weights.items()}   # assign=True resets it
        try:
            obj.load_state_dict(weights, strict=True, assign=True)   # the file's tensors, in the file's dtype
        except RuntimeError as exc:
            raise UserError(f'the weights of {record.class_name} do not fit our implementation '
                            f'({str(exc).splitlines()[0][:200]}...)') from None
        if any(t.is_meta for t in itertools.chain(obj.parameters(), obj.buffers())):
            raise UserError(f'{record.class_name} holds tensors that the file does not provide')
        obj.train(bool(state.get('training', False)))
        for name, param in obj.named_parameters():
            param.requires_grad_(requires_grad[name])
    return obj


def _safe_load(f: Any) -> Any:
    """Unpickle with the restricted unpickler and materialise every persistent record at the top level."""
    data = _SafeUnpickler(f).load()
    classes = _our_classes()
    if isinstance(data, _Record):
        return _materialise(data, classes)
    if isinstance(data, dict):   # a dnnlib.EasyDict (EDM2, older EDM) stays one
        return type(data)((key, _materialise(value, classes) if isinstance(value, _Record) else value)
                          for key, value in data.items())
    return data


def _trusted_load(f: Any) -> Any:
    """Unpickle with the plain unpickler; persistent objects run their embedded module source (upstream)."""
    try:
        return pickle.load(f)
    except (EOFError, pickle.UnpicklingError):
        raise
    except Exception as exc:
        raise UserError(f'the code embedded in the pickle failed ({type(exc).__name__}: '
                        f'{str(exc).splitlines()[0][:200] if str(exc) else "no detail"})') from None


def load_network_pkl(path_or_url: str, *, trust_embedded_code: bool = False) -> dict:
    """Load an EDM network pickle as a dict with at least 'ema'; safe unless `trust_embedded_code`."""
    where = str(path_or_url)
    try:
        f = dnnlib.util.open_url(where, verbose=False) if dnnlib.util.is_url(where) or where.startswith('file://') \
            else open(os.fspath(where), 'rb')
    except OSError as exc:
        raise UserError(f'cannot open network pickle {where!r}: {exc.strerror or exc}') from None
    except Exception as exc:
        raise UserError(f'cannot download network pickle {where!r}: {str(exc).splitlines()[0][:200]}') from None
    with f:
        try:
            data = _trusted_load(f) if trust_embedded_code else _safe_load(f)
        except PickleSecurityError as exc:
            raise PickleSecurityError(f'refusing to load {where!r} in safe mode: {exc}; if you trust this file, '
                                      f'load it with trust_embedded_code=True (--trust-pickle)') from None
        except UserError as exc:
            raise UserError(f'cannot load {where!r}: {exc}') from None
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
            raise UserError(f'{where!r} is truncated or not a network pickle '
                            f'({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else "no detail"})') from None
    if not isinstance(data, dict) or 'ema' not in data:
        raise UserError(f'{where!r} is not an EDM network pickle (expected a dict with the key "ema")')
    if isinstance(data['ema'], PersistentPlaceholder):
        raise PickleSecurityError(f'refusing to load {where!r} in safe mode: its network class '
                                  f'{data["ema"].class_name!r} (or a part of it) is not one of ours; if you trust '
                                  f'this file, load it with trust_embedded_code=True (--trust-pickle)')
    if not isinstance(data['ema'], torch.nn.Module):
        raise UserError(f'{where!r}: the entry "ema" is not a network')
    return data
