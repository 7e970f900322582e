"""Build assets/fmnist-gmm.npz: an isotropic Gaussian mixture whose means are Fashion-MNIST training images.

The mixture is an analytic model (`analytic:gmm:assets/fmnist-gmm.npz`) with an exact denoiser, so samplers and
schedules can be compared against the exact ODE solution on garment-shaped 32x32 images. Reproduce with
    apt-get install dataset-fashion-mnist && python scripts/make_fmnist_gmm.py
"""
import gzip
import os
import sys

import numpy as np

SOURCE = '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'
COMPONENTS, SEED, STD_RANGE = 64, 0, (0.05, 0.2)


def read_idx_images(path: str) -> np.ndarray:
    """uint8 [N, 28, 28] from an IDX3 gz file (big-endian header: magic 2051, N, rows, cols)."""
    with gzip.open(path, 'rb') as f:
        data = f.read()
    magic, n, rows, cols = np.frombuffer(data[:16], dtype='>u4')
    if magic != 2051:
        sys.exit(f'error: {path} is not an IDX3 image file')
    return np.frombuffer(data[16:], dtype=np.uint8).reshape(n, rows, cols)


def main() -> None:
    """Pick the images, pad to 32x32 (as dataset_tool pads MNIST), scale to [-1, 1], draw widths, write the npz."""
    rng = np.random.default_rng(SEED)
    images = read_idx_images(SOURCE)[rng.choice(60000, COMPONENTS, replace=False)]
    images = np.pad(images, [(0, 0), (2, 2), (2, 2)]).astype(np.float32) / 127.5 - 1
    std = np.exp(rng.uniform(np.log(STD_RANGE[0]), np.log(STD_RANGE[1]), COMPONENTS)).astype(np.float32)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'assets', 'fmnist-gmm.npz')
    with open(out, 'wb') as f:
        np.savez_compressed(f, mu=images[:, None], std=std, weight=np.full(COMPONENTS, 1 / COMPONENTS, np.float32))
    print(f'wrote {os.path.normpath(out)}: {COMPONENTS} components, std {std.min():.3f}..{std.max():.3f}')


if __name__ == '__main__':
    main()
