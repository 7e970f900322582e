"""dnnlib: small utilities (EasyDict, cache directories, open_url, import by name) that upstream EDM code expects."""
from . import util
from .util import EasyDict, make_cache_dir_path

__all__ = ['util', 'EasyDict', 'make_cache_dir_path']
