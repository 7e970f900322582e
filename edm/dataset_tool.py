"""Convert image folders, zips, CIFAR-10 and MNIST-format files into an EDM dataset (docs/edm-compat.md §7.4).

`python -m edm.dataset_tool --source=SRC --dest=DEST.zip [--max-images=N] [--resolution=WxH] [--transform=...]`
The destination is an uncompressed zip (or a folder) of uncompressed PNGs `{k:08d}[:5]/img{k:08d}.png` plus
`dataset.json` = {"labels": [[name, label], ...]} (null when any image lacks a label).
"""
import io
import json
import os
import pickle
import re
import shutil
import tarfile
import tempfile
import zipfile
from typing import Any, Callable, Iterator, List, Optional, Tuple

import click
import numpy as np
import PIL.Image

from dnnlib.util import UserError
from edm.cli import Command, check_output_dir, check_output_file
from training.dataset import IMAGE_EXTENSIONS, read_idx

Item = Tuple[np.ndarray, Any]  # (HWC or HW uint8 image, label or None)


def parse_tuple(s: str) -> Tuple[int, int]:
    """'512x512' or '512,384' -> (512, 512) / (512, 384)."""
    m = re.fullmatch(r'^(\d+)[x,](\d+)$', s or '')
    if not m:
        raise ValueError(f'cannot parse {s!r} as WxH')
    return int(m.group(1)), int(m.group(2))


def _is_image_ext(fname: str) -> bool:
    return os.path.splitext(fname)[1].lower() in IMAGE_EXTENSIONS


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        with PIL.Image.open(io.BytesIO(data)) as img:
            if img.mode not in ('L', 'RGB'):
                raise UserError(f'{where}: image mode {img.mode} is not supported (use RGB or L images)')
            return np.array(img)
    except (OSError, PIL.UnidentifiedImageError) as exc:
        raise UserError(f'{where}: cannot read image ({exc})') from None


def _labels_by_name(labels_json: Optional[bytes], fnames: List[str]) -> Optional[dict]:
    """Labels from a dataset.json (if given), else from top-level folder names when there are at least two."""
    if labels_json is not None:
        try:
            labels = json.loads(labels_json)['labels']
        except (ValueError, KeyError, TypeError):
            raise UserError('dataset.json in the source is not of the form {"labels": [[name, label], ...]}') from None
        return None if labels is None else {str(k).replace('\\', '/'): v for k, v in labels}
    tops = [f.split('/')[0] if '/' in f else None for f in fnames]
    folders = sorted(set(t for t in tops if t is not None))
    if len(folders) < 2 or any(t is None for t in tops):
        return None
    index = {name: i for i, name in enumerate(folders)}
    return {f: index[t] for f, t in zip(fnames, tops)}


def open_image_folder(source_dir: str, max_images: Optional[int]) -> Tuple[int, Iterator[Item]]:
    """Images under source_dir (recursively, sorted), labels from dataset.json or top-level folder names."""
    fnames = sorted(os.path.relpath(os.path.join(root, f), source_dir).replace('\\', '/')
                    for root, _dirs, files in os.walk(source_dir) for f in files if _is_image_ext(f))
    meta = os.path.join(source_dir, 'dataset.json')
    labels_json = open(meta, 'rb').read() if os.path.isfile(meta) else None
    labels = _labels_by_name(labels_json, fnames)
    fnames = fnames[:max_images] if max_images is not None else fnames

    def iterate() -> Iterator[Item]:
        for f in fnames:
            with open(os.path.join(source_dir, f), 'rb') as fp:
                yield _decode(fp.read(), f), (labels.get(f) if labels is not None else None)
    return len(fnames), iterate()


def open_image_zip(source: str, max_images: Optional[int]) -> Tuple[int, Iterator[Item]]:
    """Images in a zip, labels from its dataset.json or top-level folder names."""
    try:
        z = zipfile.ZipFile(source, 'r')
    except zipfile.BadZipFile:
        raise UserError(f'{source!r} is not a valid zip file') from None
    fnames = sorted(f for f in z.namelist() if _is_image_ext(f))
    labels_json = z.read('dataset.json') if 'dataset.json' in z.namelist() else None
    labels = _labels_by_name(labels_json, [f.replace('\\', '/') for f in fnames])
    fnames = fnames[:max_images] if max_images is not None else fnames

    def iterate() -> Iterator[Item]:
        with z:
            for f in fnames:
                key = f.replace('\\', '/')
                yield _decode(z.read(f), f), (labels.get(key) if labels is not None else None)
    return len(fnames), iterate()


def open_cifar10(tarball: str, max_images: Optional[int]) -> Tuple[int, Iterator[Item]]:
    """The 50,000 training images of cifar-10-python.tar.gz with their labels."""
    images, labels = [], []
    try:
        with tarfile.open(tarball, 'r:gz') as tar:
            for batch in range(1, 6):
                member = tar.getmember(f'cifar-10-batches-py/data_batch_{batch}')
                with tar.extractfile(member) as f:
                    data = pickle.load(f, encoding='latin1')
                images.append(data['data'].reshape(-1, 3, 32, 32))
                labels.append(data['labels'])
    except (OSError, KeyError, tarfile.TarError, pickle.UnpicklingError) as exc:
        raise UserError(f'{tarball!r} is not a valid cifar-10-python.tar.gz ({exc})') from None
    images = np.concatenate(images).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    labels = np.concatenate(labels)
    assert images.shape == (50000, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (50000,) and labels.dtype in [np.int32, np.int64]
    n = len(images) if max_images is None else min(max_images, len(images))
    return n, ((images[i], int(labels[i])) for i in range(n))


def open_mnist(images_gz: str, max_images: Optional[int], pad: bool = True) -> Tuple[int, Iterator[Item]]:
    """MNIST-format images with labels from the sibling labels file, padded from 28x28 to 32x32 unless pad=False."""
    labels_gz = images_gz.replace('images-idx3-ubyte', 'labels-idx1-ubyte')
    if not os.path.isfile(labels_gz):
        raise UserError(f'labels file {labels_gz!r} not found next to {images_gz!r}')
    images = read_idx(images_gz)
    labels = read_idx(labels_gz)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f'{images_gz!r} and {labels_gz!r} do not form an image/label pair')
    if pad:
        images = np.pad(images, [(0, 0), (2, 2), (2, 2)], 'constant', constant_values=0)  # upstream: pad to 32x32
    n = len(images) if max_images is None else min(max_images, len(images))
    return n, ((images[i], int(labels[i])) for i in range(n))


def make_transform(transform: Optional[str], output_width: Optional[int],
                   output_height: Optional[int]) -> Callable[[np.ndarray], np.ndarray]:
    """Resize (LANCZOS) / center-crop / center-crop-wide to the requested resolution, or identity."""
    def scale(width: int, height: int, img: np.ndarray) -> np.ndarray:
        w, h = img.shape[1], img.shape[0]
        if width == w and height == h:
            return img
        return np.array(PIL.Image.fromarray(img).resize((width, height), PIL.Image.Resampling.LANCZOS))

    def center_crop(width: int, height: int, img: np.ndarray) -> np.ndarray:
        crop = min(img.shape[0], img.shape[1])
        img = img[(img.shape[0] - crop) // 2:(img.shape[0] + crop) // 2,
                  (img.shape[1] - crop) // 2:(img.shape[1] + crop) // 2]
        return scale(width, height, img)

    def center_crop_wide(width: int, height: int, img: np.ndarray) -> np.ndarray:
        ch = int(np.round(width * img.shape[0] / height))
        if img.shape[1] < width or ch < height:
            raise UserError('center-crop-wide: the image is smaller than the requested resolution')
        img = img[(img.shape[0] - ch) // 2:(img.shape[0] + ch) // 2]
        img = scale(width, height, img)
        canvas = np.zeros([width, width] + list(img.shape[2:]), dtype=np.uint8)
        canvas[(width - height) // 2:(width + height) // 2, :] = img
        return canvas

    if transform is None:
        if output_width is None:
            return lambda img: img
        return lambda img: scale(output_width, output_height, img)
    if output_width is None or output_height is None:
        raise UserError(f'--transform={transform} requires --resolution=WxH')
    if transform == 'center-crop':
        return lambda img: center_crop(output_width, output_height, img)
    if transform == 'center-crop-wide':
        return lambda img: center_crop_wide(output_width, output_height, img)
    raise UserError(f'unknown transform {transform!r}')


def open_dataset(source: str, max_images: Optional[int], native_mnist: bool = False) -> Tuple[int, Iterator[Item]]:
    """Pick the reader for source: folder, zip, cifar-10-python.tar.gz, MNIST-format *-images-idx3-ubyte.gz.

    MNIST-format images are padded to 32x32 as upstream does, or kept at their native 28x28 when native_mnist.
    """
    if os.path.isdir(source):
        if source.rstrip('/').endswith('_lmdb'):
            raise UserError('LSUN lmdb sources are not supported (they need the cv2 and lmdb packages)')
        return open_image_folder(source, max_images)
    if os.path.isfile(source):
        base = os.path.basename(source)
        if base == 'cifar-10-python.tar.gz':
            return open_cifar10(source, max_images)
        if base.endswith('images-idx3-ubyte.gz'):
            return open_mnist(source, max_images, pad=not native_mnist)
        if os.path.splitext(source)[1].lower() == '.zip':
            return open_image_zip(source, max_images)
        raise UserError(f'unknown source type {source!r} (expected a folder, a .zip, cifar-10-python.tar.gz or '
                        f'*-images-idx3-ubyte.gz)')
    raise UserError(f'source {source!r} does not exist')


def _is_zip(dest: str) -> bool:
    return os.path.splitext(dest)[1].lower() == '.zip'


def check_dest(dest: str) -> None:
    """UserError unless dest can be written: a .zip file path, or a new or empty folder (checked before reading)."""
    if _is_zip(dest):
        check_output_file(dest, '--dest')
    else:
        check_output_dir(dest, '--dest')
        if os.path.isdir(dest) and os.listdir(dest):
            raise UserError(f'--dest folder {dest!r} must be empty')


class _Writer:
    """Writes files into a zip (written to a temporary file, renamed at close) or into a new or empty folder (whose
    contents are removed again on abort)."""

    def __init__(self, dest: str):
        self.dest = dest
        self.is_zip = _is_zip(dest)
        parent = os.path.dirname(os.path.abspath(dest))
        if self.is_zip:
            os.makedirs(parent, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(prefix='.dataset_tool-', suffix='.zip', dir=parent)
            os.close(fd)
            self.zf: Optional[zipfile.ZipFile] = zipfile.ZipFile(self.tmp, 'w', compression=zipfile.ZIP_STORED)
        else:
            self.made_folder = not os.path.isdir(dest)
            os.makedirs(dest, exist_ok=True)
            self.zf = None

    def write(self, fname: str, data: bytes) -> None:
        """Add one file; an OSError (a full disk) names the file or zip it was writing."""
        path = self.dest if self.zf is not None else os.path.join(self.dest, fname)
        try:
            if self.zf is not None:
                self.zf.writestr(fname, data)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, 'wb') as f:
                    f.write(data)
        except OSError as exc:
            exc.filename = exc.filename or path
            raise

    def commit(self) -> None:
        """Finish the zip (its central directory) and rename it onto dest."""
        if self.zf is not None:
            try:
                self.zf.close()
            except OSError as exc:
                exc.filename = exc.filename or self.dest
                raise
            os.replace(self.tmp, self.dest)

    def abort(self) -> None:
        """Remove everything written so far."""
        if self.zf is not None:
            try:
                self.zf.close()
            except (OSError, ValueError):   # the disk that refused a write may refuse the zip's directory too
                pass
            if os.path.exists(self.tmp):
                os.remove(self.tmp)
        elif self.made_folder:
            shutil.rmtree(self.dest, ignore_errors=True)
        else:   # the folder was empty: everything in it is ours
            for name in os.listdir(self.dest):
                path = os.path.join(self.dest, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)


def convert_dataset(source: str, dest: str, max_images: Optional[int] = None, transform: Optional[str] = None,
                    resolution: Optional[Tuple[int, int]] = None, progress: bool = True) -> int:
    """Convert source into dest; returns the number of images written."""
    PIL.Image.init()
    check_dest(dest)
    num_files, items = open_dataset(source, max_images, native_mnist=resolution == (28, 28))
    if num_files == 0:
        raise UserError(f'no images found in {source!r}')
    width, height = resolution if resolution is not None else (None, None)
    transform_image = make_transform(transform, width, height)

    writer = _Writer(dest)
    try:
        dataset_attrs = None
        labels: List[Any] = []
        if progress:
            import tqdm
            items = tqdm.tqdm(items, total=num_files)
        for idx, (img, label) in enumerate(items):
            archive_fname = f'{idx:08d}'[:5] + f'/img{idx:08d}.png'
            img = transform_image(img)
            if img.ndim == 3 and img.shape[2] == 1:
                img = img[:, :, 0]
            channels = img.shape[2] if img.ndim == 3 else 1
            cur = dict(width=img.shape[1], height=img.shape[0], channels=channels)
            if dataset_attrs is None:
                dataset_attrs = cur
                w, h = cur['width'], cur['height']
                if w != h:
                    raise UserError(f'image dimensions after scale and crop must be square; got {w}x{h}')
                if w % 4 != 0:  # upstream asks for a power of two; our UNets need only two halvings (28x28 works)
                    raise UserError(f'image width/height after scale and crop must be a multiple of 4; got {w}')
                if channels not in (1, 3):
                    raise UserError('input images must be stored as RGB or grayscale')
            elif cur != dataset_attrs:
                raise UserError(f'image {archive_fname}: {cur} differs from the first image ({dataset_attrs}); '
                                f'all images must have the same size and channels')
            buf = io.BytesIO()
            PIL.Image.fromarray(img, {1: 'L', 3: 'RGB'}[channels]).save(buf, format='png', compress_level=0,
                                                                       optimize=False)
            writer.write(archive_fname, buf.getvalue())
            labels.append([archive_fname, label] if label is not None else None)
        metadata = {'labels': labels if all(x is not None for x in labels) else None}
        writer.write('dataset.json', json.dumps(metadata).encode('utf-8'))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return len(labels)


def _parse_resolution(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    try:
        width, height = parse_tuple(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if width < 1 or height < 1:
        raise click.BadParameter(f'{value!r}: width and height must be positive, e.g. 32x32')
    return width, height


@click.command(cls=Command)
@click.option('--source', help='Input directory or archive name', metavar='PATH', type=str, required=True)
@click.option('--dest', help='Output directory or archive name', metavar='PATH', type=str, required=True)
@click.option('--max-images', help='Maximum number of images to output', metavar='INT', type=click.IntRange(min=1))
@click.option('--transform', help='Input crop/resize mode', metavar='MODE',
              type=click.Choice(['center-crop', 'center-crop-wide']))
@click.option('--resolution', help='Output resolution (e.g., 512x512)', metavar='WxH', type=str,
              callback=_parse_resolution)
def main(source: str, dest: str, max_images: Optional[int], transform: Optional[str],
         resolution: Optional[Tuple[int, int]]) -> None:
    """Convert an image dataset into a dataset archive usable with EDM.

    The input dataset format is guessed from the --source argument: a folder of images (labels from dataset.json
    or top-level folder names), an image zip, cifar-10-python.tar.gz, or MNIST-format train-images-idx3-ubyte.gz
    (with train-labels-idx1-ubyte.gz next to it; padded to 32x32, or native with --resolution=28x28). The output is
    a zip (--dest=*.zip) or a folder of uncompressed PNGs plus dataset.json.
    """
    convert_dataset(source, dest, max_images=max_images, transform=transform, resolution=resolution)


if __name__ == '__main__':
    main()
