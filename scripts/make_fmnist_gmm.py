"""Build assets/fmnist-gmm.npz: an isotropic Gaussian mixture whose means are Fashion-MNIST training images.

The mixture is an analytic model (`analytic:gmm:assets/fmnist-gmm.npz`) with an exact denoiser, so samplers and
schedules can be compared against the exact ODE solution on garment-shaped 32x32 images. Reproduce with
    apt-get install dataset-fashion-mnist && python scripts/make_fmnist_gmm.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnnlib.util import UserError  # noqa: E402  pylint: disable=wrong-import-position
from training.dataset import read_idx  # noqa: E402  pylint: disable=wrong-import-position

SOURCE = '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'
COMPONENTS, SEED, STD_RANGE = 64, 0, (0.05, 0.2)


def main() -> None:
    """Pick the images, pad to 32x32 (as dataset_tool pads MNIST), scale to [-1, 1], draw widths, write the npz."""
    rng = np.random.default_rng(SEED)
    images = read_idx(SOURCE)[rng.choice(60000, COMPONENTS, replace=False)]
    images = np.pad(images, [(0, 0), (2, 2), (2, 2)]).astype(np.float32) / 127.5 - 1
    std = np.exp(rng.uniform(np.log(STD_RANGE[0]), np.log(STD_RANGE[1]), COMPONENTS)).astype(np.float32)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'assets', 'fmnist-gmm.npz')
    with open(out, 'wb') as f:
        np.savez_compressed(f, mu=images[:, None], std=std, weight=np.full(COMPONENTS, 1 / COMPONENTS, np.float32))
    print(f'wrote {os.path.normpath(out)}: {COMPONENTS} components, std {std.min():.3f}..{std.max():.3f}')


if __name__ == '__main__':
    try:
        main()
    except UserError as exc:
        sys.exit(f'error: {exc}')
