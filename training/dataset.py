"""Datasets for training: a folder or an uncompressed zip of PNGs plus dataset.json (docs/edm-compat.md §7.4), and the
reader of MNIST-format (IDX) files."""
import gzip
import json
import os
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import PIL.Image
import torch

from dnnlib.util import UserError

try:
    import pyspng  # optional fast PNG decoder
except ImportError:
    pyspng = None

IMAGE_EXTENSIONS = {'.bmp', '.gif', '.jpeg', '.jpg', '.png', '.ppm', '.tif', '.tiff', '.webp'}


class Dataset:
    """Abstract image dataset: max_size subset, optional x-flip doubling, optional RAM cache, one-hot labels."""

    def __init__(self, name: str, raw_shape: List[int], max_size: Optional[int] = None, use_labels: bool = False,
                 xflip: bool = False, random_seed: int = 0, cache: bool = False):
        self._name = name
        self._raw_shape = list(raw_shape)  # [N, C, H, W]
        self._use_labels = use_labels
        self._cache = cache
        self._cached_images: Dict[int, np.ndarray] = {}
        self._raw_labels: Optional[np.ndarray] = None
        self._label_shape: Optional[List[int]] = None

        # Subset: shuffle with a seeded RandomState, keep max_size, sort (§7.4).
        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and self._raw_idx.size > max_size:
            np.random.RandomState(random_seed % (1 << 31)).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])

        # x-flip doubles the dataset: the second half is mirrored.
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def _get_raw_labels(self) -> np.ndarray:
        if self._raw_labels is None:
            self._raw_labels = self._load_raw_labels() if self._use_labels else None
            if self._raw_labels is None:
                self._raw_labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            assert isinstance(self._raw_labels, np.ndarray)
            assert self._raw_labels.shape[0] == self._raw_shape[0]
            assert self._raw_labels.dtype in [np.float32, np.int64]
            if self._raw_labels.dtype == np.int64:
                assert self._raw_labels.ndim == 1
                assert np.all(self._raw_labels >= 0)
        return self._raw_labels

    def close(self) -> None:
        """Release open files (if any)."""

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:  # to be overridden by subclass
        raise NotImplementedError

    def _load_raw_labels(self) -> Optional[np.ndarray]:  # to be overridden by subclass
        raise NotImplementedError

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _raw_labels=None)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __len__(self) -> int:
        return self._raw_idx.size

    def __getitem__(self, idx: int):
        raw_idx = int(self._raw_idx[idx])
        image = self._cached_images.get(raw_idx, None)
        if image is None:
            image = self._load_raw_image(raw_idx)
            if self._cache:
                self._cached_images[raw_idx] = image
        assert isinstance(image, np.ndarray)
        assert list(image.shape) == self.image_shape
        assert image.dtype == np.uint8
        if self._xflip[idx]:
            assert image.ndim == 3  # CHW
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def get_label(self, idx: int) -> np.ndarray:
        """Label of item idx: float32 one-hot for integer labels, the stored vector otherwise."""
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            label = onehot
        return label.copy()

    def get_details(self, idx: int) -> Any:
        """Raw index, x-flip flag and raw label of item idx."""
        from dnnlib import EasyDict
        return EasyDict(raw_idx=int(self._raw_idx[idx]), xflip=(int(self._xflip[idx]) != 0),
                        raw_label=self._get_raw_labels()[self._raw_idx[idx]].copy())

    @property
    def name(self) -> str:
        """Dataset name (file stem of the zip or folder)."""
        return self._name

    @property
    def image_shape(self) -> List[int]:
        """[C, H, W]."""
        return list(self._raw_shape[1:])

    @property
    def num_channels(self) -> int:
        """Number of image channels."""
        assert len(self.image_shape) == 3  # CHW
        return self.image_shape[0]

    @property
    def resolution(self) -> int:
        """Side length of the (square) images."""
        assert len(self.image_shape) == 3  # CHW
        assert self.image_shape[1] == self.image_shape[2]
        return self.image_shape[1]

    @property
    def label_shape(self) -> List[int]:
        """Shape of one label: [max+1] for integer labels, the vector shape otherwise, [0] without labels."""
        if self._label_shape is None:
            raw_labels = self._get_raw_labels()
            if raw_labels.dtype == np.int64:
                self._label_shape = [int(np.max(raw_labels)) + 1]
            else:
                self._label_shape = list(raw_labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self) -> int:
        """Length of a label vector."""
        assert len(self.label_shape) == 1
        return self.label_shape[0]

    @property
    def has_labels(self) -> bool:
        """True when labels are used and non-empty."""
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self) -> bool:
        """True when the raw labels are integer class indices."""
        return self._get_raw_labels().dtype == np.int64


class ImageFolderDataset(Dataset):
    """Images from a directory tree or a zip; labels from dataset.json at its root."""

    def __init__(self, path: str, resolution: Optional[int] = None, use_pyspng: bool = True, **super_kwargs: Any):
        self._path = str(path)
        self._use_pyspng = use_pyspng
        self._zipfile: Optional[zipfile.ZipFile] = None

        if os.path.isdir(self._path):
            self._type = 'dir'
            self._all_fnames = {os.path.relpath(os.path.join(root, fname), start=self._path)
                                for root, _dirs, files in os.walk(self._path) for fname in files}
        elif self._file_ext(self._path) == '.zip':
            if not os.path.isfile(self._path):
                raise UserError(f'dataset not found: {self._path!r}')
            self._type = 'zip'
            try:
                self._all_fnames = set(self._get_zipfile().namelist())
            except zipfile.BadZipFile:
                raise UserError(f'{self._path!r} is not a valid zip file') from None
        elif not os.path.exists(self._path):
            raise UserError(f'dataset not found: {self._path!r} (expected a directory or a .zip)')
        else:
            raise UserError(f'dataset path {self._path!r} must point to a directory or a .zip file')

        PIL.Image.init()
        self._image_fnames = sorted(f for f in self._all_fnames if self._file_ext(f) in IMAGE_EXTENSIONS)
        if len(self._image_fnames) == 0:
            raise UserError(f'no image files found in {self._path!r}')

        name = os.path.splitext(os.path.basename(self._path.rstrip('/\\')))[0]
        raw_shape = [len(self._image_fnames)] + list(self._load_raw_image(0).shape)
        if resolution is not None and (raw_shape[2] != resolution or raw_shape[3] != resolution):
            raise UserError(f'{self._path!r} holds {raw_shape[3]}x{raw_shape[2]} images, '
                            f'but resolution {resolution} was requested')
        super().__init__(name=name, raw_shape=raw_shape, **super_kwargs)

    @staticmethod
    def _file_ext(fname: str) -> str:
        return os.path.splitext(fname)[1].lower()

    def _get_zipfile(self) -> zipfile.ZipFile:
        assert self._type == 'zip'
        if self._zipfile is None:
            self._zipfile = zipfile.ZipFile(self._path)
        return self._zipfile

    def _open_file(self, fname: str):
        if self._type == 'dir':
            return open(os.path.join(self._path, fname), 'rb')
        return self._get_zipfile().open(fname, 'r')

    def close(self) -> None:
        """Close the zip file, if open."""
        try:
            if self._zipfile is not None:
                self._zipfile.close()
        finally:
            self._zipfile = None

    def __getstate__(self) -> dict:
        return dict(super().__getstate__(), _zipfile=None)

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        fname = self._image_fnames[raw_idx]
        with self._open_file(fname) as f:
            if self._use_pyspng and pyspng is not None and self._file_ext(fname) == '.png':
                image = pyspng.load(f.read())
            else:
                image = np.array(PIL.Image.open(f))
        if image.ndim == 2:
            image = image[:, :, np.newaxis]  # HW => HWC
        return image.transpose(2, 0, 1)  # HWC => CHW

    def _load_raw_labels(self) -> Optional[np.ndarray]:
        fname = 'dataset.json'
        if fname not in self._all_fnames:
            return None
        with self._open_file(fname) as f:
            labels = json.load(f)['labels']
        if labels is None:
            return None
        labels = {str(name).replace('\\', '/'): value for name, value in labels}
        # Lookup normalises Windows separators (§7.4).
        try:
            labels = [labels[fname.replace('\\', '/')] for fname in self._image_fnames]
        except KeyError as exc:
            raise UserError(f'dataset.json in {self._path!r} has no label for {exc.args[0]!r}') from None
        labels = np.array(labels)
        labels = labels.astype({1: np.int64, 2: np.float32}[labels.ndim])
        return labels


def read_idx(path: str) -> np.ndarray:
    """Read a gzipped IDX file (MNIST format): magic 0x00 0x00 dtype ndim, big-endian int32 dims, data."""
    try:
        with gzip.open(path, 'rb') as f:
            data = f.read()
    except OSError as exc:
        raise UserError(f'cannot read {path!r}: {exc}') from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f'{path!r} is not an unsigned-byte IDX file')
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise UserError(f'{path!r} is truncated (its header promises {ndim} dimensions)')
    dims = np.frombuffer(data, dtype='>i4', count=ndim, offset=4).astype(np.int64)
    if len(data) - offset != int(np.prod(dims)):
        raise UserError(f'{path!r} is truncated (expected {int(np.prod(dims))} bytes of data)')
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def fashion_mnist(folder: str, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 1, 28, 28] and int64 labels [N] of one Fashion-MNIST split ('train' or 't10k')."""
    images = read_idx(os.path.join(folder, f'{split}-images-idx3-ubyte.gz'))
    labels = read_idx(os.path.join(folder, f'{split}-labels-idx1-ubyte.gz'))
    if images.shape[1:] != (28, 28) or labels.shape != (len(images),):
        raise UserError(f'{folder}: {split} images {images.shape} and labels {labels.shape} are not Fashion-MNIST')
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))
