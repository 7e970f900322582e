"""art/methods.py: the one registry of schedule methods and the maker of those that need no run directory."""
import numpy as np
import pytest

from art.analytic import load_analytic
from art.methods import MAKER_METHODS, METHODS, ScheduleMaker


def test_registry_names_every_method_once():
    assert list(METHODS) == ['art-rl', 'closed-form', 'direct', 'gits']
    assert MAKER_METHODS == ('closed-form', 'direct', 'gits')       # art-rl needs a run directory (art/train.py)
    with pytest.raises(ValueError, match='closed-form, direct, gits'):
        ScheduleMaker('art-rl', load_analytic('analytic:gauss1d'), 'analytic:gauss1d')


def test_maker_makes_each_k_once_and_the_closed_form_clock_once():
    net = load_analytic('analytic:gauss1d')
    maker = ScheduleMaker('closed-form', net, 'analytic:gauss1d', options=dict(num_samples=16, fine_steps=64))
    k5, k3 = maker(5), maker(3)
    assert maker(5) is k5 and k5.method == 'closed-form' and len(k5.sigmas) == 6 and len(k3.sigmas) == 4
    # One estimate of E|Q| serves every K: both grids are read off the same clock.
    np.testing.assert_array_equal(k5.clock.sigma, k3.clock.sigma)
    gits = ScheduleMaker('gits', net, 'analytic:gauss1d', solver='euler', options=dict(num_latents=8))(3)
    assert gits.method == 'gits' and gits.sigmas[-1] == 0 and np.all(np.diff(gits.sigmas) < 0)


def test_a_closed_form_made_earlier_stands_in_for_the_estimate(monkeypatch):
    import art.methods
    net = load_analytic('analytic:gauss1d')
    made = ScheduleMaker('closed-form', net, 'analytic:gauss1d', options=dict(num_samples=16, fine_steps=64))(18)
    monkeypatch.setattr(art.methods, 'closed_form_schedule', lambda *a, **k: pytest.fail('estimated again'))
    maker = ScheduleMaker('closed-form', net, 'analytic:gauss1d', clock=made)
    for k in (3, 5, 18):                                   # read off the given clock at every K, as a file resamples
        np.testing.assert_array_equal(maker(k).sigmas, made.resample(k).sigmas)
    assert maker(5).provenance['resampled']['from_steps'] == 18
    gits = ScheduleMaker('gits', net, 'analytic:gauss1d', options=dict(num_latents=4))(3)
    for method, clock in (('gits', made), ('closed-form', gits)):
        with pytest.raises(ValueError, match='only a closed-form schedule with a clock'):
            ScheduleMaker(method, net, 'analytic:gauss1d', clock=clock)


def test_solver_specific_methods_refuse_other_solvers():
    net = load_analytic('analytic:gauss1d')
    for method in ('direct', 'gits'):
        with pytest.raises(ValueError, match=f'{method} makes grids for the euler and heun solvers, not rk4'):
            ScheduleMaker(method, net, 'analytic:gauss1d', solver='rk4')
    assert ScheduleMaker('closed-form', net, 'analytic:gauss1d', solver='dpmpp-2m').solver == 'dpmpp-2m'


def test_direct_starts_from_the_closed_form_and_gits_by_default():
    net = load_analytic('analytic:gauss:std=0.5,shape=1x2x2')
    maker = ScheduleMaker('direct', net, 'gauss', options=dict(num_latents=16, num_holdout=16, iters=0))
    assert [m.method for m in maker.warm_start] == ['closed-form', 'gits']
    candidates = maker(3).provenance['init']['candidates_training_rms']
    assert {'closed-form', 'gits'} <= set(candidates)
    assert ScheduleMaker('direct', net, 'gauss', options=dict(warm_start=[])).warm_start == []


def test_gits_table_is_computed_once_for_every_k(monkeypatch):
    import art.gits
    calls = []
    original = art.gits.jump_costs
    monkeypatch.setattr(art.gits, 'jump_costs', lambda *a, **k: calls.append(1) or original(*a, **k))
    net = load_analytic('analytic:gauss1d')
    maker = ScheduleMaker('gits', net, 'analytic:gauss1d', options=dict(num_latents=8, fine_steps=40))
    k3, k5 = maker(3), maker(5)
    assert len(calls) == 1 and k3.provenance['cost'] == k5.provenance['cost']
    fresh = art.gits.gits_schedule(net, 5, network='analytic:gauss1d', num_latents=8, fine_steps=40)
    np.testing.assert_array_equal(k5.sigmas, fresh.sigmas)              # same table, same shortest path
