"""A small LeNet-style Fashion-MNIST classifier: its penultimate layer is the feature space of fid.py --detector=lenet.

Inception features describe natural RGB photographs; for 28x28 grayscale garments a classifier trained on the data
itself is the better judge (LeNet-FID). The network is trained by `scripts/train_lenet.py` on the 60k train split;
its weights (`assets/lenet-fmnist.pt`, a plain state_dict) and the statistics of the train split in its feature
space (`assets/fid-refs/fmnist-train-lenet.npz`) are shipped, so the metric works offline.

Input convention (that of the FID code): uint8 NCHW batches with 1 or 3 channels, 28x28 or 32x32. Three channels are
averaged to one (grayscale repeated to RGB gives back the original exactly); 32x32 images are center-cropped to 28x28,
which undoes the 2-pixel zero padding that `edm.dataset_tool` applies to MNIST-format data by default.
"""

import os
import pickle
from typing import Optional

import torch

from dnnlib.util import UserError

FEATURE_DIM = 64
RESOLUTION = 28
NUM_CLASSES = 10
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets')
WEIGHTS = os.path.join(ASSETS, 'lenet-fmnist.pt')
REFERENCE = os.path.join(ASSETS, 'fid-refs', 'fmnist-train-lenet.npz')  # mu, sigma of the 60k train images


class LeNet(torch.nn.Module):
    """Two 5x5 conv + max-pool stages (16 and 32 channels), a 64-unit hidden layer (the features), 10 logits."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, kernel_size=5, padding=2)   # 28x28 -> pool -> 14x14
        self.conv2 = torch.nn.Conv2d(16, 32, kernel_size=5)             # 14x14 -> 10x10 -> pool -> 5x5
        self.fc1 = torch.nn.Linear(32 * 5 * 5, FEATURE_DIM)
        self.fc2 = torch.nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [B, 64] (after ReLU) of float inputs [B, 1, 28, 28] in [-1, 1]."""
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return torch.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, 10] of float inputs [B, 1, 28, 28] in [-1, 1]."""
        return self.fc2(self.features(x))


def to_input(images: torch.Tensor) -> torch.Tensor:
    """Float [B, 1, 28, 28] in [-1, 1] of uint8-valued NCHW images (1 or 3 channels; 28x28, or 32x32 center-cropped)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserError(f'the lenet detector takes NCHW images with 1 or 3 channels, got {list(images.shape)}')
    height, width = images.shape[2:]
    if (height, width) == (RESOLUTION + 4, RESOLUTION + 4):
        images = images[:, :, 2:-2, 2:-2]
    elif (height, width) != (RESOLUTION, RESOLUTION):
        raise UserError(f'the lenet detector takes 28x28 images (32x32 are center-cropped), got {width}x{height}')
    x = images.to(torch.float32).mean(dim=1, keepdim=True)
    return x / 127.5 - 1


class LeNetDetector(torch.nn.Module):
    """The FID detector interface around a trained LeNet: detector(uint8 images, return_features=True) -> [B, 64]."""

    feature_dim = FEATURE_DIM

    def __init__(self, net: LeNet):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        """Features [B, 64] (or, with return_features=False, class logits [B, 10]) of uint8-valued NCHW images."""
        x = to_input(images.to(next(self.net.parameters()).device))
        return self.net.features(x) if return_features else self.net(x)


def load_lenet(path: Optional[str] = None) -> LeNet:
    """The LeNet (eval mode) of a state_dict file (default: the shipped weights), read with weights_only=True."""
    path = WEIGHTS if path is None else path
    if not os.path.isfile(path):
        raise UserError(f'LeNet weights not found: {path} (make them with `python scripts/train_lenet.py`)')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f'cannot read LeNet weights {path}: torch.load(weights_only=True) refuses it (it holds more '
                        f'than tensors and plain containers, or is no torch file)') from None
    except Exception as exc:  # pylint: disable=broad-except  # Corrupt or truncated.
        message = str(exc).split('. ')[0].strip()
        raise UserError(f'cannot read LeNet weights {path} (corrupt or truncated?): {type(exc).__name__}: '
                        f'{message}') from None
    net = LeNet()
    try:
        net.load_state_dict(state, strict=True)
    except Exception as exc:  # pylint: disable=broad-except  # Not a dict, wrong keys or shapes.
        raise UserError(f'{path} does not hold LeNet weights: {" ".join(str(exc).split())}') from None
    return net.eval().requires_grad_(False)


def load_detector(path: Optional[str] = None, device: torch.device = torch.device('cpu')) -> LeNetDetector:
    """The FID detector of `fid.py --detector=lenet` (shipped weights) or `lenet:PATH`, on `device`."""
    return LeNetDetector(load_lenet(path)).eval().to(device)
