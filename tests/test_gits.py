"""art.gits: dynamic programming over a teacher grid, checked by brute force and exact Gaussian jumps."""
import itertools

import numpy as np
import pytest
import torch

from art.analytic import load_analytic, write_random_gmm
from art.latents import training_latents
from art.gits import gits_schedule, jump_costs, min_cost_path, teacher_grid
from art.metrics import reference_endpoints, rms_error
from art.schedules import load_schedule, save_schedule
from edm import grids
from edm.sampler import sample

NUM = 64


@pytest.fixture(scope='module')
def gmm(tmp_path_factory):
    """A random 8-component mixture on 1x4x4 images."""
    path = write_random_gmm(tmp_path_factory.mktemp('gmm') / 'mix.npz', k=8, shape=(1, 4, 4), seed=3)
    return load_analytic(f'analytic:gmm:{path}')


def brute_force(cost, num_steps):
    """Cheapest path 0 -> L-1 with exactly K jumps, by enumerating every set of K-1 interior levels."""
    last = cost.shape[0] - 1
    paths = [(0, *inner, last) for inner in itertools.combinations(range(1, last), num_steps - 1)]
    totals = [sum(cost[a, b] for a, b in zip(p, p[1:])) for p in paths]
    return list(paths[int(np.argmin(totals))]), min(totals)


@pytest.mark.parametrize('seed', range(5))
def test_dp_matches_brute_force_on_random_costs(seed):
    cost = np.random.default_rng(seed).random((8, 8))
    for num_steps in range(1, 8):
        path, total = min_cost_path(cost, num_steps)
        expected_path, expected_total = brute_force(cost, num_steps)
        assert path == expected_path and total == pytest.approx(expected_total, rel=1e-12)


@pytest.mark.parametrize('solver', ['euler', 'heun'])
def test_dp_matches_brute_force_on_teacher_costs(gmm, solver):
    latents, _ = training_latents(gmm, 16, 0, torch.device('cpu'))
    cost, _ = jump_costs(gmm, teacher_grid(gmm, 7), latents, None, solver)          # 8 levels
    assert np.isinf(cost[np.tril_indices(8)]).all() and np.isfinite(cost[np.triu_indices(8, k=1)]).all()
    path, total = min_cost_path(cost, 3)
    assert (path, pytest.approx(total, rel=1e-12)) == brute_force(cost, 3)


def test_dp_rejects_impossible_step_counts():
    with pytest.raises(ValueError):
        min_cost_path(np.zeros((4, 4)), 4)


@pytest.mark.parametrize('solver', ['euler', 'heun'])
def test_jump_costs_exact_on_a_gaussian(solver):
    """For N(0, c^2 I) every step is a scalar factor: cost[i, j] = E|x_0|^2 (g_j - step_ij g_i)^2 in closed form."""
    c2 = 0.25
    net = load_analytic('analytic:gauss:std=0.5,shape=1x4x4')
    s = teacher_grid(net, 6)
    latents, _ = training_latents(net, 8, 0, torch.device('cpu'))
    cost, evals = jump_costs(net, s, latents, None, solver, batch_size=5)        # batches of 5, 3 latents

    def rate(sigma):
        return sigma / (c2 + sigma ** 2)                     # f(x, sigma) = rate(sigma) x

    def step(i, j, heun):
        h = s[j] - s[i]
        euler = 1 + h * rate(s[i])
        return 1 + 0.5 * h * (rate(s[i]) + rate(s[j]) * euler) if heun and s[j] > 0 else euler

    gains = [1.0]
    for i in range(len(s) - 1):
        gains.append(gains[-1] * step(i, i + 1, True))        # the Heun teacher
    x0_sq = (latents * s[0]).flatten(1).square().sum(1).mean().item()
    for i, j in itertools.combinations(range(len(s)), 2):
        expected = x0_sq * (gains[j] - step(i, j, solver == 'heun') * gains[i]) ** 2
        assert cost[i, j] == pytest.approx(expected, rel=1e-9, abs=1e-24)
    F = len(s) - 1
    assert evals == 8 * ((2 * F - 1) + (F * (F - 1) // 2 if solver == 'heun' else 0))


def test_fine_grid_of_k_steps_is_returned_as_is(gmm):
    sched = gits_schedule(gmm, 5, fine_steps=5, num_latents=4)
    np.testing.assert_array_equal(sched.sigmas, grids.make_sigmas('edm', 5, net=gmm))
    assert sched.provenance['path'] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize('solver', ['euler', 'heun'])
def test_gits_valid_round_trips_and_beats_edm(gmm, solver, tmp_path):
    sched = gits_schedule(gmm, 5, network='gmm', solver=solver, fine_steps=60, num_latents=NUM)
    s = sched.sigmas
    assert sched.method == 'gits' and sched.solver == solver and len(s) == 6
    assert s[0] == 80.0 and s[-1] == 0.0 and (np.diff(s) < 0).all()
    assert set(s) <= set(teacher_grid(gmm, 60))
    back = load_schedule(save_schedule(sched, tmp_path / 'gits.json'))
    np.testing.assert_array_equal(back.sigmas, s)
    assert back.provenance == sched.provenance and back.method == 'gits'
    per_latent = 2 * 60 - 1 + (60 * 59 // 2 if solver == 'heun' else 0)
    assert sched.provenance['cost']['forward_evals'] == NUM * per_latent

    latents, _ = training_latents(gmm, NUM, 0, torch.device('cpu'))     # held out: the benchmark's seeds
    reference = reference_endpoints(gmm, latents, 80.0)
    edm = grids.make_sigmas('edm', 5, net=gmm)
    rms_gits = rms_error(sample(gmm, latents, s, solver=solver), reference)
    rms_edm = rms_error(sample(gmm, latents, edm, solver=solver), reference)
    assert rms_gits < 0.8 * rms_edm
