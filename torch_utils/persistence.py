"""Pickling of classes together with the source of the module that defines them (upstream EDM format).

A class decorated with `persistent_class` pickles its instances as
`_reconstruct_persistent_obj(meta)`, where `meta` holds the full source text of the defining module.
Unpickling runs that source in a fresh module (unless the same source is already loaded) and rebuilds the
object without calling `__init__`. The layout of `meta` (keys `type`, `version`, `module_src`,
`class_name`, `state`) and the hook's import path are what upstream EDM reads and writes; see
docs/edm-compat.md §5.2. Loading a pickle this way executes the code it carries: `edm.loading`
offers the safe alternative.
"""

import copy
import inspect
import pickle
import sys
import types
import uuid
from typing import Any, Callable

import numpy as np
import torch

import dnnlib

_version = 6                      # Format version of `meta`; upstream writes and accepts 6.
_decorators = set()               # Persistent classes created by `persistent_class`.
_import_hooks = []                # Callables meta -> meta, run before a module is rebuilt.
_module_to_src_dict = dict()      # Live module -> its source text.
_src_to_module_dict = dict()      # Source text -> module (live or rebuilt from a pickle).


def persistent_class(orig_class: type) -> type:
    """Class decorator: instances pickle together with the source of the class's module."""
    assert isinstance(orig_class, type)
    if is_persistent(orig_class):
        return orig_class

    assert orig_class.__module__ in sys.modules
    orig_module = sys.modules[orig_class.__module__]
    orig_module_src = _module_to_src(orig_module)

    class Decorator(orig_class):
        _orig_module_src = orig_module_src
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            record = getattr(self, '_record_init_args', True)
            self._init_args = copy.deepcopy(args) if record else None
            self._init_kwargs = copy.deepcopy(kwargs) if record else None
            assert orig_class.__name__ in orig_module.__dict__
            _check_pickleable(self.__reduce__())

        @property
        def init_args(self) -> Any:
            """Positional constructor arguments (a deep copy)."""
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self) -> dnnlib.EasyDict:
            """Keyword constructor arguments (a deep copy)."""
            return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            if fields[0] is not _reconstruct_persistent_obj:
                meta = dict(type='class', version=_version, module_src=self._orig_module_src,
                            class_name=self._orig_class_name, state=fields[2])
                fields[0] = _reconstruct_persistent_obj
                fields[1] = (meta,)
                fields[2] = None
            return tuple(fields)

    Decorator.__name__ = orig_class.__name__
    Decorator.__qualname__ = orig_class.__qualname__
    Decorator.__module__ = orig_class.__module__
    _decorators.add(Decorator)
    return Decorator


def is_persistent(obj: Any) -> bool:
    """True for a persistent class or an instance of one."""
    try:
        if obj in _decorators:
            return True
    except TypeError:
        pass
    return type(obj) in _decorators


def import_hook(hook: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """Register `hook(meta) -> meta`, run on every persistent object before its module is rebuilt."""
    assert callable(hook)
    _import_hooks.append(hook)
    return hook


def _reconstruct_persistent_obj(meta: dict) -> Any:
    """Unpickling hook: rebuild a persistent object from `meta`, running its embedded module source."""
    meta = dnnlib.EasyDict(meta)
    meta.state = dnnlib.EasyDict(meta.state)
    for hook in _import_hooks:
        meta = hook(meta)
        assert meta is not None

    assert meta.version == _version
    module = _src_to_module(meta.module_src)

    assert meta.type == 'class'
    orig_class = module.__dict__[meta.class_name]
    decorator_class = persistent_class(orig_class)
    obj = decorator_class.__new__(decorator_class)

    setstate = getattr(obj, '__setstate__', None)
    if callable(setstate):
        setstate(meta.state)
    else:
        obj.__dict__.update(meta.state)
    return obj


def _module_to_src(module: types.ModuleType) -> str:
    """Source text of a module, cached in both directions."""
    src = _module_to_src_dict.get(module, None)
    if src is None:
        src = inspect.getsource(module)
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
    return src


def _src_to_module(src: str) -> types.ModuleType:
    """The module for a source text: a live one with that exact source, or a new one that runs it."""
    module = _src_to_module_dict.get(src, None)
    if module is None:
        module_name = '_imported_module_' + uuid.uuid4().hex
        module = types.ModuleType(module_name)
        sys.modules[module_name] = module
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
        exec(src, module.__dict__)  # pylint: disable=exec-used
    return module


def _check_pickleable(obj: Any) -> None:
    """Cheap check that `obj` holds only things that pickle without arbitrary classes."""
    def recurse(obj):
        if isinstance(obj, (list, tuple, set)):
            return [recurse(x) for x in obj]
        if isinstance(obj, dict):
            return [[recurse(x), recurse(y)] for x, y in obj.items()]
        if isinstance(obj, (str, int, float, bool, bytes, bytearray)):
            return None
        if isinstance(obj, (np.ndarray, np.generic, torch.Tensor)):
            return None
        if is_persistent(obj):
            return None
        return obj

    pickle.dumps(recurse(obj))
