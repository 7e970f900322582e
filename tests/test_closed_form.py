"""art.closed_form: the training-free ART optimum against the closed forms of docs/method.md §5."""
import dataclasses

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.optimize import brentq

from art.analytic import gauss_w2, load_analytic, reference_solution, write_random_gmm
from art.closed_form import (AdaptiveSettings, adaptive_estimate, adaptive_schedule, closed_form_schedule, draw_latents,
                              estimate_qbar, fine_levels, lambda_clock, trajectory_q)
from art.schedules import baseline_schedule, load_schedule, save_schedule
from edm.sampler import sample

KS = [2, 5, 10, 20, 50, 100]


@pytest.fixture(scope='module')
def gauss1d_schedule():
    """The closed-form schedule of the paper's 1-D example (K = 2), estimated from 16 trajectories."""
    return closed_form_schedule(load_analytic('analytic:gauss1d'), 2, network='analytic:gauss1d', num_samples=16)


def exact_grid(c: float, T: float, K: int) -> np.ndarray:
    """docs/method.md §5: sigma uniform in int_0^sigma (c^2+u^2)^(-3/4) du (sqrt|Q| along the exact flow)."""
    def density(u):
        return (c * c + u * u) ** -0.75
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


# --- the adaptive estimate (AdaptiveSettings): doubling until the clock stops moving, under a budget -------------

GAUSS = 'analytic:gauss:std=0.5,shape=1x2x2'


def test_adaptive_converges_early_on_a_gaussian():
    """Every trajectory of a Gaussian has the same |Q| profile up to a factor: the second estimate does not move."""
    net = load_analytic(GAUSS)
    settings = AdaptiveSettings(q_mode='fd', levels=32, start_samples=2)
    est = adaptive_estimate(net, settings)
    assert est.stop == 'converged' and [h['num_samples'] for h in est.history] == [2, 4]
    assert est.history[-1]['evals'] == 4 * settings.trajectory_cost() < settings.budget
    clock = lambda_clock(est.estimate.sigma, est.estimate.qbar)
    for K in [3, 5, 10]:                             # 32 levels: within 1% of the exact optimum
        np.testing.assert_allclose(clock.grid(K), exact_grid(0.5, 80.0, K), rtol=0.01)


def test_adaptive_stops_at_the_budget_and_reuses_its_trajectories(tmp_path):
    """An unreachable tolerance: doublings 2 -> 4 -> 8, then as many as the budget still holds (3); the estimates
    along the way are those of the first n trajectories, so a smaller budget repeats the first moves exactly."""
    net = load_analytic(f'analytic:gmm:{write_random_gmm(tmp_path / "m.npz", 4, (1, 2, 2), seed=0)}')
    settings = AdaptiveSettings(q_mode='flow', levels=8, start_samples=2, tolerance=1e-12, analytic_budget=11 * 14 + 5)
    est = adaptive_estimate(net, settings)                      # an analytic model: analytic_budget, not budget
    assert est.stop == 'budget' and [h['num_samples'] for h in est.history] == [2, 4, 8, 11]
    assert est.history[-1]['evals'] == 11 * 14 == est.estimate.forward_evals and est.estimate.jvp_evals == 0
    smaller = adaptive_estimate(net, dataclasses.replace(settings, analytic_budget=4 * 14))
    assert smaller.stop == 'budget' and smaller.history == est.history[:2]
    generator = torch.Generator().manual_seed(0)
    q = np.concatenate([trajectory_q(net, *draw_latents(net, 2, generator), smaller.estimate.sigma, 'flow')
                        for _ in range(2)])
    np.testing.assert_allclose(smaller.estimate.qbar, q.mean(axis=0), rtol=1e-12)


def test_adaptive_schedule_provenance_says_why_it_stopped():
    settings = AdaptiveSettings(levels=16, start_samples=1)
    sched = adaptive_schedule(load_analytic(GAUSS), 'analytic:gauss', settings)
    assert sched.method == 'closed-form' and sched.num_steps == 10 and sched.clock is not None
    prov = sched.provenance
    assert prov['estimate']['rule'] == 'adaptive' and prov['estimate']['stop'] == 'converged'
    assert prov['estimate']['settings'] == dataclasses.asdict(settings)
    assert prov['cost']['evals'] == prov['estimate']['history'][-1]['evals'] == 2 * (2 * 15 + 1 + 16)
    assert prov['reference']['num_samples'] == 2 and prov['reference']['levels'] == 16


def test_adaptive_settings_are_checked():
    with pytest.raises(ValueError, match='q_mode'):
        AdaptiveSettings(q_mode='exact')
    with pytest.raises(ValueError, match='budget'):
        AdaptiveSettings(budget=10)


@pytest.mark.parametrize('mode, levels, rtol', [('fd', 32, 1e-5), ('flow', 32, 0.06), ('flow', 64, 0.03)])
def test_q_modes_agree_with_jvp_on_a_gaussian(mode, levels, rtol):
    """fd: the same clock as jvp (a small forward difference); flow: Heun's stages over a whole fine step, first order
    in the step (docs/method.md §5, the estimate's size)."""
    net = load_analytic(GAUSS)
    sigma = fine_levels(net, levels)
    latents, labels = draw_latents(net, 2, torch.Generator().manual_seed(0))
    clocks = [lambda_clock(sigma, trajectory_q(net, latents, labels, sigma, m).mean(axis=0)) for m in ('jvp', mode)]
    for K in [3, 5, 10, 18]:
        np.testing.assert_allclose(clocks[1].grid(K), clocks[0].grid(K), rtol=rtol)
