"""Loading network pickles in upstream EDM's and EDM2's format, safely by default.

Safe mode (the default) executes nothing that the file carries:
- a restricted unpickler resolves only the globals a network pickle needs (tensor and parameter rebuilding,
  `collections.OrderedDict`, torch module containers, NumPy scalars, dtypes and arrays, `dnnlib.util.EasyDict`
  and the persistence hook); any other global is refused with a message that names it;
- tensor storages are small legacy `torch.save` streams: their header may reference torch's typed storage classes
  and nothing else, and they are read with `torch.load(..., weights_only=True)` instead of the unrestricted loader;
- a persistent object (docs/edm-compat.md §5.2) becomes a record of its metadata. Records whose `class_name`
  is one of ours (EDM's networks, losses and augmentation; EDM2's networks and encoders) are rebuilt by calling our
  constructor with the recorded constructor arguments and loading the recorded parameters and buffers strictly, in
  the dtype the file holds them (EDM2 snapshots are float16); the embedded `module_src` is never run. Other records
  (EDM2's `EDM2Loss`, say) stay as inert `PersistentPlaceholder` objects that keep their metadata and fail clearly
  when used.

Rebuilding is bounded by the file: the constructor runs under a budget of tensor elements, about those of the
file's tensors (`_build_budget`), counted from each tensor-creating call's arguments before the tensor exists, so
a small file whose arguments ask for a large network is refused after allocating no more than its own weights.
Large networks are built on the meta device (their random initial weights are neither drawn nor held; constructors
that read tensor values, iDDPMPrecond's noise levels, fall back to the CPU within the same budget); small ones on
the CPU, which spares torch's one-time meta-kernel imports (~1.3 s). The built network's state_dict is then compared
with the file's tensors (names, shapes, kinds of dtype) and a mismatch is refused in one line before any tensor is
loaded. The other recorded attributes (plain Python and NumPy values such as `sigma_data`) replace what the
constructor made, as upstream's unpickling restores them; one of another kind, or one that would hide a method,
parameter or submodule, is refused.

The embedded code is not run, so loading it could hide only one thing from the user: code that would have run on
import. A note on stderr says so when the source of a rebuilt class is not ours yet looks like more than class
definitions (`_code_concern`: it fails to parse, runs statements when imported, or does not define the class).
Upstream's own sources (imports, definitions, constants) pass without a note, so NVIDIA's pickles load quietly.

With `trust_embedded_code=True` the file is read with the plain unpickler and `torch_utils.persistence`, which runs
the embedded module source as upstream does (needed for architectures that are not ours).
"""

import ast
import collections
import contextlib
import io
import itertools
import math
import numbers
import os
import pickle
import pickletools
import sys
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from numpy._core import multiarray as _multiarray
from torch.overrides import TorchFunctionMode

import dnnlib
from dnnlib.util import UserError
from torch_utils import persistence
from training import augment, encoders, loss, networks, networks_edm2

# Modules whose persistent classes safe mode rebuilds as ours (pickles name a class, not its module).
_OUR_MODULES = (networks, loss, augment, networks_edm2, encoders)

# From this many tensor elements on, a network is built on the meta device: that costs a fixed ~1.5 s (torch imports
# its meta kernels on first use), drawing the random initial weights on the CPU ~30 ns per element and their memory.
_META_BUILD_MIN_ELEMENTS = 50_000_000

# The budget of a constructor (_build_budget): the file's tensor elements, plus this many per tensor (the Python objects
# around a tensor cost about as much, so that a network of countless tiny tensors cannot pass either), plus this slack
# for what a constructor makes besides its state_dict (noise-level tables, scalars): 16 MB of float32 in all.
_TENSOR_OVERHEAD_ELEMENTS = 256
_BUILD_SLACK_ELEMENTS = 1 << 22

# Constructors that read tensor values (noise levels), which meta tensors do not have: built on the CPU. iDDPMPrecond's
# loop over its M noise levels takes ~14 s on the meta device before it fails there.
_READS_TENSOR_VALUES = (networks.VPPrecond, networks.iDDPMPrecond)

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
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                           collections.OrderedDict())


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


def _elements(shape: Any) -> int:
    """Elements of a tensor shape given as ints, one int, or a sequence of ints inside a 1-tuple (torch's forms)."""
    if isinstance(shape, (tuple, list)) and len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return math.prod(int(n) for n in shape) if isinstance(shape, (tuple, list)) else int(shape)


def _arange_elements(args: tuple, kwargs: dict) -> int:
    """Elements of torch.arange(end), (start, end) or (start, end, step)."""
    start, end, step = (0, *args[:1], 1) if len(args) <= 1 else (*args[:3], 1)[:3]
    start, end, step = kwargs.get('start', start), kwargs.get('end', end), kwargs.get('step', step)
    return max(0, math.ceil((float(end) - float(start)) / float(step)))


def _like_elements(args: tuple, kwargs: dict) -> int:
    """Elements of torch.*_like(input)."""
    return kwargs['input'].numel() if 'input' in kwargs else args[0].numel()


# The tensor-creating torch calls, each with the number of elements it asks for, read from its arguments.
_CREATION_ELEMENTS: Dict[Any, Callable[[tuple, dict], int]] = {
    **{fn: (lambda args, kwargs: _elements(kwargs.get('size', args)))
       for fn in (torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn)},
    **{fn: (lambda args, kwargs: _elements(kwargs.get('size', args[1:])))
       for fn in (torch.Tensor.new_empty, torch.Tensor.new_zeros, torch.Tensor.new_ones)},
    **{fn: (lambda args, kwargs: _elements(kwargs.get('size', args[:1])))
       for fn in (torch.full, torch.empty_strided)},
    torch.Tensor.new_full: lambda args, kwargs: _elements(kwargs.get('size', args[1:2])),
    torch.randint: lambda args, kwargs: _elements(kwargs.get('size', args[-1:])),
    torch.randperm: lambda args, kwargs: int(kwargs.get('n', args[0] if args else 0)),
    torch.eye: lambda args, kwargs: int(args[0]) * int(args[1] if len(args) > 1 else kwargs.get('m', args[0])),
    torch.linspace: lambda args, kwargs: int(kwargs.get('steps', args[2] if len(args) > 2 else 0)),
    torch.logspace: lambda args, kwargs: int(kwargs.get('steps', args[2] if len(args) > 2 else 0)),
    torch.arange: _arange_elements,
    **{fn: _like_elements for fn in (torch.empty_like, torch.zeros_like, torch.ones_like, torch.full_like,
                                     torch.rand_like, torch.randn_like, torch.randint_like)},
}


class _OverBudget(Exception):
    """A constructor asked for more tensor elements than its budget."""


class _BuildBudget(TorchFunctionMode):
    """Counts the elements of every tensor-creating call before it runs; _OverBudget once they exceed `elements`."""

    def __init__(self, elements: int):
        super().__init__()
        self.left = elements

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        count = _CREATION_ELEMENTS.get(func)
        if count is not None:
            self.left -= count(args, kwargs) + _TENSOR_OVERHEAD_ELEMENTS
            if self.left < 0:
                raise _OverBudget()
        return func(*args, **kwargs)


def _build_budget(weights: Dict[str, Any]) -> int:
    """The tensor elements a constructor may ask for when the file holds `weights` (see _TENSOR_OVERHEAD_ELEMENTS)."""
    return _BUILD_SLACK_ELEMENTS + sum(t.numel() + _TENSOR_OVERHEAD_ELEMENTS for t in weights.values()
                                       if isinstance(t, torch.Tensor))


def _build(cls: type, args: tuple, kwargs: dict, budget: int, device: Optional[str] = None) -> Any:
    """Call our constructor within the budget, on `device` (None: the CPU)."""
    with _BuildBudget(budget), (torch.device(device) if device else contextlib.nullcontext()):
        return cls(*args, **kwargs)


def _construct(cls: type, args: tuple, kwargs: dict, budget: int, on_meta: bool) -> Any:
    """Call our constructor within the budget, on the meta device if asked and the constructor allows (loading then
    replaces every tensor the network holds). Constructors that read tensor values fail on the meta device and run
    on the CPU; those known to (_READS_TENSOR_VALUES) go there directly, as their meta attempt can take long."""
    if on_meta and issubclass(cls, torch.nn.Module) and not issubclass(cls, _READS_TENSOR_VALUES):
        try:
            return _build(cls, args, kwargs, budget, 'meta')
        except _OverBudget:
            raise
        except Exception:
            pass
    return _build(cls, args, kwargs, budget)


def _dtype_kind(tensor: torch.Tensor) -> str:
    """'float' or 'complex' for any precision (EDM2 files hold float16), else the dtype itself."""
    return 'float' if tensor.is_floating_point() else 'complex' if tensor.is_complex() else str(tensor.dtype)


def _weights_mismatch(expected: Dict[str, torch.Tensor], weights: Dict[str, Any]) -> Optional[str]:
    """What keeps the file's tensors from being the network's state_dict (names missing or extra, shapes or dtype
    kinds that differ), briefly; None when they fit."""
    def names(found: List[str]) -> str:
        return ', '.join(found[:2]) + (', ...' if len(found) > 2 else '')

    def differs(name: str) -> bool:
        value = weights[name]
        return not isinstance(value, torch.Tensor) or value.shape != expected[name].shape or \
            _dtype_kind(value) != _dtype_kind(expected[name])

    missing = [name for name in expected if name not in weights]
    extra = [name for name in weights if name not in expected]
    other = [name for name in expected if name in weights and differs(name)]
    parts = [f'{len(found)} {what} ({names(found)})' for what, found in
             (('missing', missing), ('extra', extra), ('of another shape or dtype', other)) if found]
    if other:
        value, wanted = weights[other[0]], expected[other[0]]
        held = f'{list(value.shape)} {value.dtype}' if isinstance(value, torch.Tensor) else type(value).__name__
        parts[-1] += f': {other[0]} is {held} in the file, {list(wanted.shape)} {wanted.dtype} in the network'
    return '; '.join(parts) or None


def _kind(value: Any) -> Any:
    """What an attribute value is, for comparing a recorded one with the constructor's: numbers are one kind."""
    if isinstance(value, numbers.Number) and not isinstance(value, (bool, np.bool_)):
        return 'number'
    if isinstance(value, np.ndarray):
        return 'array', value.dtype.kind
    return dict if isinstance(value, dict) else type(value)


def _is_plain(value: Any) -> bool:
    """True for plain Python and NumPy data: numbers, strings, None, non-object arrays and containers of those."""
    if value is None or isinstance(value, (numbers.Number, str, bytes, np.bool_)):
        return True
    if isinstance(value, (np.ndarray, np.generic)):
        return value.dtype.kind != 'O'
    if isinstance(value, (tuple, list)):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(_is_plain(key) and _is_plain(item) for key, item in value.items())
    return False


def _same(a: Any, b: Any) -> bool:
    """True when a and b are equal tensors (in value, shape and dtype) or equal plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and \
            a.device == b.device and a.shape == b.shape and not a.is_meta and torch.equal(a, b)
    try:
        return bool(a == b)
    except Exception:
        return False


def _short(value: Any) -> str:
    """A value for a one-line message: its type and the start of its repr."""
    text = repr(value)
    return f'{type(value).__name__} {text[:40] + "..." if len(text) > 40 else text}'


_MODULE_INTERNALS = frozenset(vars(torch.nn.Module()))   # parameters, buffers, submodules, hooks, training
_MISSING = object()


def _apply_attributes(state: dict, obj: Any, where: str) -> None:
    """Give obj the recorded attributes of its state (what unpickling restores upstream): plain values of the kind the
    constructor made, or of attributes it does not make; refuse anything else in one line."""
    internals = _MODULE_INTERNALS if isinstance(obj, torch.nn.Module) else frozenset()
    held = vars(obj)
    for name, recorded in state.items():
        if name in internals:
            continue
        made = held.get(name, _MISSING)
        if made is not _MISSING and _same(recorded, made):
            continue
        hides = hasattr(type(obj), name) or any(name in held.get(slot, {}) for slot in ('_parameters', '_buffers',
                                                                                         '_modules'))
        if _is_plain(recorded) and not hides and (made is _MISSING or _kind(recorded) == _kind(made)):
            held[name] = recorded
            continue
        made_text = 'nothing' if made is _MISSING else _short(made)
        raise UserError(f'{where}.{name} is recorded as {_short(recorded)}, where our {type(obj).__name__} holds '
                        f'{made_text}; the file does not fit our implementation')


def _apply_tree_attributes(node: Any, obj: Any, where: str) -> None:
    """_apply_attributes on a record and on every record below it, with the matching submodule of obj."""
    if isinstance(node, _Record):
        _apply_attributes(node.state, obj, where)
    for name, child in _children(node):
        sub = obj._modules.get(name) if isinstance(obj, torch.nn.Module) else None
        if sub is not None:
            _apply_tree_attributes(child, sub, f'{where}.{name}')


def _materialise(record: _Record, classes: Dict[str, type]) -> Any:
    """Build our object for a record (constructor arguments, strict weights, recorded attributes), or a placeholder."""
    unknown = sorted(set(_unknown_classes(record, classes)))
    if unknown:
        return PersistentPlaceholder(record.meta)
    state = record.state
    args = state.get('_init_args') or ()
    kwargs = state.get('_init_kwargs') or {}
    weights = _flat_state(record)
    elements = sum(t.numel() for t in weights.values() if isinstance(t, torch.Tensor))
    try:
        obj = _construct(classes[record.class_name], args, dict(kwargs), _build_budget(weights),
                         on_meta=elements >= _META_BUILD_MIN_ELEMENTS)
    except _OverBudget:
        raise UserError(f'the recorded constructor arguments of {record.class_name} ask for a larger network than '
                        f'the weights in the file ({elements:,} tensor elements): they are missing or belong to '
                        f'another network') from None
    except Exception as exc:
        raise UserError(f'cannot rebuild {record.class_name} from its recorded constructor arguments '
                        f'({type(exc).__name__}: {(str(exc) or "no detail").splitlines()[0][:200]})') from None
    if isinstance(obj, torch.nn.Module):
        _load_weights(obj, weights, record)
    _apply_tree_attributes(record, obj, record.class_name)
    return obj


def _load_weights(obj: torch.nn.Module, weights: Dict[str, Any], record: _Record) -> None:
    """Check that the file's tensors are exactly obj's state_dict, then make them obj's (the file's dtype)."""
    mismatch = _weights_mismatch(obj.state_dict(), weights)
    if mismatch:
        raise UserError(f'the weights in the file do not fit {record.class_name} as its recorded constructor '
                        f'arguments build it: {mismatch}')
    requires_grad = {name: tensor.requires_grad for name, tensor in weights.items()}   # assign=True resets it
    try:
        obj.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise UserError(f'the weights of {record.class_name} do not fit our implementation '
                        f'({str(exc).splitlines()[0][:200]}...)') from None
    if any(t.is_meta for t in itertools.chain(obj.parameters(), obj.buffers())):
        raise UserError(f'{record.class_name} holds tensors that the file does not provide')
    obj.train(bool(record.state.get('training', False)))
    for name, param in obj.named_parameters():
        param.requires_grad_(requires_grad[name])


# Statements of a module or class body that only define: what upstream's network sources consist of.
_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
                ast.AnnAssign, ast.Pass)


def _import_time_statements(body: List[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements of a module or class body that do more than import, define or assign (docstrings aside)."""
    for node in body:
        if isinstance(node, ast.ClassDef):
            yield from _import_time_statements(node.body)
        elif not (isinstance(node, _DEFINITIONS) or isinstance(node, ast.Expr) and isinstance(node.value,
                                                                                               ast.Constant)):
            yield node


def _code_concern(source: Any, class_names: set) -> Optional[str]:
    """Why an embedded module source looks like more than the definitions of class_names, or None. A note for the
    user, not a safety check: the source is never run either way."""
    if not isinstance(source, str):
        return 'is missing' if source is None else 'is not text'
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return 'is not valid Python'
    statement = next(_import_time_statements(tree.body), None)
    if statement is not None:
        return f'runs statements when imported (line {statement.lineno})'
    undefined = sorted(class_names - {node.name for node in tree.body if isinstance(node, ast.ClassDef)})
    return f'does not define {undefined[0]}' if undefined else None


def _embedded_sources(node: Any, found: Dict[Any, set]) -> Dict[Any, set]:
    """The embedded module sources of a record tree, each with the class names rebuilt from it."""
    if isinstance(node, _Record):
        source = node.meta.get('module_src')
        found.setdefault(source if isinstance(source, str) or source is None else b'', set()).add(node.class_name)
    for _name, child in _children(node):
        _embedded_sources(child, found)
    return found


def _embedded_code_note(records: List[_Record]) -> Optional[str]:
    """What the first embedded source that is neither ours nor plain definitions does (_code_concern), or None."""
    found = {}
    for record in records:
        _embedded_sources(record, found)
    ours = {persistence._module_to_src(module) for module in _OUR_MODULES}
    for source, class_names in found.items():
        concern = None if source in ours else _code_concern(source, class_names)
        if concern:
            return f'for {", ".join(sorted(class_names)[:2])}{", ..." if len(class_names) > 2 else ""} {concern}'
    return None


def _safe_load(f: Any) -> Tuple[Any, Optional[str]]:
    """Unpickle with the restricted unpickler and materialise every persistent record at the top level; also what
    the embedded code of the rebuilt records looks like it does, if more than define them (_embedded_code_note)."""
    data = _SafeUnpickler(f).load()
    classes = _our_classes()
    rebuilt = []

    def materialise(value: Any) -> Any:
        if not isinstance(value, _Record):
            return value
        obj = _materialise(value, classes)
        if not isinstance(obj, PersistentPlaceholder):
            rebuilt.append(value)
        return obj

    if isinstance(data, dict):   # a dnnlib.EasyDict (EDM2, older EDM) stays one
        data = type(data)((key, materialise(value)) for key, value in data.items())
    else:
        data = materialise(data)
    return data, _embedded_code_note(rebuilt)


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
            data, note = (_trusted_load(f), None) if trust_embedded_code else _safe_load(f)
        except PickleSecurityError as exc:
            raise PickleSecurityError(f'refusing to load {where!r} in safe mode: {exc}; if you trust this file, '
                                      f'load it with trust_embedded_code=True (--trust-pickle)') from None
        except UserError as exc:
            raise UserError(f'cannot load {where!r}: {exc}') from None
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
            raise UserError(f'{where!r} is truncated or not a network pickle '
                            f'({type(exc).__name__}: {(str(exc) or "no detail").splitlines()[0][:120]})') from None
    if not isinstance(data, dict) or 'ema' not in data:
        raise UserError(f'{where!r} is not an EDM network pickle (expected a dict with the key "ema")')
    if isinstance(data['ema'], PersistentPlaceholder):
        raise PickleSecurityError(f'refusing to load {where!r} in safe mode: its network class '
                                  f'{data["ema"].class_name!r} (or a part of it) is not one of ours; if you trust '
                                  f'this file, load it with trust_embedded_code=True (--trust-pickle)')
    if not isinstance(data['ema'], torch.nn.Module):
        raise UserError(f'{where!r}: the entry "ema" is not a network')
    if note:
        print(f'note: the code embedded in {where!r} {note}; it was not run: the objects were rebuilt from our own '
              f'classes', file=sys.stderr)
    return data
