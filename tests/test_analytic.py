"""art.analytic (exact denoisers, specs, exact Gaussian laws, reference PF-ODE solution) and art.networks."""
import json
import math
import pickle

import numpy as np
import pytest
import torch

from art.analytic import (AnalyticSpecError, GaussianMixtureModel, GaussianModel, gauss_ode_solution,
                          gauss_sampler_gain, gauss_w2, gmm_shape, load_analytic, load_gmm, reference_solution,
                          write_random_gmm)
from art.networks import NetworkSpecError, load_network_spec
from dnnlib.util import UserError
from edm.sampler import sample
from training import networks


@pytest.fixture(scope='module')
def gmm_file(tmp_path_factory):
    """A 4-component mixture in 1x4x4 with widths between 0.1 and 0.4."""
    return write_random_gmm(tmp_path_factory.mktemp('gmm') / 'mix.npz', k=4, shape=(1, 4, 4), seed=3,
                            std_range=(0.1, 0.4))


def test_gauss1d_is_the_paper_example():
    net = load_analytic('analytic:gauss1d')
    assert isinstance(net, GaussianModel) and net.std == 1.0
    assert (net.sigma_max, net.sigma_min, net.label_dim) == (3.0, 0.0, 0)
    assert (net.img_channels, net.img_resolution) == (1, 1)
    sigma = torch.tensor([0.7, 2.0], dtype=torch.float64)
    assert isinstance(net.round_sigma(0.7), torch.Tensor) and torch.equal(net.round_sigma(sigma), sigma)


def test_gauss_spec_and_denoiser():
    net = load_analytic('analytic:gauss:std=0.5,shape=3x8x8')
    assert (net.std, net.img_shape, net.sigma_max, net.sigma_min) == (0.5, (3, 8, 8), 80.0, 0.0)
    assert load_analytic('analytic:gauss:shape=1x2x2,std=2,sigma_max=10').sigma_max == 10.0
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 5.0, 80.0], dtype=torch.float64)
    D = net(x, sigma.reshape(-1, 1, 1, 1))
    expected = 0.25 * x / (0.25 + sigma.reshape(-1, 1, 1, 1) ** 2)
    torch.testing.assert_close(D, expected, rtol=1e-15, atol=0)
    torch.testing.assert_close(net(x, sigma), D, rtol=0, atol=0)                     # [B] same as [B,1,1,1]
    torch.testing.assert_close(net(x, torch.tensor(2.0)), net(x, 2.0), rtol=0, atol=0)  # 0-dim same as float
    assert net(x.float(), 2.0).dtype == torch.float32


@pytest.mark.parametrize('spec', [
    'gauss1d', 'analytic:', 'analytic:gauss1d:std=2', 'analytic:gauss', 'analytic:gauss:std=1',
    'analytic:gauss:std=-1,shape=1x2x2', 'analytic:gauss:std=nan,shape=1x2x2', 'analytic:gauss:std=1,shape=1x2x3',
    'analytic:gauss:std=1,shape=2x2', 'analytic:gauss:std=1,shape=1x2x2,color=red',
    'analytic:gauss:std=1,std=2,shape=1x1x1',
    'analytic:gmm', 'analytic:gmm:/nonexistent/mixture.npz', 'analytic:vp'])
def test_malformed_specs_raise_one_line(spec):
    with pytest.raises(ValueError) as info:
        load_analytic(spec)
    assert isinstance(info.value, (AnalyticSpecError, UserError)) and '\n' not in str(info.value)


def test_gmm_shape_rule():
    assert gmm_shape((5, 3, 4, 4)) == (3, 4, 4)
    assert gmm_shape((5, 64)) == (1, 8, 8)
    assert gmm_shape((5, 3)) == (3, 1, 1)


def test_gmm_file_round_trip(gmm_file):
    net = load_analytic(f'analytic:gmm:{gmm_file}')
    with np.load(gmm_file) as data:
        assert data['mu'].shape == (4, 1, 4, 4)
        assert len(np.unique(data['std'])) == 4 and ((data['std'] >= 0.1) & (data['std'] <= 0.4)).all()
        torch.testing.assert_close(net.log_weight.exp(), torch.from_numpy(data['weight'] / data['weight'].sum()))
    assert net.img_shape == (1, 4, 4) and (net.sigma_max, net.sigma_min) == (80.0, 0.0)


def test_gmm_bad_files(tmp_path):
    np.savez(tmp_path / 'missing.npz', mu=np.zeros((2, 4)), std=np.ones(2))
    np.savez(tmp_path / 'negative.npz', mu=np.zeros((2, 4)), std=np.array([1.0, -1.0]), weight=np.ones(2))
    np.savez(tmp_path / 'shape.npz', mu=np.zeros((2, 4)), std=np.ones(3), weight=np.ones(2))
    for name, words in [('missing.npz', 'weight'), ('negative.npz', 'std'), ('shape.npz', 'shape')]:
        with pytest.raises(AnalyticSpecError, match=words) as info:
            load_gmm(tmp_path / name)
        assert name in str(info.value)


def test_gmm_truncated_or_corrupt_files(tmp_path):
    np.savez(tmp_path / 'good.npz', mu=np.zeros((2, 4)), std=np.ones(2), weight=np.ones(2))
    data = (tmp_path / 'good.npz').read_bytes()
    (tmp_path / 'truncated.npz').write_bytes(data[:len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 4] ^= 0xFF                                       # inside mu.npy: the CRC check fails
    (tmp_path / 'corrupt.npz').write_bytes(bytes(flipped))
    (tmp_path / 'empty.npz').write_bytes(b'')
    for name in ('truncated.npz', 'corrupt.npz', 'empty.npz'):
        with pytest.raises(AnalyticSpecError, match='truncated or corrupt') as info:
            load_gmm(tmp_path / name)
        assert name in str(info.value) and '\n' not in str(info.value)


def test_single_component_gmm_equals_gaussian():
    shift = np.full((1, 1, 2, 2), 0.3)
    gmm = GaussianMixtureModel(shift, np.array([0.7]), np.array([2.0]), (1, 2, 2))
    gauss = GaussianModel(0.7, (1, 2, 2))
    x = torch.randn(5, 1, 2, 2, dtype=torch.float64) * 3
    sigma = torch.tensor([0.0, 0.01, 0.7, 3.0, 80.0], dtype=torch.float64)
    mu = torch.from_numpy(shift)
    torch.testing.assert_close(gmm(x, sigma), mu + gauss(x - mu, sigma), rtol=1e-13, atol=1e-13)


def test_gmm_denoiser_satisfies_tweedie(gmm_file):
    """D(x; sigma) = x + sigma^2 grad log p_sigma(x), with log p_sigma written independently and differentiated."""
    net = load_gmm(gmm_file)
    with np.load(gmm_file) as data:
        mu = torch.from_numpy(data['mu'].reshape(4, -1))
        var = torch.from_numpy(data['std'] ** 2)
        w = torch.from_numpy(data['weight'] / data['weight'].sum())
    for sigma in [0.02, 0.3, 2.0, 40.0]:
        x = (mu[torch.arange(6) % 4] + torch.randn(6, 16, dtype=torch.float64) * math.hypot(0.3, sigma))
        x.requires_grad_(True)
        total = var + sigma ** 2
        log_components = torch.stack([
            torch.distributions.MultivariateNormal(mu[j], total[j] * torch.eye(16, dtype=torch.float64)).log_prob(x)
            for j in range(4)], dim=1)
        log_p = torch.logsumexp(log_components + w.log(), dim=1)
        score, = torch.autograd.grad(log_p.sum(), x)
        D = net(x.detach().reshape(6, 1, 4, 4), sigma).reshape(6, 16)
        torch.testing.assert_close(D, x.detach() + sigma ** 2 * score, rtol=1e-11, atol=1e-11 * max(1.0, sigma))


@pytest.mark.parametrize('solver', ['euler', 'heun'])
def test_gauss_sampler_gain_is_the_sampler(solver):
    """The sampler is linear on Gaussian data: x_K = gain * x_0 exactly, x_0 = latents * sigma_0."""
    net = GaussianModel(0.5, (2, 2, 2))
    sigmas = np.array([80.0, 9.0, 1.3, 0.4, 0.05, 0.0])
    latents = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    out = sample(net, latents, sigmas, solver=solver)
    torch.testing.assert_close(out, latents * 80.0 * gauss_sampler_gain(sigmas, 0.5, solver), rtol=1e-12, atol=1e-14)


def test_gauss_w2_matches_the_appendix_formula():
    """docs/method.md §9: W2 = |sqrt(1+T^2)|prod(1 - h_i s_i/(1+s_i^2))| - 1| for the 1-D example."""
    T = 3.0
    for K in [2, 7, 30]:
        taus = np.sort(np.random.default_rng(K).uniform(0, T, K - 1))
        taus = np.concatenate([[0.0], taus, [T]])
        prod = np.prod([1 - (b - a) * (T - a) / (1 + (T - a) ** 2) for a, b in zip(taus[:-1], taus[1:])])
        assert gauss_w2(T - taus, 1.0) == pytest.approx(abs(math.sqrt(1 + T * T) * abs(prod) - 1), rel=1e-12)
    sigmas = T - taus
    assert gauss_w2(sigmas, 1.0, dim=4) == pytest.approx(2 * gauss_w2(sigmas, 1.0), rel=1e-14)
    assert gauss_w2(sigmas, 1.0, init='prior') == pytest.approx(abs(T * abs(gauss_sampler_gain(sigmas, 1.0)) - 1))


def test_reference_solution_is_exact_on_gaussians():
    net = GaussianModel(0.5, (1, 2, 2))
    x_T = torch.randn(4, 1, 2, 2, dtype=torch.float64) * 80
    for sigma_end in [0.0, 0.3, 7.0]:
        exact = gauss_ode_solution(x_T, sigma_end, 0.5, 80.0)
        ref = reference_solution(net, x_T, sigma_end=sigma_end)
        assert float((ref - exact).abs().max() / exact.abs().max()) < 1e-8


def test_heun_converges_to_the_mixture_reference(gmm_file):
    """Fine Heun solves approach the reference at second order (errors fall 4x per halving of the step)."""
    net = load_gmm(gmm_file)
    latents = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = reference_solution(net, latents * 80.0)
    errors = []
    for K in [100, 200, 400]:
        rho_grid = (80 ** (1 / 7) * (1 - np.arange(K + 1) / K)) ** 7          # K+1 levels reaching 0
        errors.append(float((sample(net, latents, rho_grid, solver='heun') - ref).abs().max()))
    assert 3.5 < errors[0] / errors[1] < 4.5 and 3.5 < errors[1] / errors[2] < 4.5, errors
    assert errors[2] < 1e-3


# art.networks.load_network_spec (kept here: tests/test_networks.py belongs to training/networks.py).

def test_load_network_routes_specs(tmp_path, fixtures_dir):
    net = load_network_spec('analytic:gauss:std=0.5,shape=1x2x2')
    assert isinstance(net, GaussianModel) and not net.training
    case = json.loads((fixtures_dir / 've_songunet_ncsnpp.json').read_text())
    with open(tmp_path / 'net.pkl', 'wb') as fh:
        pickle.dump({'ema': getattr(networks, case['precond'])(**case['kwargs'])}, fh)
    loaded = load_network_spec(str(tmp_path / 'net.pkl'))
    assert type(loaded).__name__ == 'VEPrecond' and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    for spec in ['', 'gauss1d', str(tmp_path / 'missing.pkl')]:
        with pytest.raises(NetworkSpecError, match='expected a network pickle path or URL') as info:
            load_network_spec(spec)
        assert isinstance(info.value, ValueError) and '\n' not in str(info.value)


def test_gmm_sample_data_has_the_mixture_moments():
    """Exact draws: component frequencies follow the weights, each draw sits at its mean with the component's std."""
    mu = np.stack([np.full((1, 2, 2), -3.0), np.full((1, 2, 2), 3.0)])
    net = GaussianMixtureModel(mu, np.array([0.1, 0.5]), np.array([0.25, 0.75]), (1, 2, 2))
    x = net.sample_data(20000, torch.Generator().manual_seed(0))
    assert x.shape == (20000, 1, 2, 2) and x.dtype == torch.float64
    right = x.flatten(1).mean(1) > 0
    assert abs(right.double().mean().item() - 0.75) < 0.01
    assert abs(x[right].std().item() - 0.5) < 0.01 and abs(x[~right].std().item() - 0.1) < 0.005
    assert abs(x[right].mean().item() - 3.0) < 0.01
