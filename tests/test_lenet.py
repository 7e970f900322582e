"""edm/lenet.py: the shipped LeNet weights load safely and classify real Fashion-MNIST test images, its features
follow the documented input convention, LeNet-FID separates the test split from degraded images, and bad weight
files are one-line user errors. The CLI (`fid.py --detector=lenet`) is tested in test_fid.py.

Needs the Fashion-MNIST files of the Debian package dataset-fashion-mnist (skipped without them).
"""
import os
import pickle

import numpy as np
import pytest
import torch

from dnnlib.util import UserError
from edm import fid, lenet
from training.dataset import read_idx

FMNIST = '/usr/share/datasets/fashion-mnist'


def _split(name: str):
    images_gz = os.path.join(FMNIST, f'{name}-images-idx3-ubyte.gz')
    if not os.path.isfile(images_gz):
        pytest.skip(f'Fashion-MNIST not found at {FMNIST} (apt-get install dataset-fashion-mnist)')
    images = torch.from_numpy(read_idx(images_gz).copy())[:, None]
    labels = torch.from_numpy(read_idx(os.path.join(FMNIST, f'{name}-labels-idx1-ubyte.gz')).astype(np.int64))
    return images, labels


@pytest.fixture(scope='module')
def test_split():
    """uint8 [10000, 1, 28, 28] test images and their labels."""
    return _split('t10k')


@pytest.fixture(scope='module')
def detector():
    return lenet.load_detector()


def test_shipped_files_are_small_and_the_network_has_tens_of_thousands_of_parameters():
    assert os.path.getsize(lenet.WEIGHTS) < 500_000
    assert os.path.getsize(lenet.REFERENCE) < 100_000
    assert 20_000 < sum(p.numel() for p in lenet.LeNet().parameters()) < 100_000
    ref = fid.load_reference(lenet.REFERENCE, lenet.FEATURE_DIM)
    assert np.allclose(ref['sigma'], ref['sigma'].T) and np.linalg.eigvalsh(ref['sigma']).min() > -1e-9


def test_shipped_weights_classify_real_test_images(test_split, detector):
    images, labels = test_split
    pick = torch.from_numpy(np.random.RandomState(0).choice(len(images), 200, replace=False))
    with torch.no_grad():
        pred = detector(images[pick], return_features=False).argmax(dim=1)
    accuracy = float((pred == labels[pick]).double().mean())
    print(f'accuracy on 200 test images: {accuracy:.3f}')
    assert accuracy >= 0.85


def test_features_follow_the_input_convention(test_split, detector):
    images = test_split[0][:16]
    with torch.no_grad():
        features = detector(images)
        assert features.shape == (16, lenet.FEATURE_DIM) and features.dtype == torch.float32
        assert torch.equal(detector(images), features)                                  # deterministic
        assert torch.equal(detector(images.repeat(1, 3, 1, 1)), features)  # 3 equal channels average to exactly one
        assert torch.equal(detector(torch.nn.functional.pad(images, [2, 2, 2, 2])), features)  # 32x32: center crop
        # A feature does not depend on the batch it is in (within float32 rounding of other conv code paths).
        single = torch.cat([detector(images[i:i + 1]) for i in range(16)])
        torch.testing.assert_close(single, features, rtol=1e-5, atol=1e-5)
        assert features.std(dim=0).max() > 0.1                                           # not a constant map
    for bad in (torch.zeros(2, 1, 30, 30, dtype=torch.uint8), torch.zeros(2, 2, 28, 28, dtype=torch.uint8)):
        with pytest.raises(UserError, match='lenet detector takes'):
            detector(bad)


def _blur(images: torch.Tensor) -> torch.Tensor:
    """A 5x5 box blur (zero padding), rounded back to uint8."""
    x = torch.nn.functional.avg_pool2d(images.to(torch.float32), 5, stride=1, padding=2, count_include_pad=True)
    return x.round().to(torch.uint8)


def test_lenet_fid_is_small_for_the_test_split_and_large_for_degraded_images(test_split, detector):
    images = test_split[0]
    ref = fid.load_reference(lenet.REFERENCE, lenet.FEATURE_DIM)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, images[:2000].shape, generator=gen, dtype=torch.uint8)
    values = {}
    with torch.no_grad():
        for name, batch in (('test', images), ('blurred', _blur(images[:2000])), ('noise', noise)):
            mu, sigma = fid.images_stats(detector, batch.split(1000))
            values[name] = fid.frechet_distance(mu, sigma, ref['mu'], ref['sigma'])
    print('LeNet-FID vs the shipped train statistics:', {k: round(v, 4) for k, v in values.items()})
    assert 0 < values['test'] < 1
    assert values['blurred'] > 20 * values['test']
    assert values['noise'] > 100 * values['test']


_EXECUTED = []


def _mark() -> None:
    _EXECUTED.append(True)


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return _mark, ()


def test_bad_weight_files_are_one_line_user_errors(tmp_path):
    good = lenet.LeNet().state_dict()
    corrupt = tmp_path / 'corrupt.pt'
    corrupt.write_bytes(open(lenet.WEIGHTS, 'rb').read()[:1000])  # truncated
    wrong = tmp_path / 'wrong.pt'
    torch.save({k: v[..., :1] for k, v in good.items()}, wrong)  # right keys, wrong shapes
    unsafe = tmp_path / 'unsafe.pt'
    torch.save(dict(good, extra=_RunsCodeWhenUnpickled()), unsafe, pickle_module=pickle)
    cases = [(tmp_path / 'missing.pt', 'not found'), (corrupt, 'cannot read'), (wrong, 'does not hold LeNet weights'),
             (unsafe, 'weights_only')]
    for path, words in cases:
        with pytest.raises(UserError, match=words) as info:
            lenet.load_lenet(str(path))
        assert '\n' not in str(info.value)
    assert not _EXECUTED  # weights_only refused the pickled callable instead of running it
    with pytest.raises(UserError, match='not found'):
        fid.load_detector(f'lenet:{tmp_path / "missing.pt"}')
