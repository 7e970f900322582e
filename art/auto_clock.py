"""The network's ART schedule at load time: its shipped file, else its clock made on first use, cached and reused.

A command given a network and K but no schedule file (generate_art.py, art.bench's `art`, art.demo) samples with the
network's ART schedule: the shipped file when the network has one (art/networks.py shipped_schedule_path), else the
adaptive closed-form clock (art/closed_form.py adaptive_schedule), estimated once per network and kept in a cache.

Cache: one schedule file (art/schedules.py format) per key in the cache folder, `--cache-dir` of the commands, else
$EDM_ART_CACHE, else `clocks/` under dnnlib's cache root (dnnlib.util.make_cache_dir_path, which honours
$DNNLIB_CACHE_DIR). The key holds what the clock depends on: the network's content (sha256 of the pickle's bytes; an
analytic spec itself, a mixture's npz by its sha256, a diffusers model by its three files' sha256; a guided field both
files' hashes and the guidance weight), the sigma range of the estimate, its settings (dataclasses.asdict) and seed,
and KEY_VERSION; never the file's path. The file records its key in provenance['cache_key']: a file whose recorded key
differs (another network's file copied in), or that is not a readable schedule with a clock, is ignored with one note
and made again. Writes are atomic (the last of two writers wins; both files are complete). An unwritable folder costs
the reuse only: the clock is made, used, and the line says that it could not be cached.

Under torchrun rank 0 reads or makes the clock (and writes the cache), and every rank samples with the grid it
broadcasts, so the grid does not depend on the number of processes.
"""

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import dnnlib
from dnnlib.util import UserError
from art.closed_form import AdaptiveSettings, adaptive_schedule, fine_levels
from art.networks import network_name, shipped_schedule_path
from art.schedules import Schedule, ScheduleError, Stopwatch, load_schedule, save_schedule
from edm.diffusers_net import PREFIX as DIFFUSERS_PREFIX, model_files
from edm.guidance import split_guided_spec
from torch_utils import distributed as dist

NAME = 'art'                  # the schedule name that asks for it (generate_art.py --schedule, art.bench --schedules)
CACHE_ENV = 'EDM_ART_CACHE'   # environment variable that moves the cache folder
CACHE_SUBDIR = 'clocks'       # the folder under dnnlib's cache root
KEY_VERSION = 1               # raised when the key or the estimate's meaning changes: older files are then not used
HASH_CHUNK = 1 << 20

Log = Callable[[str], Any]


def cache_dir(folder: Optional[str] = None) -> str:
    """The cache folder: `folder` (--cache-dir), else $EDM_ART_CACHE, else clocks/ under dnnlib's cache root."""
    return folder or os.environ.get(CACHE_ENV) or dnnlib.util.make_cache_dir_path(CACHE_SUBDIR)


def file_sha256(path_or_url: str) -> str:
    """sha256 of a file's bytes (a URL: of its downloaded copy, dnnlib's download cache)."""
    digest = hashlib.sha256()
    with dnnlib.util.open_url(path_or_url, verbose=False) as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _identity(spec: str) -> dict:
    """What one network of a spec is, without its path: a pickle's, a mixture's or a diffusers model's content hashes,
    or the analytic spec."""
    if spec.startswith('analytic:gmm:'):
        return {'analytic': 'gmm', 'npz_sha256': file_sha256(spec[len('analytic:gmm:'):])}
    if spec.startswith('analytic:'):
        return {'analytic': spec}
    if spec.startswith(DIFFUSERS_PREFIX):   # the UNet's config and weights and the scheduler's config
        return {'diffusers_sha256': [file_sha256(path) for path in model_files(spec[len(DIFFUSERS_PREFIX):])]}
    return {'pickle_sha256': file_sha256(spec)}


def sigma_range(net) -> list:
    """[sigma_min, sigma_max] of the estimate on this network (the closed form's fine grid's ends)."""
    return [float(sigma) for sigma in fine_levels(net, 2)[::-1]]


def clock_key(net, network: str, settings: Any, seed: int) -> dict:
    """The cache key (module docstring) as a JSON object."""
    base, gnet, guidance = split_guided_spec(network)
    key = {'version': KEY_VERSION, 'network': _identity(base),
           'guidance': None if gnet is None else {'gnet': _identity(gnet), 'weight': float(guidance)},
           'sigma_range': sigma_range(net), 'settings': dataclasses.asdict(settings), 'seed': int(seed)}
    return json.loads(json.dumps(key))                     # as read back from the file


def cache_path(folder: str, network: str, key: dict) -> Path:
    """The key's file in the folder: the network's short name and the key's hash."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(folder) / f'{network_name(split_guided_spec(network)[0])}-{digest}.json'


def read_cached(path: Path, key: dict, log: Log) -> Optional[Schedule]:
    """The clock cached at path for this key; None when absent, and a note when the file cannot be used."""
    if not path.exists():
        return None
    try:
        schedule = load_schedule(path)
        if schedule.provenance.get('cache_key') != key:
            raise ScheduleError(f'{path}: made for another network or other settings (its cache_key differs)')
        if schedule.clock is None:
            raise ScheduleError(f'{path}: holds no clock')
    except ScheduleError as exc:
        log(f'Note: ignoring the cached ART clock: {exc}; making it again.')
        return None
    return schedule


def make_clock(net, network: str, folder: Optional[str] = None, settings: AdaptiveSettings = AdaptiveSettings(),
               seed: int = 0, log: Log = print) -> Schedule:
    """The network's ART clock from the cache, else made and cached; one line says which and what it cost."""
    key = clock_key(net, network, settings, seed)
    path = cache_path(cache_dir(folder), network, key)
    schedule = read_cached(path, key, log)
    if schedule is not None:
        log(f'ART clock for {network}: from the cache ({path}), no network evaluation')
        return schedule
    watch = Stopwatch()
    schedule = adaptive_schedule(net, network, settings, seed)
    schedule.provenance['cache_key'] = key
    seconds, evals = watch.seconds()['wall_seconds'], schedule.provenance['cost']['evals']
    made = f'made in {seconds:.3g} s, {evals:,} network evaluations'
    try:
        save_schedule(schedule, path)
        log(f'ART clock for {network}: {made} (cached in {path})')
    except OSError as exc:
        log(f'ART clock for {network}: {made} (could not be cached in {path.parent}: {exc.strerror or exc})')
    return schedule


def shared_clock(net, network: str, folder: Optional[str] = None, settings: AdaptiveSettings = AdaptiveSettings(),
                 seed: int = 0, log: Log = print) -> Schedule:
    """make_clock on rank 0, the same schedule on every rank (a broadcast of its file's content under torchrun)."""
    if dist.get_world_size() == 1:
        return make_clock(net, network, folder, settings, seed, log)
    payload = None
    if dist.get_rank() == 0:
        try:
            payload = make_clock(net, network, folder, settings, seed, log).to_dict()
        except Exception as exc:                       # the other ranks must not wait for a grid that never comes
            dist.broadcast_object(str(exc))
            raise
    payload = dist.broadcast_object(payload)
    if isinstance(payload, str):
        raise UserError(f'rank 0 could not make the ART clock: {payload}')
    return Schedule.from_dict(payload, f'the ART clock of rank 0 for {network}')


def shipped_path(network: str, num_steps: int) -> Optional[Path]:
    """The shipped schedule file for an unguided network at K (nearest shipped K), or None."""
    return None if split_guided_spec(network)[1] is not None else shipped_schedule_path(network, num_steps)


class ArtSchedules:
    """The network's ART schedule for any K: its shipped file (an unguided network), else its clock (shared_clock,
    read or made once, on first use) read at K."""

    def __init__(self, net, network: str, folder: Optional[str] = None, log: Log = print,
                 settings: AdaptiveSettings = AdaptiveSettings(), seed: int = 0):
        self.net, self.network, self.folder, self.log = net, network, folder, log
        self.settings, self.seed = settings, seed
        self.clock: Optional[Schedule] = None

    def __call__(self, num_steps: int) -> Schedule:
        """The schedule for K = num_steps."""
        shipped = shipped_path(self.network, num_steps)
        if shipped is not None:
            return load_schedule(shipped, num_steps=num_steps, resample=True)
        if self.clock is None:
            self.clock = shared_clock(self.net, self.network, self.folder, self.settings, self.seed, self.log)
        return self.clock.resample(num_steps)
