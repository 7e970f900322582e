"""AugmentPipe (docs/edm-compat.md §7.3): label layout and order, exact flips, identity cases, resampling accuracy."""
import math
import pickle

import numpy as np
import torch

from training.augment import SYM6, AugmentPipe, _rotate2d, _translate2d


def _smooth_images(n=4, c=3, h=16, w=16):
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing='ij')
    base = torch.sin(xx * 0.4) + torch.cos(yy * 0.3) + 0.02 * xx * yy
    return torch.stack([base * (k + 1) for k in range(n * c)]).view(n, c, h, w)


def test_sym6_filter_is_orthonormal_with_six_vanishing_moments():
    h = np.asarray(SYM6)
    assert len(h) == 12
    assert abs(h.sum() - math.sqrt(2)) < 1e-9
    assert abs((h ** 2).sum() - 1) < 1e-9
    for m in range(1, 6):
        assert abs((h[:-2 * m] * h[2 * m:]).sum()) < 1e-9
    g = h[::-1] * (-1) ** np.arange(12)  # high-pass
    for p in range(6):
        assert abs((g * np.arange(12) ** p).sum()) < 1e-6


def test_p0_and_all_zero_multipliers_leave_images_unchanged():
    images = torch.randn([5, 3, 8, 8])
    for pipe in [AugmentPipe(p=0, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1),
                 AugmentPipe(p=1)]:
        out, labels = pipe(images)
        assert torch.equal(out, images)
        assert labels.shape == (5, 9) and labels.dtype == torch.float32
        assert torch.count_nonzero(labels) == 0


def test_xflip_only_label0_and_exact_flip():
    torch.manual_seed(0)
    images = torch.randn([32, 3, 8, 8])
    out, labels = AugmentPipe(p=1, xflip=1)(images)
    assert set(labels[:, 0].tolist()) == {0.0, 1.0}
    assert torch.count_nonzero(labels[:, 1:]) == 0
    for img, res, flag in zip(images, out, labels[:, 0]):
        assert torch.equal(res, img.flip(2) if flag == 1 else img)


def test_yflip_only_label1():
    torch.manual_seed(0)
    images = torch.randn([32, 1, 4, 4])
    out, labels = AugmentPipe(p=1, yflip=1)(images)
    assert set(labels[:, 1].tolist()) == {0.0, 1.0}
    assert torch.count_nonzero(labels[:, [0, 2, 3, 4, 5, 6, 7, 8]]) == 0
    for img, res, flag in zip(images, out, labels[:, 1]):
        assert torch.equal(res, img.flip(1) if flag == 1 else img)


def test_translate_only_sets_last_two_labels():
    torch.manual_seed(0)
    out, labels = AugmentPipe(p=1, translate_frac=1)(_smooth_images())
    assert torch.all(labels[:, 7:] != 0)
    assert torch.count_nonzero(labels[:, :7]) == 0


def test_label_positions_of_each_transform():
    torch.manual_seed(0)
    images = _smooth_images(n=8)
    _, labels = AugmentPipe(p=1, scale=1)(images)
    assert torch.all(labels[:, 2] != 0) and torch.count_nonzero(labels[:, [0, 1, 3, 4, 5, 6, 7, 8]]) == 0
    _, labels = AugmentPipe(p=1, rotate_frac=1)(images)
    theta = torch.atan2(labels[:, 4], labels[:, 3] + 1)
    assert torch.allclose(labels[:, 3], torch.cos(theta) - 1, atol=1e-6)
    assert torch.count_nonzero(labels[:, [0, 1, 2, 5, 6, 7, 8]]) == 0
    _, labels = AugmentPipe(p=1, aniso=1, aniso_rotate_prob=1)(images)
    assert torch.all(labels[:, 5:7] != 0) and torch.count_nonzero(labels[:, [0, 1, 2, 3, 4, 7, 8]]) == 0


def test_train_py_configuration_probabilities():
    torch.manual_seed(0)
    pipe = AugmentPipe(p=0.25, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    _, labels = pipe(torch.zeros([2000, 1, 8, 8]))
    frac = (labels != 0).float().mean(0)
    assert abs(float(frac[0]) - 0.5) < 0.05  # xflip multiplier 1e8: always drawn, flips half
    for k in [1]:
        assert abs(float(frac[k]) - 0.125) < 0.03  # yflip fires with p, flips half of those
    for k in [2, 7, 8]:
        assert abs(float(frac[k]) - 0.25) < 0.04


def test_resampling_identity_and_integer_shift_are_exact():
    pipe = AugmentPipe(p=1, scale=1)
    images = _smooth_images(n=2)
    out = pipe._resample(images, torch.eye(3).expand(2, 3, 3))
    assert torch.allclose(out, images, atol=1e-4)
    # G_inv translating by (-1, -2) px moves content by (+1, +2).
    out = pipe._resample(images, _translate2d(torch.tensor([-1., -1.]), torch.tensor([-2., -2.]), 'cpu'))
    assert torch.allclose(out[..., 5:-3, 4:-3], images[..., 3:-5, 3:-4], atol=1e-3)
    # A 90-degree rotation matches rot90 in the interior up to interpolation error.
    out = pipe._resample(images[:1], _rotate2d(torch.tensor([-math.pi / 2]), 'cpu'))
    ref = torch.rot90(images[:1], -1, dims=(2, 3))
    assert (out - ref)[..., 3:-3, 3:-3].abs().max() < 0.05 * ref.abs().max()


def test_colour_transforms_and_pickle():
    torch.manual_seed(0)
    pipe = AugmentPipe(p=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    for c in [1, 3]:
        out, labels = pipe(torch.rand([4, c, 8, 8]))
        assert out.shape == (4, c, 8, 8) and torch.isfinite(out).all()
        assert torch.count_nonzero(labels) == 0
    clone = pickle.loads(pickle.dumps(AugmentPipe(p=0.12, xflip=1e8)))
    assert clone.p == 0.12 and clone.xflip == 1e8
