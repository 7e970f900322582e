"""Small utilities that upstream EDM code and pickles expect: EasyDict, cache directories, import by name, open_url.

Not implemented on purpose: upstream's Google-Drive special cases in `open_url` (parsing the HTML virus-scan and
quota pages). Every file this project downloads (NVIDIA's pickles and FID references) is served from a plain CDN, the
Drive HTML format changes without notice, and the code could not be tested offline. A Drive HTML page therefore
arrives as an ordinary (wrong) download, exactly as any other misbehaving server would.
"""
import glob
import hashlib
import importlib
import io
import json
import os
import re
import sys
import tempfile
import time
import urllib.parse
import uuid
from typing import IO, Any, Callable, List, Optional, Tuple, Union

# ----------------------------------------------------------------------------------------------------------------------
# EasyDict.


class UserError(Exception):
    """A mistake the user can fix (bad path, option value, file); the message says what is wrong and what to do.

    Command lines print it as one line and exit non-zero. It lives here, on the ground floor, so that `training/`
    and `torch_utils/` can raise it without importing the packages above them.
    """


class EasyDict(dict):
    """A dict whose keys can also be read and written as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


# ----------------------------------------------------------------------------------------------------------------------
# Logging and formatting.


class Logger:
    """Copy everything written to stdout and stderr into a file as well (a tee), until close() is called."""

    def __init__(self, file_name: Optional[str] = None, file_mode: str = 'w', should_flush: bool = True):
        self.file = open(file_name, file_mode) if file_name is not None else None
        self.should_flush = should_flush
        self.stdout, self.stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = self

    def __enter__(self) -> 'Logger':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, text: Union[str, bytes]) -> None:
        """Write text to the file and to the original stdout."""
        if isinstance(text, bytes):
            text = text.decode()
        if not text:
            return
        self.stdout.write(text)                   # the console first: it still shows what a full disk refuses
        if self.file is not None:
            self.file.write(text)
        if self.should_flush:
            self.flush()

    def flush(self) -> None:
        """Flush the file and the original stdout."""
        if self.file is not None:
            self.file.flush()
        self.stdout.flush()

    def close(self) -> None:
        """Restore stdout/stderr, then flush and close the file: an error writing it (a full disk) is raised with the
        console already restored, and the file is closed all the same."""
        if sys.stdout is self:
            sys.stdout = self.stdout
        if sys.stderr is self:
            sys.stderr = self.stderr
        self.stdout.flush()
        file, self.file = self.file, None
        if file is not None:
            file.close()


def format_time(seconds: Union[int, float]) -> str:
    """Human-readable duration: '42s', '3m 07s', '2h 05m 09s', '3d 04h 12m'."""
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 60 * 60:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 24 * 60 * 60:
        return f'{s // 3600}h {s // 60 % 60:02d}m {s % 60:02d}s'
    return f'{s // 86400}d {s // 3600 % 24:02d}h {s // 60 % 60:02d}m'


_RANGE_RE = re.compile(r'^\s*(\d+)\s*-\s*(\d+)\s*$')


def parse_int_list(s: Union[str, List[int]], max_len: Optional[int] = None) -> List[int]:
    """Parse '1,2,5-10' into [1, 2, 5, 6, 7, 8, 9, 10]; a list is returned unchanged. A string that would give more
    than max_len integers is a ValueError, raised before any range is expanded."""
    if isinstance(s, list):
        return s
    if not isinstance(s, str):
        raise TypeError(f'expected a string like "1,2,5-10", got {type(s).__name__}')
    result = []
    for part in s.split(','):
        m = _RANGE_RE.match(part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise ValueError(f'invalid integer list {s!r}: range "{part.strip()}" must be ascending')
            if max_len is not None and len(result) + hi - lo + 1 > max_len:
                raise ValueError(f'{s!r} holds more than {max_len:,} integers; split the work into several runs')
            result.extend(range(lo, hi + 1))
            continue
        try:
            result.append(int(part))
        except ValueError:
            raise ValueError(f'invalid integer list {s!r}: "{part.strip()}" is neither an integer nor a range '
                             f'like 5-10') from None
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Cache directories.

_cache_dir: Optional[str] = None


def set_cache_dir(path: Optional[str]) -> None:
    """Set the root of all dnnlib caches (None restores the default lookup)."""
    global _cache_dir
    _cache_dir = path


def make_cache_dir_path(*paths: str) -> str:
    """Path under the cache root: set_cache_dir, $DNNLIB_CACHE_DIR, $HOME/.cache/dnnlib, ... or the temp dir."""
    if _cache_dir is not None:
        return os.path.join(_cache_dir, *paths)
    if 'DNNLIB_CACHE_DIR' in os.environ:
        return os.path.join(os.environ['DNNLIB_CACHE_DIR'], *paths)
    for var in ('HOME', 'USERPROFILE'):
        if var in os.environ:
            return os.path.join(os.environ[var], '.cache', 'dnnlib', *paths)
    return os.path.join(tempfile.gettempdir(), '.cache', 'dnnlib', *paths)


# ----------------------------------------------------------------------------------------------------------------------
# Objects by name.


def get_obj_by_name(name: str) -> Any:
    """Return the object at a dotted path such as 'torch.nn.Linear' or 'os.path.join', importing as needed."""
    parts = name.split('.')
    for i in range(len(parts), 0, -1):
        module_name = '.'.join(parts[:i])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only a missing module on our own path means "try a shorter prefix"; other failures are real errors.
            if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + '.')):
                continue
            raise
        return _get_attr_path(module, parts[i:], name)
    # No module prefix: look the name up in the __main__ module, as a script's own functions live there.
    return _get_attr_path(sys.modules['__main__'], parts, name)


def _get_attr_path(obj: Any, attrs: List[str], full_name: str) -> Any:
    for attr in attrs:
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise AttributeError(f'cannot find "{full_name}": no attribute "{attr}"') from None
    return obj


def call_func_by_name(*args: Any, func_name: Optional[str] = None, **kwargs: Any) -> Any:
    """Look up a function by its dotted name and call it with the given arguments."""
    if func_name is None:
        raise ValueError('func_name must be given')
    func = get_obj_by_name(func_name)
    if not callable(func):
        raise TypeError(f'"{func_name}" is not callable')
    return func(*args, **kwargs)


def construct_class_by_name(*args: Any, class_name: Optional[str] = None, **kwargs: Any) -> Any:
    """Look up a class by its dotted name and instantiate it with the given arguments."""
    return call_func_by_name(*args, func_name=class_name, **kwargs)


def get_top_level_function_name(obj: Callable) -> str:
    """Dotted name of a top-level function, usable with get_obj_by_name."""
    module = obj.__module__
    if module == '__main__':
        module = os.path.splitext(os.path.basename(sys.modules[module].__file__))[0]
    return module + '.' + obj.__name__


# ----------------------------------------------------------------------------------------------------------------------
# URLs and downloads.


def is_url(obj: Any, allow_file_urls: bool = False) -> bool:
    """True when obj is a string URL with a scheme and a host (a dotted name or localhost)."""
    if not isinstance(obj, str) or '://' not in obj:
        return False
    if allow_file_urls and obj.startswith('file://'):
        return True
    try:
        res = urllib.parse.urlparse(obj)
        if not res.scheme or not res.netloc:
            return False
        host = res.hostname or ''
        if '.' not in res.netloc and host != 'localhost':
            return False
        urllib.parse.urljoin(obj, '/')
    except ValueError:
        return False
    return True


def _safe_name(name: str) -> str:
    return re.sub(r'[^0-9a-zA-Z-._]', '_', name)[:128]


def _filename_from_headers(res: Any) -> Optional[str]:
    disposition = res.headers.get('Content-Disposition', '')
    m = re.search(r'filename="?([^";]+)"?', disposition)
    return m.group(1) if m else None


_RETRY_STATUS = {408, 429}  # client errors that are worth retrying; all other 4xx fail at once


def _download(url: str, num_attempts: int, verbose: bool) -> Tuple[bytes, Optional[str]]:
    """Fetch url with retries; return (data, file name from the server or None)."""
    import requests  # only needed for downloads
    if verbose:
        print(f'Downloading {url} ...', end='', flush=True)
    with requests.Session() as session:
        for attempt in range(num_attempts):
            try:
                with session.get(url, timeout=(30, 300)) as res:
                    res.raise_for_status()
                    if len(res.content) == 0:
                        raise IOError(f'no data received from {url}')
                    data, name = res.content, _filename_from_headers(res)
                break
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                permanent = isinstance(exc, requests.HTTPError) and exc.response is not None \
                    and 400 <= exc.response.status_code < 500 and exc.response.status_code not in _RETRY_STATUS
                if permanent or attempt == num_attempts - 1:
                    if verbose:
                        print(' failed')
                    raise
                time.sleep(min(0.5 * 2 ** attempt, 10.0))
    if verbose:
        print(' done')
    return data, name


def open_url(url: str, cache_dir: Optional[str] = None, num_attempts: int = 10, verbose: bool = True,
             return_filename: bool = False, cache: bool = True) -> Union[IO[bytes], str]:
    """Open a local path, file:// URL or http(s) URL as a binary file, downloading into a cache when needed."""
    if num_attempts < 1:
        raise ValueError('num_attempts must be at least 1')
    if return_filename and not cache:
        raise ValueError('return_filename=True needs cache=True')

    # Local path.
    if not re.match(r'^[a-z]+://', url):
        return url if return_filename else open(url, 'rb')

    # file:// URL.
    if url.startswith('file://'):
        path = urllib.parse.unquote(urllib.parse.urlparse(url).path)
        if re.match(r'^/[a-zA-Z]:', path):
            path = path[1:]
        return path if return_filename else open(path, 'rb')

    if not is_url(url):
        raise ValueError(f'not a valid URL: {url}')

    # Cached download?
    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    if cache:
        matches = glob.glob(os.path.join(glob.escape(cache_dir), url_md5 + '_*'))
        if len(matches) == 1:
            return matches[0] if return_filename else open(matches[0], 'rb')

    data, name = _download(url, num_attempts, verbose)

    if cache:
        safe = _safe_name(name if name else url)
        os.makedirs(cache_dir, exist_ok=True)
        cache_file = os.path.join(cache_dir, f'{url_md5}_{safe}')
        tmp_file = os.path.join(cache_dir, f'tmp_{uuid.uuid4().hex}_{url_md5}_{safe}')
        try:
            with open(tmp_file, 'wb') as f:
                f.write(data)
            os.replace(tmp_file, cache_file)
        finally:
            if os.path.exists(tmp_file):
                os.remove(tmp_file)
        if return_filename:
            return cache_file

    return io.BytesIO(data)


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> str:
    """Call write(binary file) on a temporary file beside `path` (folders created), then rename it onto `path`:
    readers see the old file or the complete new one, never a half-written one. The file gets the mode a plain
    open() would give it (0666 less the umask), not mkstemp's 0600. Returns `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        exc.filename = exc.filename or path      # a failed write (disk full) names no file: name the one we write
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path: str, text: str) -> str:
    """atomic_write of a UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def atomic_write_json(path: str, obj: Any, indent: Optional[int] = 2) -> str:
    """atomic_write of obj as JSON text (with a final newline)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + '\n')


def _umask() -> int:
    """The process umask (read by setting and restoring it: POSIX has no read-only call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def next_run_dir(outdir: str, desc: str) -> str:
    """`<outdir>/<id:05d>-<desc>`, the run-folder naming of EDM's train.py: id is one above the largest number that
    begins the name of a folder in outdir (0 when none does); nothing is created."""
    names = os.listdir(outdir) if os.path.isdir(outdir) else []
    ids = [int(match.group()) for name in names
           if (match := re.match(r'[0-9]+', name)) and os.path.isdir(os.path.join(outdir, name))]
    return os.path.join(outdir, f'{max(ids, default=-1) + 1:05d}-{desc}')
