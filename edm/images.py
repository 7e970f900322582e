"""Image output as upstream generate.py writes it: `000123.png`, optional 1000-seed subfolders."""
import os
from typing import Iterable, List, Sequence

import numpy as np
import PIL.Image
import torch

import dnnlib


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Sampler output (data scale about [-1, 1], NCHW) to uint8 NHWC: clip(x*127.5 + 128) then truncate."""
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_path(outdir: str, seed: int, subdirs: bool = False) -> str:
    """Path of the image for `seed`: `outdir/000042.png`, or `outdir/001000/001234.png` with subdirs."""
    folder = os.path.join(outdir, f'{seed - seed % 1000:06d}') if subdirs else outdir
    return os.path.join(folder, f'{seed:06d}.png')


def _pil_image(array: np.ndarray) -> PIL.Image.Image:
    """One HWC uint8 array as a PIL image: 'L' for one channel, 'RGB' otherwise."""
    if array.shape[2] == 1:
        return PIL.Image.fromarray(array[:, :, 0], 'L')
    return PIL.Image.fromarray(array, 'RGB')


def save_png(image: PIL.Image.Image, path: str) -> None:
    """Write a PNG atomically: a temporary file in the same folder, then rename."""
    dnnlib.util.atomic_write(path, lambda f: image.save(f, format='PNG'))


def save_images(images: torch.Tensor, seeds: Iterable[int], outdir: str, subdirs: bool = False) -> List[str]:
    """Write one PNG per seed; returns the paths."""
    paths = []
    for seed, array in zip(seeds, to_uint8(images)):
        path = image_path(outdir, int(seed), subdirs)
        save_png(_pil_image(array), path)
        paths.append(path)
    return paths


def image_grid(images: torch.Tensor, columns: int = 0) -> PIL.Image.Image:
    """All images of a batch in one picture, `columns` wide (default: a near-square grid)."""
    return _grid(to_uint8(images), columns)


def grid_from_files(paths: Sequence[str], columns: int = 0) -> PIL.Image.Image:
    """The images in `paths` (same size and mode) in one picture."""
    arrays = [np.asarray(PIL.Image.open(path)) for path in paths]
    return _grid(np.stack([a if a.ndim == 3 else a[:, :, None] for a in arrays]), columns)


def _grid(arrays: np.ndarray, columns: int) -> PIL.Image.Image:
    """NHWC uint8 arrays tiled row by row."""
    n, h, w, c = arrays.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    canvas = np.zeros([rows * h, columns * w, c], dtype=np.uint8)
    for i, array in enumerate(arrays):
        r, k = divmod(i, columns)
        canvas[r * h:(r + 1) * h, k * w:(k + 1) * w] = array
    return _pil_image(canvas)
