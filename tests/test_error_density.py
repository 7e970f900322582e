"""art.error_density: the field f and the error density Q against closed forms and the paper's psi-time definition."""
import warnings

import pytest
import torch

from art.analytic import GaussianModel, load_analytic, write_random_gmm
from art.error_density import error_density, field, q_norm


def gaussian_f_and_Q(x: torch.Tensor, sigma: torch.Tensor, c: float):
    """docs/method.md eq. M3 for N(0, c^2): f = sigma x/(c^2+sigma^2), Q = c^2 x/(c^2+sigma^2)^2."""
    s = sigma.reshape(-1, 1, 1, 1)
    return s * x / (c * c + s * s), c * c * x / (c * c + s * s) ** 2


class NoForwardAD(torch.autograd.Function):
    """Identity with a backward but no forward-mode rule, as in custom kernels."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad


class Float32Net(torch.nn.Module):
    """A Gaussian denoiser computed in float32, optionally behind an op without forward-mode AD."""

    def __init__(self, std: float, block_forward_ad: bool = False):
        super().__init__()
        self.inner = GaussianModel(std, (2, 3, 3))
        self.block_forward_ad = block_forward_ad
        self.seen_labels = None

    def forward(self, x, sigma, class_labels=None, **kw):
        self.seen_labels = class_labels
        x = x.to(torch.float32)
        if self.block_forward_ad:
            x = NoForwardAD.apply(x)
        return self.inner(x, torch.as_tensor(sigma, dtype=torch.float32))


SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 3.0, 20.0, 80.0], dtype=torch.float64)


@pytest.mark.parametrize('spec,c', [('analytic:gauss1d', 1.0), ('analytic:gauss:std=0.5,shape=3x4x4', 0.5)])
@pytest.mark.parametrize('mode', ['jvp', 'fd'])
def test_Q_matches_the_gaussian_closed_form(spec, c, mode):
    net = load_analytic(spec)
    x = torch.randn(len(SIGMAS), *net.img_shape, dtype=torch.float64) * (1 + SIGMAS.reshape(-1, 1, 1, 1))
    f_exact, Q_exact = gaussian_f_and_Q(x, SIGMAS, c)
    f, Q = error_density(net, x, SIGMAS, mode=mode)
    torch.testing.assert_close(f, f_exact, rtol=1e-9, atol=0)      # (x - D)/sigma cancels as sigma -> 0
    rtol = 1e-9 if mode == 'jvp' else 1e-3
    assert float(((Q - Q_exact).abs() / Q_exact.abs()).max()) < rtol          # same sign as the paper's Q
    for i, sigma in enumerate(SIGMAS[:3].tolist()):                            # one 0-dim level for the batch
        _, Q_scalar = error_density(net, x, sigma, mode=mode)
        Q_i = gaussian_f_and_Q(x, torch.tensor(sigma, dtype=torch.float64), c)[1]
        assert float(((Q_scalar - Q_i).abs() / Q_i.abs()).max()) < rtol


def test_gauss1d_Q_is_the_paper_formula():
    """[paper v1 §5.1]: Q(x, psi) = x/(1+(T-psi)^2)^2 on the 1-D example."""
    net = load_analytic('analytic:gauss1d')
    x = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    sigma = torch.tensor([3.0, 1.0, 0.25], dtype=torch.float64)
    _, Q = error_density(net, x, sigma)
    torch.testing.assert_close(Q, x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2) ** 2, rtol=1e-13, atol=0)


def test_Q_equals_the_psi_time_definition(tmp_path):
    """Q from (f, +1) in sigma-form equals d/de F(x + eF, psi + e) with F(x, psi) = (D(x; T-psi) - x)/(T-psi)."""
    net = load_analytic(f'analytic:gmm:{write_random_gmm(tmp_path / "m.npz", 5, (1, 3, 3), seed=1)}')
    T = 80.0
    x = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    psi = torch.tensor([10.0, 60.0, 79.5, 79.9], dtype=torch.float64)

    def F(x_, psi_):
        s = (T - psi_).reshape(-1, 1, 1, 1)
        return (net(x_, s) - x_) / s

    F0 = F(x, psi)
    Q_paper = torch.func.jvp(F, (x, psi), (F0, torch.ones_like(psi)))[1]
    _, Q = error_density(net, x, T - psi)
    torch.testing.assert_close(Q, Q_paper, rtol=1e-10, atol=1e-14)


def test_q_norm_and_evaluation_counts():
    net = load_analytic('analytic:gauss:std=0.5,shape=2x2x2')
    x = torch.randn(5, 2, 2, 2, dtype=torch.float64)
    stats = {}
    f, Q = error_density(net, x, 1.5, stats=stats)
    field(net, x, 1.5, stats=stats)
    error_density(net, x, 1.5, mode='fd', stats=stats)
    assert stats == {'forward': 5 + 5 + 2 * 5, 'jvp': 5}
    torch.testing.assert_close(q_norm(Q), Q.reshape(5, -1).pow(2).sum(1).sqrt())
    assert q_norm(Q).shape == (5,) and f.dtype == Q.dtype == torch.float64


def test_float32_network_gives_float64_f_and_passes_labels():
    net = Float32Net(0.5)
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    labels = torch.eye(3)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    f_exact, Q_exact = gaussian_f_and_Q(x, sigma, 0.5)
    for mode, rtol in [('jvp', 1e-5), ('fd', 1e-2)]:
        f, Q = error_density(net, x, sigma, labels, mode=mode)
        assert f.dtype == torch.float64 and net.seen_labels is labels
        torch.testing.assert_close(f, f_exact, rtol=1e-5, atol=1e-6)
        assert float((Q - Q_exact).norm() / Q_exact.norm()) < rtol


def test_auto_falls_back_to_finite_differences():
    net = Float32Net(0.5, block_forward_ad=True)
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        error_density(net, x, 1.0, mode='jvp')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        stats = {}
        _, Q = error_density(net, x, 1.0, mode='auto', stats=stats)
    assert any('finite differences' in str(w.message) for w in caught)
    assert stats == {'forward': 4}
    Q_exact = gaussian_f_and_Q(x, torch.tensor(1.0, dtype=torch.float64), 0.5)[1]
    assert float((Q - Q_exact).norm() / Q_exact.norm()) < 1e-2


def test_explicit_delta_and_bad_mode():
    net = load_analytic('analytic:gauss1d')
    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    _, Q = error_density(net, x, 1.0, mode='fd', delta=1e-4)
    assert float(Q) == pytest.approx(0.25, rel=1e-3)
    with pytest.raises(ValueError, match='mode'):
        error_density(net, x, 1.0, mode='central')
