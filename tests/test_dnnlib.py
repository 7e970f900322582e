"""dnnlib: EasyDict, parse_int_list, import by name, cache directories and open_url (offline, loopback only)."""
import errno
import hashlib
import http.server
import io
import os
import sys
import threading
from pathlib import Path

import pytest

import dnnlib
from dnnlib import util


# ----------------------------------------------------------------------------------------------------------------------
# EasyDict.

def test_easydict_attribute_and_dict_access():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    d['c'] = 3
    assert d.a == 1 and d['b'] == 2 and d.c == 3
    assert dict(d) == {'a': 1, 'b': 2, 'c': 3}
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError):
        _ = d.missing
    with pytest.raises(AttributeError):
        del d.missing
    assert getattr(d, 'missing', 'default') == 'default'
    assert dnnlib.util.EasyDict is dnnlib.EasyDict
    assert isinstance(d, dict)


def test_easydict_pickles_and_copies():
    import copy
    import pickle
    d = dnnlib.EasyDict(x=[1, 2], y=dnnlib.EasyDict(z=3))
    for e in (pickle.loads(pickle.dumps(d)), copy.deepcopy(d)):
        assert type(e) is dnnlib.EasyDict and e == d and e.y.z == 3


# ----------------------------------------------------------------------------------------------------------------------
# parse_int_list, format_time.

@pytest.mark.parametrize('text, expected', [
    ('1,2,5-10', [1, 2, 5, 6, 7, 8, 9, 10]),
    ('7', [7]),
    ('0-3', [0, 1, 2, 3]),
    ('4-4', [4]),
    ('3, 1 ,2', [3, 1, 2]),
    ('-2', [-2]),
])
def test_parse_int_list(text, expected):
    assert util.parse_int_list(text) == expected


def test_parse_int_list_returns_lists_unchanged():
    seeds = [5, 3, 9]
    assert util.parse_int_list(seeds) is seeds


@pytest.mark.parametrize('text', ['a-b', '1,,2', '', '1-2-3', '5-2', '1.5', 'x'])
def test_parse_int_list_rejects_malformed(text):
    with pytest.raises(ValueError, match='invalid integer list'):
        util.parse_int_list(text)


def test_parse_int_list_max_len_is_checked_before_expanding():
    assert util.parse_int_list('0-4,7', max_len=6) == [0, 1, 2, 3, 4, 7]
    with pytest.raises(ValueError, match='holds more than 5 integers'):
        util.parse_int_list('0-2,3-5', max_len=5)
    with pytest.raises(ValueError, match='more than 1,000 integers'):
        util.parse_int_list('0-999999999999999', max_len=1000)     # would not fit in memory if expanded


def test_parse_int_list_descending_range_message():
    with pytest.raises(ValueError, match='ascending'):
        util.parse_int_list('10-5')


@pytest.mark.parametrize('seconds, expected', [
    (5, '5s'), (59.4, '59s'), (65, '1m 05s'), (3600 + 125, '1h 02m 05s'), (2 * 86400 + 3 * 3600 + 4 * 60, '2d 03h 04m'),
])
def test_format_time(seconds, expected):
    assert util.format_time(seconds) == expected


# ----------------------------------------------------------------------------------------------------------------------
# Import by name.

def test_get_obj_by_name():
    import collections
    assert util.get_obj_by_name('os.path.join') is os.path.join
    assert util.get_obj_by_name('collections.OrderedDict') is collections.OrderedDict
    assert util.get_obj_by_name('dnnlib.util.EasyDict') is dnnlib.EasyDict
    assert util.get_obj_by_name('dnnlib.EasyDict') is dnnlib.EasyDict
    with pytest.raises(AttributeError, match='nope'):
        util.get_obj_by_name('os.path.nope')
    with pytest.raises((ImportError, AttributeError)):
        util.get_obj_by_name('no_such_module_xyz.thing')


def test_get_obj_by_name_reports_broken_modules(tmp_path, monkeypatch):
    # A module that exists but fails to import must surface its own error, not "not found".
    (tmp_path / 'broken_mod_for_test.py').write_text('import missing_dependency_xyz\nX = 1\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match='missing_dependency_xyz'):
        util.get_obj_by_name('broken_mod_for_test.X')


def test_construct_and_call_by_name():
    d = util.construct_class_by_name(class_name='dnnlib.EasyDict', a=1, b=2)
    assert type(d) is dnnlib.EasyDict and d.b == 2
    assert util.call_func_by_name(3, 4, func_name='operator.add') == 7
    assert util.call_func_by_name('a', 'b', func_name='os.path.join') == os.path.join('a', 'b')
    with pytest.raises(ValueError):
        util.call_func_by_name(func_name=None)
    with pytest.raises(TypeError):
        util.call_func_by_name(func_name='os.sep')


# ----------------------------------------------------------------------------------------------------------------------
# Cache directories, is_url.

def test_cache_dir_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setattr(util, '_cache_dir', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'env'))
    assert util.make_cache_dir_path('downloads') == str(tmp_path / 'env' / 'downloads')
    util.set_cache_dir(str(tmp_path / 'explicit'))
    try:
        assert dnnlib.make_cache_dir_path('a', 'b') == str(tmp_path / 'explicit' / 'a' / 'b')
    finally:
        util.set_cache_dir(None)
    monkeypatch.delenv('DNNLIB_CACHE_DIR')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert util.make_cache_dir_path('x') == str(tmp_path / 'home' / '.cache' / 'dnnlib' / 'x')


@pytest.mark.parametrize('obj, expected', [
    ('https://nvlabs-fi-cdn.nvidia.com/edm/x.pkl', True),
    ('http://127.0.0.1:8000/a', True),
    ('http://localhost:8000/a', True),
    ('http://nodot/a', False),
    ('file:///tmp/x', False),
    ('/tmp/x.pkl', False),
    (42, False),
])
def test_is_url(obj, expected):
    assert util.is_url(obj) == expected


def test_is_url_file_urls_when_allowed():
    assert util.is_url('file:///tmp/x', allow_file_urls=True)


# ----------------------------------------------------------------------------------------------------------------------
# open_url: local files.

def test_open_url_local_path_and_file_url(tmp_path):
    path = tmp_path / 'some file.bin'
    path.write_bytes(b'payload')
    with util.open_url(str(path)) as f:
        assert f.read() == b'payload'
    assert util.open_url(str(path), return_filename=True) == str(path)
    url = path.as_uri()  # file:///.../some%20file.bin
    with util.open_url(url) as f:
        assert f.read() == b'payload'
    assert util.open_url(url, return_filename=True) == str(path)


def test_open_url_missing_local_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        util.open_url(str(tmp_path / 'nope.pkl'))
    with pytest.raises(FileNotFoundError):
        util.open_url((tmp_path / 'nope.pkl').as_uri())


def test_open_url_rejects_bad_url():
    with pytest.raises(ValueError):
        util.open_url('http://nodot/x', verbose=False)


# ----------------------------------------------------------------------------------------------------------------------
# open_url: http on loopback.

class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    hits: list = []

    def do_GET(self):
        self.hits.append(self.path)
        if self.path not in self.routes:
            self.send_error(404)
            return
        body, headers = self.routes[self.path]
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.routes = {
        '/net.pkl': (b'network bytes', {}),
        '/dl?id=7': (b'named', {'Content-Disposition': 'attachment; filename="model-v1.pkl"'}),
        '/empty': (b'', {}),
    }
    _Handler.hits = []
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f'http://127.0.0.1:{httpd.server_address[1]}'
    yield base, httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    cache = tmp_path / 'cache'
    monkeypatch.setattr(util, '_cache_dir', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(cache))
    return cache / 'downloads'


def test_open_url_http_downloads_then_uses_cache(server, cache_env, capsys):
    base, httpd = server
    url = base + '/net.pkl'
    with util.open_url(url) as f:
        assert f.read() == b'network bytes'
    out = capsys.readouterr().out
    assert f'Downloading {url} ...' in out and 'done' in out

    md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    safe = url.replace(':', '_').replace('/', '_')
    files = sorted(os.listdir(cache_env))
    assert files == [f'{md5}_{safe}']
    assert (cache_env / files[0]).read_bytes() == b'network bytes'

    httpd.shutdown()  # the second call must not need the server
    httpd.server_close()
    with util.open_url(url) as f:
        assert f.read() == b'network bytes'
        assert isinstance(f, io.BufferedReader)  # a real file from the cache
    assert util.open_url(url, return_filename=True) == str(cache_env / files[0])
    assert _Handler.hits == ['/net.pkl']


def test_open_url_return_filename_downloads(server, cache_env):
    base, _ = server
    url = base + '/dl?id=7'
    path = util.open_url(url, return_filename=True, verbose=False)
    md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    assert Path(path) == cache_env / f'{md5}_model-v1.pkl'  # Content-Disposition names the file
    assert Path(path).read_bytes() == b'named'
    assert not [n for n in os.listdir(cache_env) if n.startswith('tmp_')]


def test_open_url_explicit_cache_dir_and_no_cache(server, tmp_path, cache_env):
    base, _ = server
    url = base + '/net.pkl'
    mine = tmp_path / 'mine'
    with util.open_url(url, cache_dir=str(mine), verbose=False) as f:
        assert f.read() == b'network bytes'
    assert len(os.listdir(mine)) == 1 and not cache_env.exists()
    with util.open_url(url, cache=False, verbose=False) as f:
        assert f.read() == b'network bytes'
    assert _Handler.hits == ['/net.pkl', '/net.pkl']  # cache=False always downloads
    with pytest.raises(ValueError):
        util.open_url(url, cache=False, return_filename=True)


def test_open_url_empty_body_is_an_error(server, cache_env, capsys):
    base, _ = server
    with pytest.raises(IOError, match='no data'):
        util.open_url(base + '/empty', num_attempts=2)
    assert 'failed' in capsys.readouterr().out
    assert _Handler.hits == ['/empty', '/empty']  # retried
    assert not cache_env.exists() or not os.listdir(cache_env)


def test_open_url_404_fails_without_retrying(server, cache_env):
    import requests
    base, _ = server
    with pytest.raises(requests.HTTPError):
        util.open_url(base + '/missing', num_attempts=5, verbose=False)
    assert _Handler.hits == ['/missing']
    assert not cache_env.exists() or not os.listdir(cache_env)


# ----------------------------------------------------------------------------------------------------------------------
# Logger.

def test_logger_tees_stdout_to_file(tmp_path):
    log = tmp_path / 'log.txt'
    saved = sys.stdout, sys.stderr
    with util.Logger(file_name=str(log), file_mode='a'):
        print('hello log')
        sys.stderr.write('to stderr\n')
    assert (sys.stdout, sys.stderr) == saved
    assert log.read_text() == 'hello log\nto stderr\n'


def test_logger_on_a_full_disk_restores_the_console_and_raises(tmp_path):
    class FullFile(io.StringIO):                  # as a file on a full disk: flush fails, close flushes first
        def flush(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            try:
                self.flush()
            finally:
                super().close()

    saved = sys.stdout, sys.stderr
    logger = util.Logger()
    logger.file = FullFile()
    with pytest.raises(OSError):
        print('refused')
    with pytest.raises(OSError):
        logger.close()
    assert (sys.stdout, sys.stderr) == saved and logger.file is None


# ----------------------------------------------------------------------------------------------------------------------
# Run folders.

def test_next_run_dir_numbers_after_the_largest_leading_number_of_a_folder(tmp_path):
    assert util.next_run_dir(str(tmp_path / 'missing'), 'a') == str(tmp_path / 'missing' / '00000-a')
    for name in ('00003-x', '7-y', '12', 'z99'):
        (tmp_path / name).mkdir()
    (tmp_path / '00050-file').write_text('')                       # a file is not a run
    assert util.next_run_dir(str(tmp_path), 'd') == str(tmp_path / '00013-d')
    (tmp_path / '123456-big').mkdir()
    assert util.next_run_dir(str(tmp_path), 'd') == str(tmp_path / '123457-d')


@pytest.mark.parametrize('umask, mode', [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_write_gives_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = util.atomic_write_text(str(tmp_path / 'f.txt'), 'x')
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == mode     # what open() would give: 0666 less the umask
    assert os.listdir(tmp_path) == ['f.txt']           # no temporary file left beside it


def test_atomic_write_failure_names_the_file_and_leaves_nothing(tmp_path):
    def full(f):
        f.write(b'partial')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))      # as a write to a full disk fails: no file name

    path = str(tmp_path / 'f.bin')
    with pytest.raises(OSError) as info:
        util.atomic_write(path, full)
    assert info.value.errno == errno.ENOSPC and info.value.filename == path
    assert os.listdir(tmp_path) == []
