"""edm/cli.py: the checks every command line makes before any work (output locations, sigma range, name lists)."""
import errno
import os
import tempfile

import click
import pytest

from art.analytic import load_analytic
from dnnlib.util import UserError
from edm import grids
from edm.cli import (MAX_LIST_LEN, SEED, STEPS, Command, check_output_dir, check_output_file, check_sigma_range,
                     name_list_callback, parse_seeds, steps_callback)
from edm.rng import MAX_SEED


@pytest.fixture
def unwritable(tmp_path) -> str:
    """A folder this process cannot create files in (a 0500 folder, or /sys for root, who ignores permission bits)."""
    folder = tmp_path / 'ro'
    folder.mkdir()
    folder.chmod(0o500)
    try:
        for candidate in (str(folder), '/sys'):
            try:
                with tempfile.TemporaryFile(dir=candidate):
                    pass
            except OSError:
                yield candidate
                return
        pytest.skip('no folder here refuses this process a new file')
    finally:
        folder.chmod(0o700)


def test_output_dir_accepts_new_and_existing_folders_and_creates_nothing(tmp_path):
    assert check_output_dir(str(tmp_path), '--outdir') == str(tmp_path)
    new = tmp_path / 'a' / 'b'
    assert check_output_dir(str(new), '--outdir') == str(new)
    assert not (tmp_path / 'a').exists()


def test_output_file_accepts_new_and_existing_files_and_creates_nothing(tmp_path):
    (tmp_path / 'old.json').write_text('{}')
    assert check_output_file(str(tmp_path / 'old.json'), '--out') == str(tmp_path / 'old.json')
    assert check_output_file(str(tmp_path / 'a' / 'new.json'), '--out') == str(tmp_path / 'a' / 'new.json')
    assert sorted(os.listdir(tmp_path)) == ['old.json']


@pytest.mark.parametrize('check, name, words', [
    (check_output_dir, 'file', 'is a file, not a folder'),              # a file where a folder is wanted
    (check_output_dir, 'file/sub', 'file is a file, not a folder'),     # under a regular file
    (check_output_file, 'file/x.json', 'file is a file, not a folder'),
    (check_output_file, 'folder', 'is a folder; give a file path'),     # a folder where a file is wanted
    (check_output_dir, '', 'must not be empty'),
    (check_output_file, '', 'must not be empty'),
])
def test_output_location_errors(tmp_path, check, name, words):
    (tmp_path / 'file').write_text('x')
    (tmp_path / 'folder').mkdir()
    with pytest.raises(UserError, match=words) as info:
        check(str(tmp_path / name) if name else '', '--opt')
    assert str(info.value).startswith('--opt') and '\n' not in str(info.value)


@pytest.mark.parametrize('check, name', [(check_output_dir, 'new/sub'), (check_output_dir, ''),
                                         (check_output_file, 'new/x.json'), (check_output_file, 'x.json')])
def test_output_location_unwritable(unwritable, check, name):
    with pytest.raises(UserError, match='cannot write in .*choose another path'):
        check(os.path.join(unwritable, name), '--opt')


def test_name_list_callback():
    assert name_list_callback(None, None, 'edm, uniform ,x.json') == ['edm', 'uniform', 'x.json']
    assert name_list_callback(None, None, '') == [] and name_list_callback(None, None, None) is None
    for value in ('edm,,uniform', 'edm,', ',edm'):
        with pytest.raises(click.BadParameter, match='empty entry'):
            name_list_callback(None, None, value)


def test_sigma_range():
    check_sigma_range(None, None)                               # nothing given: nothing to check
    check_sigma_range(0.5, 10.0)
    check_sigma_range(None, 10.0, 've')                         # ve's default sigma_min is 0.02
    with pytest.raises(UserError, match='--sigma_min=5 --sigma_max=1 leaves no noise levels'):
        check_sigma_range(5.0, 1.0)
    with pytest.raises(UserError, match="sigma_min 100 is not below sigma_max 80 .the edm grid's default"):
        check_sigma_range(100.0, None)                          # EDM's default sigma_max is 80
    net = load_analytic('analytic:gauss1d')                     # T = 3
    check_sigma_range(2.0, None, net=None)
    with pytest.raises(UserError, match="clamped to the network's range"):
        check_sigma_range(5.0, None, net=net)


def test_steps_and_seeds_are_bounded():
    assert steps_callback()(None, None, f'1,{grids.MAX_STEPS}') == [1, grids.MAX_STEPS]
    assert parse_seeds(None, None, f'0,{MAX_SEED}') == [0, MAX_SEED]
    for callback, value, words in [(steps_callback(), f'{grids.MAX_STEPS + 1}', 'steps must be integers <= 10,000'),
                                   (parse_seeds, f'{MAX_SEED + 1}', f'seeds must be integers <= {MAX_SEED:,}'),
                                   (parse_seeds, '0-99999999999', f'more than {MAX_LIST_LEN:,} integers')]:
        with pytest.raises(click.BadParameter, match=words):     # the range is refused before it is expanded
            callback(None, None, value)
    assert STEPS.convert(grids.MAX_STEPS, None, None) == grids.MAX_STEPS and SEED.convert(MAX_SEED, None, None)
    for kind, value in [(STEPS, grids.MAX_STEPS + 1), (STEPS, 0), (SEED, MAX_SEED + 1), (SEED, -1)]:
        with pytest.raises(click.BadParameter, match='not in the range'):
            kind.convert(value, None, None)


def test_output_file_refuses_a_device():
    if not os.path.exists(os.devnull):
        pytest.skip('no null device')
    with pytest.raises(UserError, match=f'--out: {os.devnull} is not a regular file'):   # a rename would replace it
        check_output_file(os.devnull, '--out')


@pytest.mark.parametrize('filename, words', [('out/000001.png', 'No space left on device writing out/000001.png; '),
                                             (None, 'No space left on device; free some space')])
def test_a_full_disk_is_one_line(capsys, filename, words):
    @click.command(cls=Command)
    def full():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    with pytest.raises(SystemExit) as exit_info:
        full.main([])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith(f'error: {words}') and err.count('\n') == 1


def test_other_os_errors_are_not_disguised():
    @click.command(cls=Command)
    def broken():
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with pytest.raises(OSError, match='Input/output error'):       # a fault, not a user's mistake: the traceback
        broken.main([])
