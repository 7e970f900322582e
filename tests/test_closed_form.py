"""art.closed_form: the training-free ART optimum against the closed forms of docs/method.md §5."""
import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.optimize import brentq

from art.analytic import gauss_w2, load_analytic, reference_solution, write_random_gmm
from art.closed_form import closed_form_schedule, estimate_qbar, lambda_clock
from art.schedules import baseline_schedule, load_schedule, save_schedule
from edm.sampler import sample

KS = [2, 5, 10, 20, 50, 100]


@pytest.fixture(scope='module')
def gauss1d_schedule():
    """The closed-form schedule of the paper's 1-D example (K = 2), estimated from 16 trajectories."""
    return closed_form_schedule(load_analytic('analytic:gauss1d'), 2, network='analytic:gauss1d', num_samples=16)


def exact_grid(c: float, T: float, K: int) -> np.ndarray:
    """docs/method.md §5: sigma uniform in int_0^sigma (c^2+u^2)^(-3/4) du (sqrt|Q| along the exact flow)."""
    density = lambda u: (c * c + u * u) ** -0.75
    total = quad(density, 0, T, epsabs=1e-14, epsrel=1e-13)[0]
    inner = [brentq(lambda s: quad(density, 0, s, epsabs=1e-14, epsrel=1e-13)[0] - (1 - k / K) * total, 0, T,
                    xtol=1e-14) for k in range(1, K)]
    return np.array([T, *inner, 0.0])


def test_gauss1d_grids_and_w2_row(gauss1d_schedule):
    T = 3.0
    np.testing.assert_allclose(T - gauss1d_schedule.sigmas, [0, 2.1405, 3], atol=1e-4)
    np.testing.assert_allclose(T - gauss1d_schedule.clock.grid(5), [0, 1.2093, 1.8942, 2.3488, 2.6962, 3], atol=1e-4)
    row = [gauss_w2(gauss1d_schedule.clock.grid(K), 1.0) for K in KS]
    np.testing.assert_allclose(row, [.349, .149, .077, .039, .016, .008], atol=0.002)
    for K in KS:                                    # and equal to the exact equidistribution to high accuracy
        np.testing.assert_allclose(gauss1d_schedule.clock.grid(K), exact_grid(1.0, T, K), rtol=1e-4, atol=1e-6)


def test_gauss_std_half_grid():
    net = load_analytic('analytic:gauss:std=0.5,shape=1x2x2')
    sched = closed_form_schedule(net, 5, num_samples=4, fine_steps=128)
    np.testing.assert_allclose(sched.sigmas, [80, 4.70, 1.48, 0.645, 0.262, 0], rtol=3e-3)
    np.testing.assert_allclose(sched.sigmas, exact_grid(0.5, 80.0, 5), rtol=1e-3)


def test_lambda_clock_with_the_exact_density():
    """Integration alone (no Monte Carlo): qbar ∝ (c^2+sigma^2)^(-3/2) on the default fine grid."""
    sigma = (80 ** (1 / 7) + np.arange(256) / 255 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    clock = lambda_clock(sigma, 7.0 * (0.25 + sigma ** 2) ** -1.5)
    for K in [3, 10, 40]:
        np.testing.assert_allclose(clock.grid(K), exact_grid(0.5, 80.0, K), rtol=1e-5, atol=1e-8)


def test_provenance_records_cost_and_the_file_round_trips(gauss1d_schedule, tmp_path):
    assert gauss1d_schedule.method == 'closed-form' and gauss1d_schedule.num_steps == 2
    prov = gauss1d_schedule.provenance
    assert prov['network'] == 'analytic:gauss1d' and prov['reference']['levels'] == 256
    assert prov['reference']['sigma_max'] == 3.0 and prov['reference']['sigma_min'] == 0.002
    assert prov['cost']['forward_evals'] == 16 * (2 * 256 - 1) and prov['cost']['jvp_evals'] == 16 * 256
    assert prov['cost']['cpu_seconds'] > 0
    back = load_schedule(save_schedule(gauss1d_schedule, tmp_path / 'cf.json'), num_steps=7, resample=True)
    np.testing.assert_allclose(back.sigmas, gauss1d_schedule.clock.grid(7), rtol=1e-15)


def test_estimate_is_independent_of_the_batch_size():
    net = load_analytic('analytic:gauss:std=0.5,shape=1x2x2')
    a = estimate_qbar(net, num_samples=6, fine_steps=16, batch_size=6)
    b = estimate_qbar(net, num_samples=6, fine_steps=16, batch_size=4)
    np.testing.assert_allclose(a.qbar, b.qbar, rtol=1e-12)
    assert (np.diff(a.sigma) < 0).all() and a.sigma[0] == 80.0


def test_closed_form_beats_edm_on_a_mixture(tmp_path):
    """Rms endpoint error against the exact ODE solution, Euler, K = 10 (docs/bench/report.md: 0.74x EDM at K = 10)."""
    path = write_random_gmm(tmp_path / 'm.npz', 8, (1, 4, 4), seed=0, std_range=(0.05, 0.5))
    net = load_analytic(f'analytic:gmm:{path}')
    sched = closed_form_schedule(net, 10, num_samples=16, fine_steps=64)
    latents = torch.randn(16, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = reference_solution(net, latents * 80.0, rtol=1e-8, atol=1e-8)

    def rms(sigmas):
        return float((sample(net, latents, sigmas, solver='euler') - ref).pow(2).sum((1, 2, 3)).mean().sqrt())

    assert rms(sched.sigmas) < 0.8 * rms(baseline_schedule('edm', 10, net).sigmas)
