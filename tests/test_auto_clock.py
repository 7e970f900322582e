"""art/auto_clock.py: the cache key, reuse without network evaluations, damaged and foreign cache files, two writers,
an unwritable folder, and the same grid under torchrun as in one process."""
import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import types

import numpy as np
import PIL.Image
import pytest

from art import auto_clock
from art.closed_form import AdaptiveSettings
from art.networks import load_network_spec
from art.schedules import Schedule, load_schedule, save_schedule
from conftest import ROOT, run_cli_in_process, tiny_edm_net, write_network_pkl
from edm.guidance import guided_spec
from tiny_edm2 import TOY, tiny_edm2_net, write_edm2_pkl

GAUSS = 'analytic:gauss1d'


@dataclasses.dataclass
class Settings:
    """Settings of an estimate, as the key sees them (any dataclass)."""
    samples: int = 4


def _key(net, network, settings=Settings(), seed=0):
    return auto_clock.clock_key(net, network, settings, seed)


def test_key_follows_the_content_range_guidance_and_settings_not_the_path(tmp_path):
    net = types.SimpleNamespace(sigma_min=0.0, sigma_max=float('inf'))
    a = write_network_pkl(tmp_path / 'a.pkl', tiny_edm_net())
    b = shutil.copy(a, str(tmp_path / 'b.pkl'))                             # same bytes, another path
    other = write_network_pkl(tmp_path / 'c.pkl', tiny_edm_net(seed=1))
    key = _key(net, a)
    assert _key(net, b) == key and auto_clock.cache_path('d', a, key).name.startswith('a-')
    assert key['network'] == {'pickle_sha256': auto_clock.file_sha256(b)}
    assert _key(net, other) != key                                            # other bytes
    assert _key(types.SimpleNamespace(sigma_min=0.0, sigma_max=10.0), a) != key   # another sigma range
    assert _key(net, a, Settings(samples=8)) != key and _key(net, a, seed=1) != key
    guided = {w: _key(net, guided_spec(a, other, w)) for w in (1.5, 2.0)}
    assert guided[1.5] != guided[2.0] and guided[1.5]['guidance']['gnet'] == _key(net, other)['network']
    assert _key(net, guided_spec(b, other, 1.5)) == guided[1.5]
    np.savez(tmp_path / 'm1.npz', mu=np.zeros((2, 1)), std=np.ones(2), weight=np.ones(2))
    shutil.copy(tmp_path / 'm1.npz', tmp_path / 'm2.npz')
    assert _key(net, f'analytic:gmm:{tmp_path / "m1.npz"}') == _key(net, f'analytic:gmm:{tmp_path / "m2.npz"}')
    assert _key(net, 'analytic:gauss:std=0.5,shape=1x4x4') != _key(net, 'analytic:gauss:std=0.6,shape=1x4x4')


@pytest.fixture
def counted(monkeypatch):
    """The estimate, counted: calls['n'] estimates made."""
    calls = {'n': 0}
    estimate = auto_clock.adaptive_schedule

    def counting(*args, **kwargs):
        calls['n'] += 1
        return estimate(*args, **kwargs)
    monkeypatch.setattr(auto_clock, 'adaptive_schedule', counting)
    return calls


def test_made_once_then_reused_without_network_evaluation(tmp_path, counted):
    net, lines = load_network_spec(GAUSS), []
    first = auto_clock.make_clock(net, GAUSS, str(tmp_path), log=lines.append)
    second = auto_clock.make_clock(net, GAUSS, str(tmp_path), log=lines.append)
    (path,) = tmp_path.iterdir()
    assert counted['n'] == 1 and len(lines) == 2
    assert lines[0].startswith(f'ART clock for {GAUSS}: made in ') and f'network evaluations (cached in {path})' \
        in lines[0]
    assert lines[1] == f'ART clock for {GAUSS}: from the cache ({path}), no network evaluation'
    assert np.array_equal(first.resample(7).sigmas, second.resample(7).sigmas)
    assert load_schedule(path).provenance['cache_key'] == _key(net, GAUSS, auto_clock.AdaptiveSettings())


@pytest.mark.parametrize('damage, reason', [
    (lambda path, text: path.write_text(text[:len(text) // 2]), 'not valid JSON'),              # truncated
    (lambda path, text: path.write_text('{"format": "something-else"}'), 'not an edm-art-schedule file'),
    (lambda path, text: path.write_text(text.replace('"cache_key"', '"old_key"')), 'made for another network'),
    (lambda path, text: save_schedule(Schedule('closed-form', [3.0, 1.0, 0.0], provenance=dict(
        cache_key=json.loads(text)['provenance']['cache_key'])), path), 'holds no clock'),
])
def test_a_damaged_or_foreign_cache_file_is_ignored_with_a_note_and_remade(tmp_path, counted, damage, reason):
    net = load_network_spec(GAUSS)
    made = auto_clock.make_clock(net, GAUSS, str(tmp_path), log=lambda line: None)
    (path,) = tmp_path.iterdir()
    damage(path, path.read_text())
    lines = []
    again = auto_clock.make_clock(net, GAUSS, str(tmp_path), log=lines.append)
    assert counted['n'] == 2 and len(lines) == 2 and ' made in ' in lines[1]
    assert lines[0].startswith('Note: ignoring the cached ART clock: ') and reason in lines[0] and str(path) in lines[0]
    assert np.array_equal(load_schedule(path).sigmas, made.sigmas) and np.array_equal(again.sigmas, made.sigmas)


def test_another_networks_file_under_this_key_is_not_used(tmp_path):
    net = load_network_spec(GAUSS)
    other = 'analytic:gauss:std=0.5,shape=1x4x4'
    auto_clock.make_clock(load_network_spec(other), other, str(tmp_path), log=lambda line: None)
    (foreign,) = tmp_path.iterdir()
    path = auto_clock.cache_path(str(tmp_path), GAUSS, _key(net, GAUSS, auto_clock.AdaptiveSettings()))
    shutil.copy(foreign, path)                                                # copied in under this network's name
    lines = []
    schedule = auto_clock.make_clock(net, GAUSS, str(tmp_path), log=lines.append)
    assert 'made for another network' in lines[0] and ' made in ' in lines[1]
    assert schedule.sigmas[0] == 3.0 and load_schedule(path).provenance['network'] == GAUSS    # gauss1d's T = 3


def test_two_writers_at_once_leave_a_valid_file(tmp_path, monkeypatch):
    net = load_network_spec(GAUSS)
    clock = auto_clock.adaptive_schedule(net, GAUSS)
    both_made = threading.Barrier(2, timeout=30)

    def made_together(*args, **kwargs):               # both have missed the cache, and write once both have a clock
        both_made.wait()
        return copy.deepcopy(clock)
    monkeypatch.setattr(auto_clock, 'adaptive_schedule', made_together)
    lines = []
    writers = [threading.Thread(target=auto_clock.make_clock, args=(net, GAUSS, str(tmp_path)),
                                kwargs=dict(log=lines.append)) for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    (path,) = tmp_path.iterdir()                                              # no temporary file left
    assert sum('(cached in' in line for line in lines) == 2
    assert load_schedule(path).provenance['cache_key'] == _key(net, GAUSS, auto_clock.AdaptiveSettings())


def test_an_unwritable_cache_folder_costs_only_the_reuse(tmp_path):
    (tmp_path / 'file').write_text('x')
    folder, lines = str(tmp_path / 'file' / 'cache'), []                      # under a file: cannot be made
    schedule = auto_clock.make_clock(load_network_spec(GAUSS), GAUSS, folder, log=lines.append)
    assert len(lines) == 1 and f'(could not be cached in {folder}: ' in lines[0] and schedule.clock is not None


def test_cache_folder_option_environment_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv(auto_clock.CACHE_ENV, str(tmp_path / 'env'))
    assert auto_clock.cache_dir('opt') == 'opt' and auto_clock.cache_dir() == str(tmp_path / 'env')
    monkeypatch.delenv(auto_clock.CACHE_ENV)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'dnnlib'))
    assert auto_clock.cache_dir() == str(tmp_path / 'dnnlib' / auto_clock.CACHE_SUBDIR)


@pytest.mark.slow
def test_torchrun_samples_with_the_grid_of_one_process(tmp_path):
    # Two ranks with an empty cache: rank 0 makes the clock once and both sample with it, as one process does.
    network = 'analytic:gauss:std=0.5,shape=1x4x4'
    common = ['generate_art.py', f'--network={network}', '--seeds=0-3', '--steps=4', '--solver=euler', '--batch=1',
              '--device=cpu']
    code, one, err = run_cli_in_process(common + [f'--outdir={tmp_path / "one"}', f'--cache-dir={tmp_path / "c1"}'])
    assert code == 0, err
    torchrun = [os.path.join(os.path.dirname(sys.executable), 'torchrun'), '--standalone', '--nproc_per_node=2']
    two = subprocess.run(torchrun + common + [f'--outdir={tmp_path / "two"}', f'--cache-dir={tmp_path / "c2"}'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert two.returncode == 0, two.stderr
    assert two.stdout.count('ART clock for') == 1 and ' made in ' in two.stdout
    assert [line for line in one.splitlines() if line.startswith('Schedule ')] == \
        [line for line in two.stdout.splitlines() if line.startswith('Schedule ')]
    for seed in range(4):
        name = f'{seed:06d}.png'
        assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / 'one' / name)),
                              np.asarray(PIL.Image.open(tmp_path / 'two' / name))), name


def test_edm2_networks_guided_and_unguided_get_their_own_clock(tmp_path):
    net_pkl = write_edm2_pkl(tmp_path / 'net.pkl', tiny_edm2_net(seed=1, **TOY))
    guide = write_edm2_pkl(tmp_path / 'guide.pkl', tiny_edm2_net(seed=2, **TOY))
    settings = AdaptiveSettings(budget=12, start_samples=1, levels=3)        # 4 evaluations a trajectory: at most 3
    paths = set()
    for network in (net_pkl, guided_spec(net_pkl, guide, 2.0)):
        lines = []
        schedule = auto_clock.make_clock(load_network_spec(network), network, str(tmp_path / 'c'), settings,
                                         log=lines.append)
        assert schedule.provenance['network'] == network and ' made in ' in lines[0]
        paths.add(lines[0].rsplit('(cached in ', 1)[1])
    assert len(paths) == 2
