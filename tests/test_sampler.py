"""edm.sampler: the one sampler on exact denoisers (formulas, orders, bit-exact Algorithm 2) and against upstream."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from art.analytic import load_analytic
from conftest import FIXTURES, RANDN_FLOAT32_ATOL
from edm import grids
from edm.denoiser import Denoiser
from edm.rng import StackedRandomGenerator, seed_latents
from edm.sampler import SOLVER_STEPS, ablation_sampler, edm2_sampler, edm_sampler, nfe, sample, sample_batches
from training import networks

C = 0.5  # data std of the analytic model


class GaussianNet:
    """Exact denoiser of N(0, C^2 I) data, D(x; sigma) = C^2 x/(C^2 + sigma^2), recording how it is called."""
    sigma_min, sigma_max, label_dim = 0.0, math.inf, 0

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        self.dtype = dtype
        self.sigmas = []

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, class_labels=None) -> torch.Tensor:
        self.sigmas.append(sigma)
        return (C ** 2 * x / (C ** 2 + sigma ** 2)).to(self.dtype)


def exact(latents: torch.Tensor, sigma: float, T: float = 80) -> torch.Tensor:
    """The ODE solution from x(T) = latents T: x(sigma) = x(T) sqrt((C^2 + sigma^2)/(C^2 + T^2))."""
    return latents.double() * T * math.sqrt((C ** 2 + sigma ** 2) / (C ** 2 + T ** 2))


def algorithm2(net, latents, t_steps, randn_like, S_churn=0, S_min=0, S_max=math.inf, S_noise=1):
    """docs/edm-compat.md §3.1 step 4 written out literally: the oracle for bit-exactness."""
    num_steps = len(t_steps) - 1
    x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)
        d_cur = (x_hat - net(x_hat, t_hat).to(torch.float64)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            d_prime = (x_next - net(x_next, t_next).to(torch.float64)) / t_next
            x_next = x_hat + (t_next - t_hat) * (d_cur + d_prime) / 2
    return x_next


@pytest.fixture
def latents() -> torch.Tensor:
    return torch.randn([3, 2, 4, 4], generator=torch.Generator().manual_seed(0))


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


# ----------------------------------------------------------------------------------------------------------------------
# Exact formulas and convergence on the Gaussian model.

@pytest.mark.parametrize('solver', ['euler', 'heun', 'rk4', 'dpmpp-2m'])
def test_one_step_to_zero_is_the_denoiser(latents, solver):
    net = GaussianNet()
    out = sample(net, latents, [80, 0], solver=solver)
    assert out.dtype == torch.float64 and len(net.sigmas) == 1
    # x - 80 (x - D)/80 = D up to the cancellation of x against x - D (D ~ x/1600)
    assert rel_error(out, C ** 2 * latents.double() * 80 / (C ** 2 + 80 ** 2)) < 1e-11


def test_heun_step_formula(latents):
    # Heun T -> s (trapezoid on dx/dsigma = x sigma/(C^2 + sigma^2)), then the last step lands on D(x; s).
    T, s = 80.0, 3.0
    d_T = T / (C ** 2 + T ** 2)
    euler = 1 + (s - T) * d_T
    heun = 1 + (s - T) * (d_T + euler * s / (C ** 2 + s ** 2)) / 2
    out = sample(GaussianNet(), latents, [T, s, 0], solver='heun')
    assert rel_error(out, latents.double() * T * heun * C ** 2 / (C ** 2 + s ** 2)) < 1e-12


def test_rk4_step_formula(latents):
    # RK4 T -> s on dx/dsigma = x g(sigma), g = sigma/(C^2 + sigma^2), written out stage by stage; then D(x; s).
    T, s = 80.0, 3.0
    h, m = s - T, (T + s) / 2
    def g(sigma):
        return sigma / (C ** 2 + sigma ** 2)
    k1 = g(T)
    k2 = (1 + h / 2 * k1) * g(m)
    k3 = (1 + h / 2 * k2) * g(m)
    k4 = (1 + h * k3) * g(s)
    rk4 = 1 + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    out = sample(GaussianNet(), latents, [T, s, 0], solver='rk4')
    assert rel_error(out, latents.double() * T * rk4 * C ** 2 / (C ** 2 + s ** 2)) < 1e-12


def test_dpmpp_2m_steps_by_hand(latents):
    # DPM-Solver++(2M) on [T, s1, s2, 0]: a first-order step, a second-order multistep step, a last step onto D.
    T, s1, s2 = 80.0, 5.0, 0.7
    def D(x, sigma):
        return C ** 2 * x / (C ** 2 + sigma ** 2)
    x0 = latents.double() * T
    x1 = s1 / T * x0 + (1 - s1 / T) * D(x0, T)
    r = math.log(T / s1) / math.log(s1 / s2)                  # h_prev / h in lambda = -log sigma
    d1 = (1 + 1 / (2 * r)) * D(x1, s1) - 1 / (2 * r) * D(x0, T)
    x2 = s2 / s1 * x1 + (1 - s2 / s1) * d1
    out = sample(GaussianNet(), latents, [T, s1, s2, 0], solver='dpmpp-2m')
    assert rel_error(out, D(x2, s2)) < 1e-12


@pytest.mark.parametrize('solver', ['euler', 'heun', 'rk4'])
def test_a_step_to_several_levels_at_once_is_each_step(latents, solver):
    # art.gits steps from one state to every later level in one call: levels [J, 1, ...] broadcast against x.
    def d(x, t):
        return (x - C ** 2 * x / (C ** 2 + t ** 2)) / t

    step, x, t = SOLVER_STEPS[solver], latents.double() * 80, torch.tensor(80.0, dtype=torch.float64)
    levels = torch.tensor([20.0, 3.0, 0.5], dtype=torch.float64)
    together = step(d, x, t, levels.reshape(-1, 1, 1, 1, 1), d(x, t))
    assert together.shape == (3, *x.shape)
    for level, out in zip(levels, together):
        torch.testing.assert_close(out, step(d, x, t, level, d(x, t)), rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match='SolveState'):
        SOLVER_STEPS['dpmpp-2m'](d, x, t, levels[0], d(x, t))


@pytest.mark.parametrize('solver, alpha, order, steps', [('euler', 1, 1, (32, 64)), ('heun', 1, 2, (32, 64)),
                                                         ('heun', 0.5, 2, (32, 64)), ('rk4', 1, 4, (16, 32)),
                                                         ('dpmpp-2m', 1, 2, (32, 64))])
def test_convergence_order(latents, solver, alpha, order, steps):
    # Global error on the EDM grid against the exact solution (exact to sigma_min, then the exact last step), as K
    # doubles: the slope log2(e_K / e_2K) is the order (measured here: euler 0.99, heun 2.10, rk4 4.09, dpmpp-2m 2.16).
    ref = C ** 2 * exact(latents, 0.002) / (C ** 2 + 0.002 ** 2)
    errors = [rel_error(sample(GaussianNet(), latents, grids.edm_sigmas(K), solver=solver, alpha=alpha), ref)
              for K in steps]
    assert math.log2(errors[0] / errors[1]) > order - 0.15


@pytest.mark.parametrize('schedule, scaling', [('linear', 'none'), ('vp', 'vp'), ('ve', 'none'), ('vp', 'none'),
                                               ('linear', 'vp')])
def test_every_schedule_and_scaling_solves_the_same_ode(latents, schedule, scaling):
    ref = C ** 2 * exact(latents, 0.002) / (C ** 2 + 0.002 ** 2)
    errors = [rel_error(sample(GaussianNet(), latents, grids.edm_sigmas(K), schedule=schedule, scaling=scaling,
                               randn_like=torch.zeros_like), ref) for K in (64, 256)]
    assert errors[1] < 5e-3 and errors[1] < errors[0] / 8  # second order: / 16


@pytest.mark.parametrize('churn', [dict(), dict(S_churn=40, S_min=0.05, S_max=50, S_noise=1.003)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_bit_exact_with_algorithm_2(latents, churn, dtype):
    t_steps = torch.as_tensor(grids.edm_sigmas(9))
    def noise():
        return StackedRandomGenerator('cpu', [0, 1, 2]).randn_like

    expected = algorithm2(GaussianNet(dtype), latents, t_steps, noise(), **churn)
    assert torch.equal(sample(GaussianNet(dtype), latents, t_steps.numpy(), randn_like=noise(), **churn), expected)
    assert torch.equal(edm_sampler(GaussianNet(dtype), latents, randn_like=noise(), num_steps=9, **churn), expected)


def test_wrappers_are_the_one_sampler(latents):
    grid = grids.make_sigmas('edm', 6)
    expected = sample(GaussianNet(), latents, grid)
    assert torch.equal(edm_sampler(GaussianNet(), latents, num_steps=6), expected)
    assert torch.equal(ablation_sampler(GaussianNet(), latents, num_steps=6), expected)
    assert torch.equal(ablation_sampler(GaussianNet(), latents, num_steps=6, discretization='logsnr', solver='euler'),
                       sample(GaussianNet(), latents, grids.make_sigmas('logsnr', 6), solver='euler'))


# ----------------------------------------------------------------------------------------------------------------------
# How the network and the noise source are called.

def test_rk4_and_dpmpp_2m_call_the_net_as_counted(latents):
    grid = grids.edm_sigmas(5)
    net = GaussianNet()
    sample(net, latents, grid, solver='rk4')
    assert len(net.sigmas) == nfe(5, 'rk4') == 4 * 5 - 3
    mid = (grid[:-2] + grid[1:-1]) / 2                       # stages at sigma_i, the midpoint twice, sigma_{i+1}
    expected = np.stack([grid[:-2], mid, mid, grid[1:-1]], axis=1).ravel().tolist() + [grid[-2]]
    np.testing.assert_allclose([float(s) for s in net.sigmas], expected, rtol=1e-15)
    net = GaussianNet()
    sample(net, latents, grid, solver='dpmpp-2m')
    assert [float(s) for s in net.sigmas] == grid[:-1].tolist() and nfe(5, 'dpmpp-2m') == 5


class LabelledNet(GaussianNet):
    """GaussianNet shifted by a per-row multiple of the class index, so a misaligned label chunk shows."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, class_labels=None) -> torch.Tensor:
        shift = class_labels.argmax(dim=1).to(x.dtype).reshape(-1, 1, 1, 1) * sigma / 10
        return super().__call__(x, sigma) + shift


@pytest.mark.parametrize('solver', ['euler', 'heun', 'rk4', 'dpmpp-2m'])
def test_sample_batches_is_one_call_in_chunks(solver):
    latents = torch.randn([7, 2, 4, 4], generator=torch.Generator().manual_seed(1))
    labels = torch.eye(3, dtype=torch.float64)[torch.tensor([0, 2, 1, 1, 0, 2, 2])]
    grid = grids.edm_sigmas(4)
    whole = sample(LabelledNet(), latents, grid, class_labels=labels, solver=solver)
    net = LabelledNet()
    chunked = sample_batches(net, latents, grid, class_labels=labels, batch=3, solver=solver)
    assert torch.equal(chunked, whole)         # the net is elementwise per row, so chunking changes no bit
    assert len(net.sigmas) == 3 * nfe(4, solver) and [s.shape for s in net.sigmas[:1]] == [torch.Size([])]
    with pytest.raises(ValueError, match='churn'):
        sample_batches(net, latents, grid, class_labels=labels, S_churn=1.0)


@pytest.mark.parametrize('kwargs', [dict(schedule='vp'), dict(scaling='vp'), dict(S_churn=1.0)])
def test_dpmpp_2m_refuses_what_it_does_not_integrate(latents, kwargs):
    with pytest.raises(ValueError, match='dpmpp-2m'):
        sample(GaussianNet(), latents, grids.edm_sigmas(3), solver='dpmpp-2m', **kwargs)


@pytest.mark.parametrize('solver', ['euler', 'heun'])
def test_nfe_and_sigma_argument(latents, solver):
    net = GaussianNet()
    grid = grids.edm_sigmas(7)
    sample(net, latents, grid, solver=solver)
    assert len(net.sigmas) == nfe(7, solver) == {'euler': 7, 'heun': 13}[solver]
    assert all(s.ndim == 0 and s.dtype == torch.float64 and s > 0 for s in net.sigmas)  # never at sigma = 0
    levels = [float(s) for s in net.sigmas]
    assert levels == (grid[:-1].tolist() if solver == 'euler' else [grid[0]] + np.repeat(grid[1:-1], 2).tolist())


def test_randn_like_is_called_once_per_step_even_without_churn(latents):
    calls = []

    def randn_like(x: torch.Tensor) -> torch.Tensor:
        calls.append((x.shape, x.dtype))
        return torch.randn_like(x)

    out = sample(GaussianNet(), latents, grids.edm_sigmas(5), randn_like=randn_like)
    assert calls == [(latents.shape, torch.float64)] * 5
    assert torch.equal(out, sample(GaussianNet(), latents, grids.edm_sigmas(5), randn_like=torch.zeros_like))


def test_edm2_sampler_draws_noise_only_on_the_steps_it_churns(latents):
    calls = []

    def randn_like(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.dtype)
        return torch.randn_like(x)

    plain = edm2_sampler(GaussianNet(torch.float32), latents, num_steps=6, randn_like=randn_like)
    assert calls == [] and torch.equal(plain, edm2_sampler(GaussianNet(torch.float32), latents, num_steps=6))
    net = GaussianNet(torch.float32)
    edm2_sampler(net, latents, num_steps=6, S_churn=1.2, S_min=0.5, S_max=30, randn_like=randn_like)
    churned = [s for s in grids.make_sigmas('edm', 6)[:-1] if 0.5 <= s <= 30]
    assert 0 < len(churned) < 6 and calls == [torch.float32] * len(churned)
    assert [float(s) for s in net.sigmas[::2]] == pytest.approx([s * (1 + 1.2 / 6) if 0.5 <= s <= 30 else s
                                                                 for s in grids.make_sigmas('edm', 6)[:-1]])


def test_churn_raises_the_noise_level_inside_the_window(latents):
    net = GaussianNet()
    grid = grids.edm_sigmas(6)
    sample(net, latents, grid, solver='euler', S_churn=1.2, S_min=0.5, S_max=30)
    gamma = 1.2 / 6
    expected = [s + gamma * s if 0.5 <= s <= 30 else s for s in grid[:-1]]
    assert [float(s) for s in net.sigmas] == expected
    net = GaussianNet()
    sample(net, latents, grid, solver='euler', S_churn=100)  # gamma is capped at sqrt(2) - 1
    assert float(net.sigmas[0]) == 80 + (math.sqrt(2) - 1) * 80


def test_ablation_sampler_clamps_to_the_net_and_refits_vp(latents):
    net = GaussianNet()
    net.sigma_min, net.sigma_max = 0.05, 10.0
    ablation_sampler(net, latents, num_steps=5, solver='euler', discretization='vp', schedule='vp', scaling='vp',
                     randn_like=torch.zeros_like)
    levels = [float(s) for s in net.sigmas]
    assert levels[0] == pytest.approx(10, rel=1e-12) and levels[-1] == pytest.approx(0.05, rel=1e-12)


def test_repeated_levels_are_zero_steps(latents):
    # Rounding (iDDPM's snapping to its levels) can repeat a level; the step between them leaves x unchanged.
    net = GaussianNet()
    out = sample(net, latents, [80, 5, 5, 0])
    assert torch.equal(out, sample(GaussianNet(), latents, [80, 5, 0])) and len(net.sigmas) == nfe(3)


@pytest.mark.parametrize('sigmas, match', [
    ([80, 1], 'end with a single 0'), ([80, 0, 0], 'end with a single 0'), ([80, -1, 0], 'end with a single 0'),
    ([1, 80, 0], 'descending'), ([80, math.nan, 0], 'finite'), ([80], 'K \\+ 1 >= 2'), ([[80, 0]], '1-D'),
])
def test_bad_grid_raises(latents, sigmas, match):
    with pytest.raises(ValueError, match=match):
        sample(GaussianNet(), latents, sigmas)


@pytest.mark.parametrize('kwargs, match', [
    (dict(solver='rk2'), 'euler, heun, rk4, dpmpp-2m'), (dict(schedule='cosine'), 'linear, vp, ve'),
    (dict(scaling='ve'), 'none, vp'), (dict(alpha=0), 'alpha'),
])
def test_bad_options_raise(latents, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(GaussianNet(), latents, [80, 1, 0], **kwargs)
    with pytest.raises(ValueError, match=match):
        ablation_sampler(GaussianNet(), latents, num_steps=2, **kwargs)


def test_nfe_rejects_unknown_solver():
    with pytest.raises(ValueError, match='euler, heun, rk4, dpmpp-2m'):
        nfe(5, 'rk2')


# ----------------------------------------------------------------------------------------------------------------------
# Upstream's own numbers (tests/fixtures/edm-compat, README.md): the network case and the sampler case.

ABLATION_KEYS = [f'ablation.{disc}.{solver}.{schedule}.{scaling}.steps7' for disc in ('vp', 've', 'iddpm', 'edm')
                 for solver in ('euler', 'heun') for schedule, scaling in (('linear', 'none'), ('vp', 'vp'),
                                                                           ('ve', 'none'))]
EDM_KEYS = {'edm_sampler.steps5': dict(num_steps=5),
            'edm_sampler.steps6.churn': dict(num_steps=6, S_churn=10, S_min=0.05, S_max=50, S_noise=1.003)}
# Upstream wrote the references on another machine. Its float32 network (convolutions, matrix products, group norms)
# rounds differently on other code paths, and so do float32 latents (RANDN_FLOAT32_ATOL): the outputs can agree only to
# the network's round-off as the sampler carries it. Emulating SSE, AVX2 and AVX-512 paths with 1, 2 and 4 threads,
# the relative error was at most 1.9e-6 for edm_sampler, 2.5e-6 for the ablation runs and 3.5e-5 for Heun under the
# ve schedule, whose sigma = sqrt(t) clock (t from 6400 down to 4e-6) amplifies round-off (docs/edm-compat.md §1.3).
# The bounds are 10x those. Real differences exceed them: rho = 7.001 moves the edm_sampler output by 8e-5, S_noise = 1
# instead of 1.003 by 3e-3, Heun's alpha = 1.01 the ablation outputs by 1.5e-3 to 0.3.
EDM_TOLERANCE = 2e-5
ABLATION_TOLERANCE = 2.5e-5
VE_HEUN_TOLERANCE = 3.5e-4


@pytest.fixture(scope='module')
def upstream(fixtures_dir):
    """The fixture network (loaded strictly), every sampler reference and our outputs for them."""
    case = json.loads((fixtures_dir / 'edm_songunet_ddpmpp_cond_aug.json').read_text())
    arrays = np.load(fixtures_dir / 'edm_songunet_ddpmpp_cond_aug.npz')
    net = getattr(networks, case['precond'])(**case['kwargs']).eval().requires_grad_(False)
    net.load_state_dict({key: torch.from_numpy(arrays[f'state.{key}']) for key, _ in case['state_keys']}, strict=True)
    ref = {key: torch.from_numpy(value) for key, value in
           np.load(fixtures_dir / 'edm_songunet_ddpmpp_cond_aug.sampler.npz').items()}
    seeds = json.loads((fixtures_dir / 'edm_songunet_ddpmpp_cond_aug.sampler.json').read_text())['seeds']
    out = {}
    for key, kwargs in EDM_KEYS.items():
        rng = StackedRandomGenerator('cpu', seeds)  # latents, then labels, then the sampler's noise (generate.py)
        latents = rng.randn(ref['latents'].shape)
        labels = torch.eye(net.label_dim)[rng.randint(net.label_dim, size=[len(seeds)])]
        torch.testing.assert_close(latents, ref['latents'], rtol=0, atol=RANDN_FLOAT32_ATOL)
        assert torch.equal(labels, ref['class_labels'])  # integer draws: exact
        out[key] = edm_sampler(net, latents, labels, rng.randn_like, **kwargs)
    for key in ABLATION_KEYS:
        _, disc, solver, schedule, scaling, _ = key.split('.')
        out[key] = ablation_sampler(net, ref['latents'], ref['class_labels'],
                                    StackedRandomGenerator('cpu', seeds).randn_like, num_steps=7, solver=solver,
                                    discretization=disc, schedule=schedule, scaling=scaling)
    return SimpleNamespace(ref=ref, out=out)


@pytest.mark.parametrize('key', EDM_KEYS)
def test_edm_sampler_matches_upstream(upstream, key):
    out, ref = upstream.out[key], upstream.ref[key]
    assert out.dtype == torch.float64
    assert rel_error(out, ref) < EDM_TOLERANCE


@pytest.mark.parametrize('key', ABLATION_KEYS)
def test_ablation_sampler_matches_upstream(upstream, key):
    # Besides the network's round-off, our order of float64 operations differs from upstream's (docs/edm-compat.md
    # §3.5): with identical network outputs the outputs agree to 1e-14, and to 2e-11 for Heun under the ve schedule.
    tolerance = VE_HEUN_TOLERANCE if '.heun.ve.' in key else ABLATION_TOLERANCE
    assert rel_error(upstream.out[key], upstream.ref[key]) < tolerance


# ----------------------------------------------------------------------------------------------------------------------
# EDM2's sampler with autoguidance against upstream EDM2 (tests/fixtures/edm2-compat/README.md, "Sampler case").

# Upstream EDM2's float32 networks (ours agree with them to float32 round-off, tests/test_networks_edm2.py) feed 7 to 15
# chained evaluations here, and the few large steps magnify round-off: multiplying every network output by
# 1 + 6e-8 N(0, 1) (half a float32 ulp) moves these outputs by up to 2.0e-5 of their scale (4 steps, guidance 2;
# 2.3e-6 with 8 steps). Measured against upstream: at most 1.4e-5. The bound is 2.5x the first. Real differences
# exceed it: rho = 7.001 moves the output by 1.9e-4, sigma_max = 80.01 by 1.1e-4, guidance 2.001 by 1.7e-3, a guide
# called without the labels by 0.37.
EDM2_TOLERANCE = 5e-5
# Upstream evaluates the rho grid in the working dtype; edm2_sampler rounds EDM's float64 grid to it. In float32 the
# two are up to 8 ulp apart (measured 9.3e-7 relative); in float64 they are identical.
EDM2_GRID_RTOL = {torch.float32: 1.5e-6, torch.float64: 0.0}


class CallLog(torch.nn.Module):
    """A network that records each call (name, sigma, x, labels) in a log shared with other networks."""

    def __init__(self, net: torch.nn.Module, name: str, log: list) -> None:
        super().__init__()
        self.net, self.name, self.log = net, name, log
        self.img_resolution, self.img_channels, self.label_dim = net.img_resolution, net.img_channels, net.label_dim

    def forward(self, x, sigma, class_labels=None):
        self.log.append(SimpleNamespace(name=self.name, sigma=sigma, x=x, labels=class_labels))
        return self.net(x, sigma, class_labels)


@pytest.fixture(scope='module')
def edm2_case():
    """net, gnet (upstream's weights, loaded strictly), the sampler references and run options."""
    from training.networks_edm2 import Precond
    folder = FIXTURES / 'edm2-compat'
    meta = json.loads((folder / 'edm2_sampler.json').read_text())
    arrays = dict(np.load(folder / 'edm2_sampler.npz'))
    net_meta = json.loads((folder / f'{meta["net_case"]}.json').read_text())
    net_arrays = np.load(folder / f'{meta["net_case"]}.npz')
    net = Precond(**net_meta['kwargs'])
    net.load_state_dict({key: torch.from_numpy(net_arrays[f'state.{key}']) for key, _ in net_meta['state_keys']})
    gnet = Precond(**meta['gnet']['kwargs'])
    gnet.load_state_dict({key: torch.from_numpy(arrays[f'gnet.state.{key}']) for key, _ in meta['gnet']['state_keys']})
    return SimpleNamespace(meta=meta, ref=arrays, net=net.eval().requires_grad_(False),
                           gnet=gnet.eval().requires_grad_(False))


def _edm2_run(case, tag):
    kwargs = dict(case.meta['runs'][tag]['kwargs'])
    kwargs['dtype'] = getattr(torch, kwargs['dtype'])
    return kwargs


def test_edm2_inputs_are_drawn_per_seed_as_upstream(edm2_case):
    latents, labels, _ = seed_latents(edm2_case.net, edm2_case.meta['seeds'])
    torch.testing.assert_close(latents, torch.from_numpy(edm2_case.ref['latents']), rtol=0, atol=RANDN_FLOAT32_ATOL)
    assert torch.equal(labels, torch.from_numpy(edm2_case.ref['class_labels']))   # integer draws: exact


@pytest.mark.parametrize('tag', [f'steps{n}.guidance{w}.{dtype}' for n in (4, 8) for w in ('1.0', '2.0')
                                 for dtype in ('float32', 'float64')]
                         + ['steps6.guidance1.5.float32.sigma0.01-20.rho5'])
def test_edm2_sampler_matches_upstream(edm2_case, tag):
    kwargs, ref = _edm2_run(edm2_case, tag), edm2_case.ref
    log = []
    latents, labels = torch.from_numpy(ref['latents']), torch.from_numpy(ref['class_labels'])
    with torch.no_grad():
        out = edm2_sampler(CallLog(edm2_case.net, 'net', log), latents, labels, CallLog(edm2_case.gnet, 'gnet', log),
                           randn_like=StackedRandomGenerator('cpu', edm2_case.meta['seeds']).randn_like, **kwargs)
    expected = ref[f'edm_sampler.{tag}']
    assert out.dtype == kwargs['dtype'] and str(out.dtype).endswith(str(expected.dtype))
    assert rel_error(out.double(), torch.from_numpy(expected).double()) < EDM2_TOLERANCE
    # 2N - 1 net calls; gnet right after each, with the same x, sigma and labels, unless guidance == 1.
    net_sigma, gnet_sigma = ref[f'calls.{tag}.net_sigma'], ref[f'calls.{tag}.gnet_sigma']
    assert len(net_sigma) == nfe(kwargs['num_steps'])
    assert len(gnet_sigma) == (0 if kwargs['guidance'] == 1 else len(net_sigma))
    names = [call.name for call in log]
    assert names == (['net'] if kwargs['guidance'] == 1 else ['net', 'gnet']) * len(net_sigma)
    for call in log:
        assert call.sigma.ndim == 0 and call.sigma.dtype == call.x.dtype == kwargs['dtype'] and call.labels is labels
    for first, second in zip(log[::2], log[1::2]):
        if second.name == 'gnet':
            assert second.x is first.x and second.sigma is first.sigma
    np.testing.assert_allclose([float(c.sigma) for c in log if c.name == 'net'], net_sigma,
                               rtol=EDM2_GRID_RTOL[kwargs['dtype']], atol=0)
    np.testing.assert_allclose([float(c.sigma) for c in log if c.name == 'gnet'], gnet_sigma,
                               rtol=EDM2_GRID_RTOL[kwargs['dtype']], atol=0)


@pytest.mark.parametrize('tag', ['steps4.guidance2.0.float32', 'steps8.guidance1.0.float64',
                                 'steps6.guidance1.5.float32.sigma0.01-20.rho5'])
def test_sample_on_upstreams_grid_calls_the_networks_at_upstreams_levels(edm2_case, tag):
    # The one sampler given upstream's own (dtype-evaluated) grid and the guided denoiser: the levels of every
    # network call are upstream's exactly, and the output agrees as above.
    kwargs, ref = _edm2_run(edm2_case, tag), edm2_case.ref
    net_sigma = ref[f'calls.{tag}.net_sigma']
    grid = np.append(np.concatenate([net_sigma[:1], net_sigma[1::2]]), 0.0)   # t_0, then each t_{i+1} (Heun: twice)
    log = []
    denoiser = Denoiser(CallLog(edm2_case.net, 'net', log), CallLog(edm2_case.gnet, 'gnet', log),
                              kwargs['guidance'])
    with torch.no_grad():
        out = sample(denoiser, torch.from_numpy(ref['latents']), grid, torch.from_numpy(ref['class_labels']),
                     dtype=kwargs['dtype'])
    assert [float(c.sigma) for c in log if c.name == 'net'] == net_sigma.tolist()
    assert [float(c.sigma) for c in log if c.name == 'gnet'] == ref[f'calls.{tag}.gnet_sigma'].tolist()
    assert out.dtype == kwargs['dtype']
    assert rel_error(out.double(), torch.from_numpy(ref[f'edm_sampler.{tag}']).double()) < EDM2_TOLERANCE


def test_edm_samplers_take_an_edm2_network_as_it_is(edm2_case):
    # EDM2's Precond has no round_sigma or sigma range: the samplers see it with identity rounding on [0, inf), so
    # the grid keeps the defaults (0.002 to 80) and EDM's float64 sampler is edm2_sampler in float64.
    ref = edm2_case.ref
    latents, labels = torch.from_numpy(ref['latents']), torch.from_numpy(ref['class_labels'])
    with torch.no_grad():
        edm = edm_sampler(edm2_case.net, latents, labels, num_steps=4)
        edm2 = edm2_sampler(edm2_case.net, latents, labels, num_steps=4, dtype=torch.float64)
        ablation = ablation_sampler(edm2_case.net, latents, labels, num_steps=4, solver='euler', discretization='vp')
    assert torch.equal(edm, edm2) and ablation.dtype == torch.float64 and torch.isfinite(ablation).all()
    assert rel_error(edm, torch.from_numpy(ref['edm_sampler.steps4.guidance1.0.float64'])) < EDM2_TOLERANCE


def test_working_dtype_rounds_the_levels_the_network_sees(latents):
    # In float32 the levels the network sees are the grid rounded to float32, and x stays float32 throughout.
    net = GaussianNet(torch.float32)
    grid = grids.edm_sigmas(5)
    out = sample(net, latents, grid, dtype=torch.float32)
    assert out.dtype == torch.float32
    levels = [grid[0]] + np.repeat(grid[1:-1], 2).tolist()                  # Heun: t_0, then each t_{i+1} twice
    assert [float(s) for s in net.sigmas] == [float(np.float32(s)) for s in levels]
    assert all(s.dtype == torch.float32 for s in net.sigmas)
    with pytest.raises(ValueError, match='floating-point'):
        sample(GaussianNet(), latents, grid, dtype=torch.int32)


def edm2_algorithm(net, gnet, guidance, latents, t_steps, dtype):
    """Upstream EDM2's sampler without churn as its fixture README describes it, written out literally: the oracle
    for bit-exactness in the working dtype."""
    def denoise(x, t):
        D = net(x, t).to(dtype)
        return D if guidance == 1 else gnet(x, t).to(dtype).lerp(D, guidance)
    x_next = latents.to(dtype) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_hat, t_hat = x_next, t_cur
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < len(t_steps) - 2:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


@pytest.mark.parametrize('guidance', [1.0, 2.0])
def test_float32_guided_sampling_is_bit_exact_with_upstreams_algorithm(latents, guidance):
    # Exact Gaussian denoisers (float32 in, float32 out), upstream's float32 grid: the same arithmetic bit for bit.
    net = load_analytic('analytic:gauss:std=0.5,shape=2x4x4')
    gnet = load_analytic('analytic:gauss:std=0.8,shape=2x4x4')
    steps = torch.arange(6, dtype=torch.float32)
    t_steps = torch.cat([(80 ** (1 / 7) + steps / 5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7, torch.zeros(1)])
    expected = edm2_algorithm(net, gnet, guidance, latents, t_steps, torch.float32)
    out = sample(Denoiser(net, gnet, guidance), latents, t_steps.double().numpy(), dtype=torch.float32)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
