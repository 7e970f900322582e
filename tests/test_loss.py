"""Losses (docs/edm-compat.md §7.2): sigma distributions, lambda(sigma) weights, shapes, augment labels, pickling."""
import math
import pickle

import pytest
import torch

from training.loss import EDMLoss, VELoss, VPLoss


class ZeroNet:
    """Fake denoiser D = 0 that records sigma and kwargs, so loss = lambda(sigma) * y^2."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, labels=None, **kwargs):
        self.calls.append(dict(x=x, sigma=sigma, labels=labels, **kwargs))
        return torch.zeros_like(x)


def _run(loss_fn, B=64):
    net = ZeroNet()
    images = torch.ones([B, 2, 3, 3])
    loss = loss_fn(net, images, labels=torch.zeros([B, 5]))
    sigma = net.calls[0]['sigma']
    assert loss.shape == images.shape  # per-element, not reduced
    assert sigma.shape == (B, 1, 1, 1)  # one sigma per sample
    # With D = 0 and y = 1 every element equals lambda(sigma) of its sample.
    assert torch.allclose(loss, loss[:, :1, :1, :1].expand_as(loss))
    return sigma.flatten().double(), loss[:, 0, 0, 0].double()


def test_edm_loss_weight_and_sigma_distribution():
    torch.manual_seed(0)
    expected_sigma = (torch.randn([64, 1, 1, 1]) * 1.2 - 1.2).exp().flatten().double()
    torch.manual_seed(0)
    sigma, lam = _run(EDMLoss())
    assert torch.allclose(sigma, expected_sigma, rtol=1e-6)
    sd = 0.5
    assert torch.allclose(lam, (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2, rtol=1e-5)
    # Numeric spot check: lambda(1) = (1 + 0.25) / 0.25 = 5 for sigma_data = 0.5.
    s = torch.tensor(1.0)
    assert float((s ** 2 + sd ** 2) / (s * sd) ** 2) == pytest.approx(5.0)


def test_edm_loss_lognormal_statistics():
    torch.manual_seed(1)
    net = ZeroNet()
    EDMLoss(P_mean=0.3, P_std=0.7)(net, torch.ones([4000, 1, 1, 1]))
    log_sigma = net.calls[0]['sigma'].log().flatten()
    assert float(log_sigma.mean()) == pytest.approx(0.3, abs=0.05)
    assert float(log_sigma.std()) == pytest.approx(0.7, abs=0.05)


def test_vp_loss_weight_and_range():
    torch.manual_seed(0)
    sigma, lam = _run(VPLoss(), B=256)
    assert torch.allclose(lam, 1 / sigma ** 2, rtol=1e-5)

    def sigma_vp(t):
        return math.sqrt(math.exp(0.5 * 19.9 * t ** 2 + 0.1 * t) - 1)
    assert float(sigma.min()) >= sigma_vp(1e-5) * (1 - 1e-4)
    assert float(sigma.max()) <= sigma_vp(1.0) * (1 + 1e-4)
    assert float(VPLoss().sigma(torch.tensor(0.5))) == pytest.approx(sigma_vp(0.5), rel=1e-6)


def test_ve_loss_weight_and_log_uniform():
    torch.manual_seed(0)
    sigma, lam = _run(VELoss(), B=2000)
    assert torch.allclose(lam, 1 / sigma ** 2, rtol=1e-5)
    assert float(sigma.min()) >= 0.02 * (1 - 1e-5) and float(sigma.max()) <= 100 * (1 + 1e-5)
    u = (sigma.log() - math.log(0.02)) / math.log(100 / 0.02)  # should be U(0, 1)
    assert float(u.mean()) == pytest.approx(0.5, abs=0.03)


def test_noise_is_sigma_scaled_and_labels_passed():
    torch.manual_seed(0)
    net = ZeroNet()
    images = torch.zeros([3, 1, 32, 32])
    labels = torch.eye(3)
    VELoss(sigma_min=5, sigma_max=5)(net, images, labels=labels)
    call = net.calls[0]
    assert call['labels'] is labels
    assert call['augment_labels'] is None
    assert float(call['x'].std()) == pytest.approx(5, rel=0.05)


def test_augment_pipe_is_applied_and_labels_forwarded():
    aug_labels = torch.full([2, 9], 0.5)

    def pipe(images):
        return images + 1, aug_labels

    net = ZeroNet()
    loss = EDMLoss()(net, torch.zeros([2, 1, 2, 2]), augment_pipe=pipe)
    assert net.calls[0]['augment_labels'] is aug_labels
    sigma = net.calls[0]['sigma']
    lam = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    assert torch.allclose(loss, lam.expand_as(loss))  # y = augmented image = 1


def test_losses_pickle_round_trip():
    for obj in [EDMLoss(P_mean=-1.0), VPLoss(beta_d=10.0), VELoss(sigma_max=50)]:
        clone = pickle.loads(pickle.dumps(obj))
        assert type(clone).__name__ == type(obj).__name__
        assert vars(clone) == vars(obj)
