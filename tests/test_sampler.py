"""edm.sampler: the one sampler on exact denoisers (formulas, orders, bit-exact Algorithm 2) and against upstream."""
import contextlib
import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edm import grids
from edm.rng import StackedRandomGenerator
from edm.sampler import ablation_sampler, edm_sampler, nfe, sample
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
    """Spec 2.5 step 4 written out literally: the oracle for bit-exactness."""
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

@pytest.mark.parametrize('solver', ['euler', 'heun'])
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


@pytest.mark.parametrize('solver, alpha, order', [('euler', 1, 1), ('heun', 1, 2), ('heun', 0.5, 2)])
def test_convergence_order(latents, solver, alpha, order):
    ref = C ** 2 * exact(latents, 0.002) / (C ** 2 + 0.002 ** 2)  # exact to sigma_min, then the exact last step
    errors = [rel_error(sample(GaussianNet(), latents, grids.edm_sigmas(K), solver=solver, alpha=alpha), ref)
              for K in (32, 64)]
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
    (dict(solver='rk4'), 'euler, heun'), (dict(schedule='cosine'), 'linear, vp, ve'), (dict(scaling='ve'), 'none, vp'),
    (dict(alpha=0), 'alpha'),
])
def test_bad_options_raise(latents, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(GaussianNet(), latents, [80, 1, 0], **kwargs)
    with pytest.raises(ValueError, match=match):
        ablation_sampler(GaussianNet(), latents, num_steps=2, **kwargs)


def test_nfe_rejects_unknown_solver():
    with pytest.raises(ValueError, match='euler, heun'):
        nfe(5, 'rk4')


# ----------------------------------------------------------------------------------------------------------------------
# Upstream's own numbers (tests/fixtures/edm-compat, README.md): the network case and the sampler case.

ABLATION_KEYS = [f'ablation.{disc}.{solver}.{schedule}.{scaling}.steps7' for disc in ('vp', 've', 'iddpm', 'edm')
                 for solver in ('euler', 'heun') for schedule, scaling in (('linear', 'none'), ('vp', 'vp'),
                                                                           ('ve', 'none'))]
EDM_KEYS = {'edm_sampler.steps5': dict(num_steps=5),
            'edm_sampler.steps6.churn': dict(num_steps=6, S_churn=10, S_min=0.05, S_max=50, S_noise=1.003)}
# Upstream wrote the references with 2 intra-op threads. The network's linear layers and sums split their float32
# reductions by thread, so other counts round differently (with 1, 3 or 4 threads the EDM output differs here by 1e-6
# relative). On other hardware only float32-level agreement of the network, amplified by the sampler, can be asked for.
UPSTREAM_THREADS = 2
FLOAT32_TOLERANCE = 1e-4


@contextlib.contextmanager
def intra_op_threads(num: int):
    """Run the block with `num` torch intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(num)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    with intra_op_threads(UPSTREAM_THREADS):
        for key, kwargs in EDM_KEYS.items():
            rng = StackedRandomGenerator('cpu', seeds)  # latents, then labels, then the sampler's noise (generate.py)
            latents = rng.randn(ref['latents'].shape)
            labels = torch.eye(net.label_dim)[rng.randint(net.label_dim, size=[len(seeds)])]
            assert torch.equal(latents, ref['latents']) and torch.equal(labels, ref['class_labels'])
            out[key] = edm_sampler(net, latents, labels, rng.randn_like, **kwargs)
        for key in ABLATION_KEYS:
            _, disc, solver, schedule, scaling, _ = key.split('.')
            out[key] = ablation_sampler(net, ref['latents'], ref['class_labels'],
                                        StackedRandomGenerator('cpu', seeds).randn_like, num_steps=7, solver=solver,
                                        discretization=disc, schedule=schedule, scaling=scaling)
    # The network reproduces upstream's float32 bit for bit iff the plain EDM run does (the sampler's own exactness is
    # checked without the network by test_bit_exact_with_algorithm_2).
    exact = torch.equal(out['edm_sampler.steps5'], ref['edm_sampler.steps5'])
    if not exact:
        warnings.warn(f'the network differs from upstream in float32 round-off here; '
                      f'checking the sampler to {FLOAT32_TOLERANCE} only')
    return SimpleNamespace(ref=ref, out=out, exact=exact)


@pytest.mark.parametrize('key', EDM_KEYS)
def test_edm_sampler_matches_upstream_bit_for_bit(upstream, key):
    out, ref = upstream.out[key], upstream.ref[key]
    assert out.dtype == torch.float64
    assert torch.equal(out, ref) if upstream.exact else rel_error(out, ref) < FLOAT32_TOLERANCE


@pytest.mark.parametrize('key', ABLATION_KEYS)
def test_ablation_sampler_matches_upstream(upstream, key):
    # Float64 round-off: we evaluate d = sigma'(x - s D)/sigma + (s'/s) x (exactly EDM's (x - D)/t when linear) and
    # Heun's second point at t_{i+1} itself; upstream's ablation code orders these differently. The sigma = sqrt(t)
    # clock amplifies that round-off (t spans 6400..4e-6), hence the looser bound for Heun with the ve schedule.
    tolerance = 1e-10 if '.heun.ve.' in key else 1e-13
    error = rel_error(upstream.out[key], upstream.ref[key])
    assert error < (tolerance if upstream.exact else FLOAT32_TOLERANCE)
