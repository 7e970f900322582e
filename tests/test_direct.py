"""art.direct: the LD3-style grid learned by gradient descent through the sampler, on analytic models."""
import numpy as np
import pytest
import torch

from art.analytic import load_analytic, write_random_gmm
from art.closed_form import closed_form_schedule
from art.direct import converged, direct_schedule, grid_from_logits, logits_from_grid, rollout
from art.latents import TRAIN_SEED_BASE, training_latents
from art.metrics import reference_endpoints, rms_error
from art.schedules import load_schedule, save_schedule
from edm import grids
from edm.sampler import nfe, sample

NUM = 64      # latents, training and held-out


@pytest.fixture(scope='module')
def gmm(tmp_path_factory):
    """A random 8-component mixture on 1x4x4 images."""
    path = write_random_gmm(tmp_path_factory.mktemp('gmm') / 'mix.npz', k=8, shape=(1, 4, 4), seed=3)
    return load_analytic(f'analytic:gmm:{path}')


def held_out_rms(net, sigmas, solver, first_seed=0):
    """rms endpoint error on the benchmark's latents (seeds first_seed.., disjoint from the training seeds)."""
    latents, _ = training_latents(net, NUM, first_seed, torch.device('cpu'))
    reference = reference_endpoints(net, latents, float(sigmas[0]))
    return rms_error(sample(net, latents, sigmas, solver=solver), reference)


@pytest.mark.parametrize('solver', ['euler', 'heun'])
def test_rollout_is_the_sampler(gmm, solver):
    latents, _ = training_latents(gmm, 8, 5, torch.device('cpu'))
    sigmas = grids.make_sigmas('edm', 6, net=gmm)
    x = rollout(gmm, latents, torch.from_numpy(sigmas), None, solver)
    assert torch.equal(x, sample(gmm, latents, sigmas, solver=solver))


def test_parametrisation_round_trips_and_stays_valid():
    sigmas = grids.edm_sigmas(7, 0.002, 80.0)
    np.testing.assert_allclose(grid_from_logits(logits_from_grid(sigmas), 80.0).numpy(), sigmas, rtol=1e-12)
    z = torch.tensor([5.0, -3.0, 0.0, 9.0, -8.0], dtype=torch.float64)       # any logits: a valid grid
    grid = grid_from_logits(z, 80.0).numpy()
    assert len(grid) == 6 and grid[0] == 80.0 and grid[-1] == 0.0 and (np.diff(grid) < 0).all()


@pytest.fixture(scope='module')
def euler_k5(gmm):
    """Direct at K=5, Euler, from the plain EDM grid (no scan of starts)."""
    return direct_schedule(gmm, 5, network='gmm', num_latents=NUM, iters=120, lr=0.05, init_sigma_mins=(0.002,),
                           num_holdout=NUM)


def test_direct_is_a_valid_schedule_and_round_trips(euler_k5, tmp_path):
    s = euler_k5
    assert s.method == 'direct' and s.solver == 'euler' and s.num_steps == 5 and len(s.sigmas) == 6
    assert s.sigmas[0] == 80.0 and s.sigmas[-1] == 0.0 and (np.diff(s.sigmas) < 0).all()
    # The clock passes through the grid's own levels: sigma -> sigma^(1/7) -> PCHIP at its knots -> ^7, two pows.
    np.testing.assert_array_max_ulp(s.clock.grid(5), s.sigmas, maxulp=4)
    back = load_schedule(save_schedule(s, tmp_path / 'direct.json'))
    np.testing.assert_array_equal(back.sigmas, s.sigmas)
    assert back.method == 'direct' and back.provenance == s.provenance and back.metrics == s.metrics
    cost = s.provenance['cost']
    # start, iterations, final; held out: the start, iterations 10, 20, ..., 110 and the final iterate
    assert cost['forward_evals'] == (1 + 120 + 1 + 1 + 11 + 1) * NUM * nfe(5, 'euler')
    assert cost['backward_evals'] == 120 * NUM * nfe(5, 'euler') and cost['cpu_seconds'] > 0
    assert s.provenance['latents']['seeds'] == f'{TRAIN_SEED_BASE}-{TRAIN_SEED_BASE + NUM - 1}'


def test_direct_lowers_training_rms_and_beats_edm_held_out(gmm, euler_k5):
    edm = grids.make_sigmas('edm', 5, net=gmm)
    train_edm = held_out_rms(gmm, edm, 'euler', first_seed=TRAIN_SEED_BASE)     # the start, recomputed
    assert euler_k5.metrics['train_rms_start'] == pytest.approx(train_edm, rel=1e-9)
    assert euler_k5.metrics['train_rms'] == pytest.approx(
        held_out_rms(gmm, euler_k5.sigmas, 'euler', first_seed=TRAIN_SEED_BASE), rel=1e-9)
    assert euler_k5.metrics['train_rms'] < 0.8 * train_edm
    assert held_out_rms(gmm, euler_k5.sigmas, 'euler') < 0.8 * held_out_rms(gmm, edm, 'euler')
    # The returned iterate is the best of the scored ones on its own held-out latents (the seeds after training's).
    holdout = euler_k5.provenance['holdout']
    assert holdout['seeds'] == f'{TRAIN_SEED_BASE + NUM}-{TRAIN_SEED_BASE + 2 * NUM - 1}'
    starts = euler_k5.provenance['init']['candidates_holdout_rms']
    assert euler_k5.metrics['holdout_rms'] == pytest.approx(
        min(min(holdout['loss_history']) ** 0.5, *starts.values()), rel=1e-12)
    assert euler_k5.metrics['holdout_rms_start'] == starts['edm sigma_min=0.002']
    assert euler_k5.metrics['holdout_rms'] == pytest.approx(
        held_out_rms(gmm, euler_k5.sigmas, 'euler', first_seed=TRAIN_SEED_BASE + NUM), rel=1e-9)
    assert euler_k5.metrics['holdout_rms'] < euler_k5.metrics['holdout_rms_start']


def test_scanned_start_is_at_least_as_good_heun(gmm):
    plain = direct_schedule(gmm, 3, solver='heun', num_latents=NUM, iters=60, init_sigma_mins=(0.002,),
                            num_holdout=NUM)
    scanned = direct_schedule(gmm, 3, solver='heun', num_latents=NUM, iters=60, num_holdout=NUM)
    assert scanned.metrics['train_rms_start'] <= plain.metrics['train_rms_start']
    assert scanned.metrics['train_rms'] < plain.metrics['train_rms_start']
    edm = grids.make_sigmas('edm', 3, net=gmm)
    assert held_out_rms(gmm, scanned.sigmas, 'heun') < 0.5 * held_out_rms(gmm, edm, 'heun')


@pytest.mark.parametrize('num_steps', [3, 5])
def test_direct_no_worse_than_closed_form_on_a_gaussian(num_steps):
    """It optimises the endpoint error itself, which the closed form (a local-error optimum) does not."""
    net = load_analytic('analytic:gauss:std=0.5,shape=1x4x4')
    closed = closed_form_schedule(net, num_steps, num_samples=8, fine_steps=128)
    direct = direct_schedule(net, num_steps, num_latents=16, iters=100, num_holdout=16)
    assert held_out_rms(net, direct.sigmas, 'euler') <= held_out_rms(net, closed.sigmas, 'euler')


def test_warm_start_from_given_grids(gmm):
    """A given grid better than every EDM start becomes the start; the result is no worse on the training set."""
    good = direct_schedule(gmm, 3, num_latents=NUM, iters=60, num_holdout=NUM)
    warm = direct_schedule(gmm, 3, num_latents=NUM, iters=0, init_sigma_mins=(0.002,), num_holdout=NUM,
                           init_grids={'learned': good.sigmas})
    assert warm.provenance['init']['start'] == 'learned'
    np.testing.assert_allclose(warm.sigmas, good.sigmas, rtol=1e-12)
    assert warm.metrics['train_rms'] == pytest.approx(good.metrics['train_rms'], rel=1e-9)
    with pytest.raises(ValueError, match='steps'):
        direct_schedule(gmm, 3, num_latents=NUM, iters=0, num_holdout=NUM,
                        init_grids={'k5': grids.make_sigmas('edm', 5, net=gmm)})


def test_never_worse_held_out_than_a_candidate_start(gmm):
    """A warm start that no iterate beats on the held-out latents is returned as it is: with a learning rate that
    throws Adam far off, every iterate is worse held out than the given grid, so direct returns that grid."""
    good = direct_schedule(gmm, 3, num_latents=NUM, iters=60, num_holdout=NUM)
    wild = direct_schedule(gmm, 3, num_latents=NUM, iters=5, lr=50.0, eval_every=1, init_sigma_mins=(0.002,),
                           num_holdout=NUM, init_grids={'given': good.sigmas})
    assert wild.provenance['holdout']['returned'] == 'start given'
    assert min(wild.provenance['holdout']['loss_history']) > wild.metrics['holdout_rms'] ** 2
    np.testing.assert_array_equal(wild.sigmas[1:-1], grid_from_logits(logits_from_grid(good.sigmas), 80.0)[1:-1])
    assert wild.metrics['holdout_rms'] == pytest.approx(
        held_out_rms(gmm, good.sigmas, 'euler', first_seed=TRAIN_SEED_BASE + NUM), rel=1e-9)


def test_converged_rule():
    """Converged once the lowest training loss fell by less than the fraction tol over the last window iterations."""
    flat = [4.0, 3.0, 2.0, 1.0, 1.0, 0.9995, 1.2, 1.0]
    assert converged(flat, 4, 1e-3)                         # 1.0 -> 0.9995 over the last 4: 0.05%
    assert not converged(flat, 4, 1e-4)
    assert not converged(flat[:7], 4, 1e-3)                 # fewer than 2 windows
    assert not converged([1.0] * 20, 4, 0.0)                # tol = 0: never
    assert not converged([4.0, 3.0, 2.0, 1.0, 0.9, 0.8, 0.7, 0.6], 4, 1e-3)


def test_direct_stops_when_converged_and_records_why(gmm):
    s = direct_schedule(gmm, 3, num_latents=16, num_holdout=16, iters=400, eval_every=5, window=10, tol=1e-2,
                        init_sigma_mins=(0.5,))
    stop, iterations = s.provenance['stop'], s.provenance['iterations']
    assert stop['reason'] == 'converged' and stop['cap'] == 400 and '10 iterations' in stop['rule']
    assert 20 <= iterations < 400 and iterations % 5 == 0     # stops at a scored iterate, after 2 windows
    assert s.provenance['cost']['backward_evals'] == (iterations + 1) * 16 * nfe(3, 'euler')
    assert len(s.provenance['holdout']['loss_history']) == iterations // 5    # no extra final scoring


def test_direct_respects_the_cap(gmm):
    """tol = 0 never converges: the fit runs the cap, whatever the window."""
    s = direct_schedule(gmm, 3, num_latents=16, num_holdout=16, iters=30, window=1, tol=0.0, init_sigma_mins=(0.5,))
    assert s.provenance['stop']['reason'] == 'cap' and s.provenance['iterations'] == 30
    assert s.provenance['cost']['backward_evals'] == 30 * 16 * nfe(3, 'euler')
    with pytest.raises(ValueError, match='tol'):
        direct_schedule(gmm, 3, num_latents=16, num_holdout=16, iters=30, tol=1.0)
