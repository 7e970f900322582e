"""Tests of art/rl.py, the part both ART-RL learners share: determinism, exact resume, ranks, failures, snapshots."""
import copy

import pytest
import torch

from art.analytic import load_analytic
from art.rl import ARTDivergence
from art.rl_progress import ProgressConfig, ProgressLearner
from art.rl_time import TimeConfig, TimeLearner

LEARNERS = {'time': TimeLearner, 'progress': ProgressLearner, 'progress-pool': ProgressLearner}
SMALL = {'time': dict(steps=3, batch=2, distill_size=5, variance_reduction=True),
         'progress': dict(steps=2, train_steps=6, batch=2, distill_size=5),
         'progress-pool': dict(steps=2, train_steps=6, batch=2, distill_size=5, pool=8)}    # replayed densities


@pytest.fixture(scope='module')
def gauss1d():
    torch.set_num_threads(1)
    return load_analytic('analytic:gauss1d')


def train(net, form: str, iters: int, **kw):
    learner = LEARNERS[form](net, LEARNERS[form].Config(**dict(SMALL[form], **kw)))
    for _ in range(iters):
        learner.step()
    return learner


@pytest.mark.parametrize('form', ['time', 'progress', 'progress-pool'])
def test_two_runs_are_identical_and_resume_is_exact(gauss1d, tmp_path, form):
    a = train(gauss1d, form, 6)
    torch.save(train(gauss1d, form, 3).state_dict(), tmp_path / 'snap.pt')
    c = LEARNERS[form](gauss1d, LEARNERS[form].Config(**SMALL[form]))
    c.load_state_dict(torch.load(tmp_path / 'snap.pt', weights_only=True))
    for _ in range(3):
        c.step()
    d = train(gauss1d, form, 6)
    for other in (c, d):
        assert other.distill() == a.distill() and other.gamma == a.gamma and other.iteration == 6
        for p, q in zip(a.actor.state_dict().values(), other.actor.state_dict().values()):
            assert torch.equal(p, q)
    assert train(gauss1d, form, 6, seed=1).distill() != a.distill()


def test_snapshot_of_other_configuration_is_refused(gauss1d):
    state = TimeLearner(gauss1d, TimeConfig(steps=3)).state_dict()
    with pytest.raises(ValueError, match='lam'):
        TimeLearner(gauss1d, TimeConfig(steps=3, lam=0.3)).load_state_dict(state)
    TimeLearner(gauss1d, TimeConfig(steps=3, iters=7)).load_state_dict(state)       # the run length may change
    with pytest.raises(ValueError, match='different configuration'):              # another learner's snapshot
        ProgressLearner(gauss1d, ProgressConfig(steps=3)).load_state_dict(state)


def test_a_learner_takes_only_its_own_config(gauss1d):
    with pytest.raises(TypeError, match='TimeConfig'):
        TimeLearner(gauss1d, ProgressConfig())
    with pytest.raises(TypeError, match='ProgressConfig'):
        ProgressLearner(gauss1d, TimeConfig())


@pytest.mark.parametrize('form', ['time', 'progress', 'progress-pool'])
def test_two_ranks_equal_one_process_with_twice_the_batch(gauss1d, form):
    """Ranks average gradients, gamma increment and statistics through the hook: 2 x b equals 1 x 2b (with a replay
    pool the ranks replay the same trajectories as the single process: the global batch index decides)."""
    cfg = dict(steps=3, batch=2, lr=3e-3, gamma_lr=3e-3, variance_reduction=True) if form == 'time' else \
        dict(steps=3, batch=2, train_steps=5)
    single = train(gauss1d, form, 2, **dict(cfg, batch=4))
    ranks = [LEARNERS[form](gauss1d, LEARNERS[form].Config(**dict(SMALL[form], **cfg)), rank=r, world=2)
             for r in (0, 1)]

    class Hook:
        """An all-reduce: calls already agreed return the average; the first new call is recorded (probing)."""
        def __init__(self, known):
            self.known, self.calls, self.new = known, 0, None

        def __call__(self, v):
            self.calls += 1
            if self.calls <= len(self.known):
                return self.known[self.calls - 1]
            self.new = v if self.new is None else self.new
            return v

    for _ in range(2):
        known = []                               # the averages of one step's reduce calls, found call by call
        while True:                              # (a later call may depend on an earlier average)
            new = []
            for learner in ranks:
                probe = copy.deepcopy(learner)
                probe.reduce = Hook(known)
                probe.step()
                new.append(probe.reduce.new)
            if new[0] is None:
                break
            known.append((new[0] + new[1]) / 2)
        for learner in ranks:
            learner.reduce = Hook(known)
            learner.step()
    for learner in ranks:
        assert learner.gamma == pytest.approx(single.gamma, rel=1e-12)
        for p, q in zip(single.actor.parameters(), learner.actor.parameters()):   # (progress: the actor's output
            assert torch.allclose(p, q, rtol=1e-9, atol=1e-12 if form == 'time' else 1e-8)  # bias is a gauge, ~1e-10)


class NaNNet(torch.nn.Module):
    """A network that returns NaN: the learner must stop with ARTDivergence and keep its last good state."""
    sigma_max, sigma_min, img_channels, img_resolution, label_dim = 3.0, 0.0, 1, 1, 0

    def forward(self, x, sigma, class_labels=None):
        return torch.full_like(x, float('nan'))


@pytest.mark.parametrize('form', ['time', 'progress'])
def test_nan_raises_and_keeps_state(form):
    learner = LEARNERS[form](NaNNet(), LEARNERS[form].Config(**SMALL[form]))
    before = copy.deepcopy(learner.state_dict())
    with pytest.raises(ARTDivergence):
        learner.step()
    assert learner.iteration == 0
    for p, q in zip(before['actor'].values(), learner.state_dict()['actor'].values()):
        assert torch.equal(p, q)
    with pytest.raises(RuntimeError, match='nothing to distill'):
        learner.distill()


@pytest.mark.parametrize('config', [TimeConfig, ProgressConfig])
def test_shared_settings_are_validated(config):
    for bad in (dict(distill='median'), dict(steps=0), dict(batch=0), dict(distill_size=0), dict(eps=0.0),
                dict(rho=0.5)):
        with pytest.raises(ValueError):
            config(**bad)
