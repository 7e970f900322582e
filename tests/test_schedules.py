"""art.schedules: the time change, the schedule file and its validation, resampling, named baselines."""
import json
import math

import numpy as np
import pytest

from art.analytic import gauss_w2, load_analytic
from art.schedules import (Clock, Schedule, ScheduleError, baseline_schedule, check_network_fit, clock_from_grid,
                           grid_from_theta, load_schedule, resample_loglinear, save_schedule, theta_from_grid)
from dnnlib.util import UserError

KS = [2, 5, 10, 20, 50, 100]
PAPER_ROWS = {                                  # docs/method.md §9: exact W2 of the 1-D baselines
    ('uniform', 7): [.465, .212, .110, .057, .023, .012],
    ('edm', 7): [.662, .316, .174, .091, .037, .019],
    ('edm', 3): [.411, .192, .101, .052, .021, .011],
}
EDM18 = [80, 57.586, 40.786, 28.375, 19.352, 12.910, 8.4009, 5.3152, 3.2568, 1.9233, 1.0882, 0.58535, 0.29644,
         0.13952, 0.059947, 0.022935, 0.0075280, 0.002, 0]      # docs/edm-compat.md §1.2


def example(**changes) -> Schedule:
    """A learned-looking 5-step schedule with a clock, provenance and metrics."""
    sigmas = np.array([80.0, 7.1, 1.9, 0.6, 0.1, 0.0])
    fields = dict(method='art-rl', sigmas=sigmas, solver='euler', clock=clock_from_grid(sigmas),
                  provenance={'network': 'analytic:gauss1d', 'lambda': 0.1, 'seed': 3}, metrics={'w2': 0.149})
    fields.update(changes)
    return Schedule(**fields)


def write_json(path, data) -> str:
    """Write a JSON object (NaN allowed, as Python writes it) and return the path as a string."""
    path.write_text(json.dumps(data))
    return str(path)


# --- time change -----------------------------------------------------------------------------------------------

def test_uniform_grid_is_unit_speed_and_theta_round_trips():
    np.testing.assert_allclose(theta_from_grid(np.linspace(3, 0, 11)), np.ones(10), rtol=1e-14)
    sigmas = baseline_schedule('edm', 18).sigmas
    theta = theta_from_grid(sigmas)
    assert theta.sum() * (80 / 18) == pytest.approx(80, rel=1e-14)                      # budget, eq. 6
    back = grid_from_theta(theta, 80.0)
    np.testing.assert_allclose(back, sigmas, rtol=1e-12, atol=1e-12)
    assert back[-1] == 0.0


def test_grid_from_theta_normalises_to_the_budget():
    raw = grid_from_theta([2.0, 2.0, 2.0], 3.0, normalise=False)
    np.testing.assert_allclose(raw, [3.0, 1.0, -1.0, -3.0])                               # psi(T) = 2T overshoots
    np.testing.assert_allclose(grid_from_theta([2.0, 2.0, 2.0], 3.0), [3.0, 2.0, 1.0, 0.0], rtol=1e-15)
    with pytest.raises(ValueError):
        grid_from_theta([0.0, 0.0], 3.0)


# --- baselines -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name,rho', list(PAPER_ROWS))
def test_baselines_reproduce_the_paper_1d_rows(name, rho):
    net = load_analytic('analytic:gauss1d')
    kw = {'rho': rho} if name == 'edm' else {}
    row = [round(gauss_w2(baseline_schedule(name, K, net, **kw).sigmas, 1.0), 3) for K in KS]
    assert row == PAPER_ROWS[(name, rho)]
    assert baseline_schedule(name, 4, net, **kw).sigmas[0] == pytest.approx(3.0, rel=1e-15)


def test_image_baselines_follow_upstream():
    edm = baseline_schedule('edm', 18)
    np.testing.assert_allclose(edm.sigmas, EDM18, rtol=5e-5)
    assert edm.method == 'edm' and edm.provenance['discretization'] == 'edm'
    for name in ['vp', 've', 'iddpm', 'uniform', 'logsnr']:
        sched = baseline_schedule(name, 7)
        assert sched.num_steps == 7 and sched.sigmas[-1] == 0 and (np.diff(sched.sigmas) < 0).all()
    np.testing.assert_allclose(baseline_schedule('logsnr', 3).sigmas, [80, 80 * (0.002 / 80) ** 0.5, 0.002, 0])
    with pytest.raises(ValueError, match='discretization'):
        baseline_schedule('cosine', 5)


# --- file ------------------------------------------------------------------------------------------------------

def test_round_trip_is_exact(tmp_path):
    sched = example()
    path = save_schedule(sched, tmp_path / 's.json')
    data = json.loads(path.read_text())
    assert data['format'] == 'edm-art-schedule' and data['version'] == 1 and data['num_steps'] == 5
    back = load_schedule(path)
    assert back.sigmas.tolist() == sched.sigmas.tolist()
    assert back.clock.u.tolist() == sched.clock.u.tolist() and back.clock.sigma.tolist() == sched.clock.sigma.tolist()
    assert (back.method, back.solver, back.provenance, back.metrics) == ('art-rl', 'euler', sched.provenance,
                                                                         sched.metrics)
    assert load_schedule(save_schedule(example(clock=None, solver=None), tmp_path / 'b.json')).clock is None


def test_atomic_save_leaves_no_temporary_file(tmp_path):
    path = tmp_path / 's.json'
    save_schedule(example(), path)
    save_schedule(example(method='closed-form'), path)                                   # replaces
    assert sorted(p.name for p in tmp_path.iterdir()) == ['s.json']
    with pytest.raises(TypeError):
        save_schedule(example(provenance={'bad': object()}), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['s.json']
    assert load_schedule(path).method == 'closed-form'                                   # old file intact


def good() -> dict:
    """A valid schedule-file object."""
    return example().to_dict()


def edited(**changes) -> dict:
    """A schedule-file object with some keys changed."""
    data = good()
    data.update(changes)
    return data


@pytest.mark.parametrize('name,content,words', [
    ('nonmono.json', edited(sigmas=[80, 7.1, 9.0, 0.6, 0.1, 0]), 'strictly descending'),
    ('repeat.json', edited(sigmas=[80, 7.1, 7.1, 0.6, 0.1, 0]), 'strictly descending'),
    ('nan.json', edited(sigmas=[80, 7.1, math.nan, 0.6, 0.1, 0]), 'non-finite'),
    ('inf.json', edited(sigmas=[math.inf, 7.1, 1.9, 0.6, 0.1, 0]), 'non-finite'),
    ('noend.json', edited(sigmas=[80, 7.1, 1.9, 0.6, 0.1, 0.01]), 'end at exactly 0'),
    ('negative.json', edited(sigmas=[-1, -2, -3, -4, -5, 0], num_steps=5), 'positive'),
    ('strings.json', edited(sigmas=['80', 0]), 'list of numbers'),
    ('count.json', edited(num_steps=4), 'num_steps'),
    ('version.json', edited(version=2), 'unsupported version 2'),
    ('format.json', edited(format='k-diffusion'), 'not an edm-art-schedule'),
    ('list.json', [80, 0], 'JSON object'),
    ('clock.json', edited(clock={'u': [0, 0.7, 0.5, 1], 'sigma': [80, 3, 1, 0]}), 'clock.u'),
    ('method.json', edited(method=None), 'method'),
    ('solver.json', edited(solver='eular'), r"solver = 'eular' is not a solver; valid: euler, heun, rk4, dpmpp-2m"),
    ('solver2.json', edited(solver=3), 'solver = 3 is not a solver'),
])
def test_invalid_files_raise_one_line_naming_the_file(tmp_path, name, content, words):
    path = write_json(tmp_path / name, content)
    with pytest.raises(ScheduleError, match=words) as info:
        load_schedule(path)
    message = str(info.value)
    assert message.startswith(path) and '\n' not in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, UserError)


def test_bad_json_and_missing_file(tmp_path):
    (tmp_path / 'bad.json').write_text('{"format": "edm-art-schedule", ')
    with pytest.raises(ScheduleError, match=r'bad.json: not valid JSON \(.* line 1 column'):
        load_schedule(tmp_path / 'bad.json')
    with pytest.raises(ScheduleError, match='missing.json: cannot read'):
        load_schedule(tmp_path / 'missing.json')


def test_step_count_mismatch_needs_resample(tmp_path):
    path = save_schedule(example(), tmp_path / 's.json')
    with pytest.raises(ScheduleError, match=r's.json: schedule has 5 steps but 8 were requested'):
        load_schedule(path, num_steps=8)
    assert load_schedule(path, num_steps=5).num_steps == 5
    resampled = load_schedule(path, num_steps=8, resample=True)
    assert resampled.num_steps == 8 and resampled.metrics == {}
    assert resampled.provenance['resampled']['from_steps'] == 5
    assert resampled.provenance['resampled']['metrics_at_from_steps'] == {'w2': 0.149}
    assert resampled.provenance['seed'] == 3


# --- resampling ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('use_clock', [True, False])
def test_resampling_keeps_endpoints_monotonicity_and_the_same_grid(use_clock):
    sched = baseline_schedule('edm', 18)
    if use_clock:
        sched.clock = clock_from_grid(sched.sigmas)
    assert sched.resample(18).sigmas.tolist() == sched.sigmas.tolist()
    for K in [1, 2, 4, 9, 17, 40, 200]:
        grid = sched.resample(K).sigmas
        assert len(grid) == K + 1 and grid[0] == 80.0 and grid[-1] == 0.0
        assert (np.diff(grid) < 0).all()
    rule = sched.resample(9).provenance['resampled']['rule']
    assert rule.startswith('clock' if use_clock else 'log-linear')


def test_loglinear_rule_is_geometric_between_the_positive_endpoints():
    grid = resample_loglinear(baseline_schedule('logsnr', 10).sigmas, 4)
    np.testing.assert_allclose(grid, [80, 80 * (0.002 / 80) ** (1 / 3), 80 * (0.002 / 80) ** (2 / 3), 0.002, 0])
    assert resample_loglinear([80, 0.002, 0], 1).tolist() == [80.0, 0.0]


def test_clock_resampling_is_exact_on_power_law_clocks():
    """sigma^(1/7) linear in u (an EDM sigma_min = 0 clock) is reproduced at any K by PCHIP in sigma^(1/7)."""
    u = np.linspace(0, 1, 9)
    clock = Clock(u, (80 ** (1 / 7) * (1 - u)) ** 7)
    K = 13
    np.testing.assert_allclose(clock.grid(K), (80 ** (1 / 7) * (1 - np.arange(K + 1) / K)) ** 7, rtol=1e-12)



def test_a_clock_started_lower_keeps_its_spacing_below_the_start():
    u = np.linspace(0, 1, 9)                    # power law: started at S it is EDM's sigma_min = 0 grid from S
    clock = Clock(u, (80 ** (1 / 7) * (1 - u)) ** 7)
    np.testing.assert_allclose(clock.grid(6, sigma_max=25.0), (25 ** (1 / 7) * (1 - np.arange(7) / 6)) ** 7,
                               rtol=1e-10)
    sched = baseline_schedule('edm', 18)        # started at its own level j, K = 18 - j reads its levels j..18
    sched.clock = clock_from_grid(sched.sigmas)
    for j in (3, 9):
        later = sched.resample(18 - j, sigma_max=sched.sigmas[j])
        np.testing.assert_allclose(later.sigmas, sched.sigmas[j:], rtol=1e-9)
        assert later.provenance['resampled']['sigma_max'] == sched.sigmas[j]
    assert sched.resample(18, sigma_max=80.0).sigmas.tolist() == sched.sigmas.tolist()
    with pytest.raises(ValueError, match='runs from sigma 80; it cannot start at 100'):
        sched.resample(5, sigma_max=100.0)
    with pytest.raises(ValueError, match='no clock'):
        baseline_schedule('edm', 18).resample(5, sigma_max=25.0)

def test_schedule_constructor_validates():
    with pytest.raises(ScheduleError, match='strictly descending'):
        Schedule('x', np.array([1.0, 2.0, 0.0]))
    with pytest.raises(ScheduleError, match='clock.u'):
        Clock(np.array([0.0, 0.5]), np.array([3.0, 0.0]))


def test_a_schedule_starting_above_the_network_range_is_refused():
    gauss1d = load_analytic('analytic:gauss1d')                               # sigma_max = T = 3
    with pytest.raises(ScheduleError, match=r'^s.json: the schedule starts at sigma = 80, above the network\'s '
                                            r'highest noise level 3; use a schedule made for this network'):
        check_network_fit(Schedule('edm', [80.0, 1.0, 0.0]), gauss1d, 'analytic:gauss1d', 's.json')
    assert check_network_fit(Schedule('x', [3.0, 1.0, 0.0]), gauss1d, 'analytic:gauss1d', 's.json') is None
    assert check_network_fit(Schedule('x', [3.0 * (1 + 1e-9), 1.0, 0.0]), gauss1d, 'analytic:gauss1d', 's') is None
    edm_net = type('EDMLike', (), {'sigma_max': float('inf')})()              # EDMPrecond: no upper bound
    assert check_network_fit(Schedule('x', [500.0, 1.0, 0.0]), edm_net, 'net.pkl', 's.json') is None


@pytest.mark.parametrize('start, sigma_max, note', [
    (3.0, float('inf'), True),     # a gauss1d grid (T = 3) on an EDM pickle, which starts at 80
    (7.9, float('inf'), True),
    (8.0, float('inf'), False),    # within FAR_BELOW = 10 of 80
    (0.2, 3.0, True),              # gauss1d's own T = 3
    (0.3, 3.0, False),
])
def test_a_schedule_starting_far_below_the_network_range_gets_a_note(start, sigma_max, note):
    net = type('Net', (), {'sigma_max': sigma_max})()
    text = check_network_fit(Schedule('x', [start, start / 100, 0.0]), net, 'net.pkl', 's.json')
    assert (text is not None) == note
    if note:
        assert text.startswith(f's.json starts at sigma = {start:g}, far below the network\'s starting level')


@pytest.mark.parametrize('made_for, used_on, note', [
    ('analytic:gmm:assets/fmnist-gmm.npz', 'analytic:gmm:/elsewhere/assets/fmnist-gmm.npz', False),   # same file
    ('runs/network-snapshot-001000.pkl', '/abs/runs/network-snapshot-001000.pkl', False),
    ('analytic:gauss:std=0.5,shape=1x4x4', 'analytic:gauss:std=0.5,shape=1x4x4', False),
    ('analytic:gauss:std=2,shape=1x4x4', 'analytic:gauss:std=0.5,shape=1x4x4', True),             # other data
    ('analytic:gmm:a.npz', 'analytic:gmm:b.npz', True),
    ('analytic:gauss1d', 'net.pkl', True),
    (None, 'net.pkl', False),                                                    # nothing recorded: nothing to say
])
def test_a_schedule_made_for_another_network_gets_a_note(made_for, used_on, note):
    net = type('EDMLike', (), {'sigma_max': float('inf')})()
    provenance = {} if made_for is None else {'network': made_for}
    text = check_network_fit(Schedule('x', [80.0, 1.0, 0.0], provenance=provenance), net, used_on, 's.json')
    assert (text is not None) == note
    if note:
        assert text.startswith(f's.json was made for {made_for}, not {used_on}')
