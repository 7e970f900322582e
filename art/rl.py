"""ART-RL, the part its two learners share: clock, networks, per-trajectory randomness, update, distillation, snapshots.

ART-RL learns the clock speed theta = dpsi/dt of an Euler sampler by actor-critic RL (docs/method.md §6).  Two
learners build on `Learner`:

- `art.rl_time.TimeLearner`: the paper's actor-critic on a uniform grid of the clock t (the 'paper' preset);
- `art.rl_progress.ProgressLearner`: the same control problem written with the progress psi as the independent
  variable and learned on a fine psi-grid (the 'images' preset); docs/art-rl.md derives it and says why.

Both roll out trajectories of the frozen network, average gradients and statistics over processes through one
`reduce` hook, keep the normalised clock speeds of their last trajectories in a ring buffer and distil a sigma grid
from the buffer's mean.  Every trajectory draws its initial noise, class label and policy noise from its own generator
seeded by (seed, iteration, global trajectory index), so a learner's state is a function of (seed, iteration) and
does not depend on the number of processes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar, Optional

import numpy as np
import torch
from torch import nn

from edm import grids

Reduce = Callable[[torch.Tensor], torch.Tensor]  # averages a flat float64 vector across processes


class ARTDivergence(FloatingPointError):
    """Raised when a rollout or an update produces NaN or inf; the learner's state is left at the last good step."""


@dataclasses.dataclass(kw_only=True)
class LearnerConfig:
    """Settings both learners have; each learner's config adds its own and sets its defaults."""
    steps: int = 100                 # K of the distilled grid (the deployed K)
    lr: float = 1e-4                 # Adam learning rate, actor and critic
    betas: tuple[float, float] = (0.9, 0.999)
    width: int = 128                 # hidden width of the 3-layer Softplus MLPs
    iters: int = 5000                # iterations, recorded for provenance (the caller runs the loop)
    batch: int = 1                   # trajectories per process per iteration
    rho: float = 1.0                 # clock sigma = (U - psi)**rho, U = T**(1/rho) (docs/method.md eq. M8)
    eps: float = 1e-6                # floor on |Q|
    sigma_floor: float = 0.002       # the field is evaluated at max(sigma, sigma_floor) (docs/method.md §8)
    precondition: bool = False       # scale each step's actor direction by its curvature (each learner says how)
    distill: str = 'mean'            # 'mean': the policy mean (Thm 3.2); 'executed': the sampled theta
    distill_size: int = 1000         # trajectories kept for distillation (ring buffer)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.distill not in ('mean', 'executed'):
            raise ValueError(f"distill must be 'mean' or 'executed', not {self.distill!r}")
        if self.steps < 1 or self.batch < 1 or self.distill_size < 1 or self.width < 1:
            raise ValueError('steps, batch, width and distill_size must be positive')
        if not (self.eps > 0 and self.rho >= 1):
            raise ValueError('eps must be positive and rho >= 1')
        self.betas = tuple(self.betas)

    @property
    def grid_steps(self) -> int:
        """Steps of the training grid."""
        raise NotImplementedError

    def form(self) -> str:
        """Which form of the control problem is learned, and how, in one line for the provenance."""
        raise NotImplementedError

    def feature_names(self) -> list[str]:
        """What the actor sees, for the provenance."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """Plain-JSON form for the schedule file's provenance."""
        return dict(dataclasses.asdict(self), betas=list(self.betas), algorithm='ART-RL', form=self.form(),
                    features=self.feature_names(), clock=f'sigma = (U - psi)**{self.rho}, U = sigma_max**(1/rho)',
                    train_grid=self.grid_steps, deployed_steps=self.steps)


class PowerClock:
    """The time change sigma = Phi(U - psi), Phi(u) = u**rho, U = T**(1/rho) (docs/method.md eq. M8)."""

    def __init__(self, sigma_max: float, rho: float):
        self.rho = rho
        self.U = sigma_max ** (1.0 / rho)

    def sigma(self, psi: torch.Tensor) -> torch.Tensor:
        """Noise level reached at progress psi (psi outside [0, U] is held at the ends)."""
        return (self.U - psi).clamp(0.0, self.U) ** self.rho

    def speed2(self, sigma: torch.Tensor) -> torch.Tensor:
        """(dsigma/du)**2 = (rho sigma**((rho-1)/rho))**2: turns the sigma-form |Q| into the clock's (eq. M9)."""
        return (self.rho * sigma ** ((self.rho - 1.0) / self.rho)) ** 2


def mlp(n_in: int, width: int, generator: torch.Generator) -> nn.Sequential:
    """3-layer Softplus MLP (the paper's actor and critic) with a scalar output whose last layer starts at zero."""
    net = nn.Sequential(nn.Linear(n_in, width), nn.Softplus(), nn.Linear(width, width), nn.Softplus(),
                        nn.Linear(width, 1)).double()
    with torch.no_grad():
        for layer in net[:-1]:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
        net[-1].weight.zero_()
        net[-1].bias.zero_()
    return net


def trajectory_generator(seed: int, iteration: int, index: int) -> torch.Generator:
    """Generator of one trajectory, seeded from (seed, iteration, global trajectory index)."""
    state = np.random.SeedSequence([seed, iteration, index]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


class Learner:
    """Actor, critic, gamma and distillation buffer of ART-RL for one frozen network; `step()` is one iteration.

    A subclass sets `Config`, builds its actor (`make_actor`), and implements `step` and `schedule`.
    """

    Config: ClassVar[type[LearnerConfig]] = LearnerConfig
    budget_stat: ClassVar[str] = 'psi_T_mean'   # the stats entry that is 1 when the time budget is spent exactly

    def __init__(self, net, cfg: LearnerConfig, rank: int = 0, device: torch.device | str = 'cpu',
                 reduce: Optional[Reduce] = None, world: int = 1):
        if not isinstance(cfg, self.Config):
            raise TypeError(f'{type(self).__name__} needs a {self.Config.__name__}, not a {type(cfg).__name__}')
        self.net, self.cfg, self.rank, self.device = net, cfg, rank, torch.device(device)
        self.reduce, self.world = reduce, world
        self.T = grids.horizon(net)                                              # T = 80 for EDM networks
        self.clock = PowerClock(self.T, cfg.rho)
        self.grid_steps = cfg.grid_steps
        self.shape = (net.img_channels, net.img_resolution, net.img_resolution)
        init = torch.Generator().manual_seed(cfg.seed)
        self.actor = self.make_actor(init).to(self.device)                      # the actor draws first, then the critic
        self.critic = mlp(2, cfg.width, init).to(self.device)
        self.opt_actor = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.gamma: Optional[float] = None                                       # the budget's multiplier, per learner
        self.iteration = 0
        self.buffer = torch.zeros(cfg.distill_size, self.grid_steps, dtype=torch.float64)
        self.buffer_count = 0

    def make_actor(self, generator: torch.Generator) -> nn.Module:
        """The actor network, initialised from `generator`."""
        raise NotImplementedError

    def step(self) -> dict:
        """One iteration: rollout, updates; returns the iteration's statistics (averaged over processes)."""
        raise NotImplementedError

    def trajectories(self, iters: int) -> int:
        """Trajectories whose rollouts `iters` iterations simulate, all processes together (for the cost)."""
        return iters * self.cfg.batch * self.world

    def network_evals(self, iters: int) -> dict:
        """Network evaluations of `iters` iterations, all processes: a forward pass and a JVP per rollout level."""
        evals = self.trajectories(iters) * self.grid_steps
        return dict(forward_evals=evals, jvp_evals=evals)

    def schedule(self, mean: torch.Tensor, num_steps: int) -> dict:
        """The distilled schedule from the buffer's mean row (see `distill`)."""
        raise NotImplementedError

    def record(self) -> dict:
        """What the learner adds to its schedules' provenance (nothing here)."""
        return {}

    # ---- shared pieces of an iteration ----------------------------------------------------------------------------

    def features(self, t: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """Time-only features (t/U, psi/U) of the critic (and of the paper's actor)."""
        return torch.stack([t / self.clock.U, psi / self.clock.U], dim=-1)

    def start(self, iteration: int, first_index: int, count: int) -> tuple:
        """Initial states x(0) ~ p_T (= T N(0, I)), random class labels and the policy noise z of `count` trajectories,
        each drawn from its own generator seeded by (seed, iteration, global index): draws follow seeds, not ranks."""
        gens = [trajectory_generator(self.cfg.seed, iteration, first_index + i) for i in range(count)]
        x, labels = self.initial_states(gens)
        z = torch.stack([torch.randn(self.grid_steps, generator=g, dtype=torch.float64) for g in gens]).to(self.device)
        return x, labels, z

    def initial_states(self, gens: list[torch.Generator]) -> tuple:
        """x(0) ~ p_T and a random one-hot class label (None for an unconditional net), one per generator."""
        dev = self.device
        x = torch.stack([torch.randn(self.shape, generator=g, dtype=torch.float64) for g in gens]).to(dev) * self.T
        labels = None
        if getattr(self.net, 'label_dim', 0):
            idx = torch.stack([torch.randint(self.net.label_dim, (1,), generator=g)[0] for g in gens]).to(dev)
            labels = torch.eye(self.net.label_dim, device=dev)[idx]
        return x, labels

    def descend(self, loss: torch.Tensor, stats: dict,
                extra: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict]:
        """Gradients of `loss`, the values `extra` and the statistics, averaged over processes (`reduce`), then one Adam
        step of actor and critic; returns the averaged `extra` and statistics.  Nothing changes if any is not finite."""
        self.opt_actor.zero_grad(set_to_none=False)
        self.opt_critic.zero_grad(set_to_none=False)
        loss.backward()
        params = list(self.actor.parameters()) + list(self.critic.parameters())
        extra = torch.zeros(0, dtype=torch.float64) if extra is None else extra.reshape(-1)
        pieces = [p.grad.reshape(-1) for p in params] + [extra] + [v.reshape(1) for v in stats.values()]
        flat = torch.cat([v.to(self.device, torch.float64) for v in pieces])
        if self.reduce is not None:
            flat = self.reduce(flat)
        if not torch.isfinite(flat).all():
            raise ARTDivergence(f'non-finite update at iteration {self.iteration}')
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        self.opt_actor.step()
        self.opt_critic.step()
        extra = flat[offset:offset + extra.numel()]
        return extra, dict(zip(stats, flat[offset + extra.numel():].tolist()))

    def policy_sequence(self, traj: dict) -> torch.Tensor:
        """Per trajectory, the clock speeds that distillation averages: the policy mean mu or the sampled theta."""
        return traj['mu' if self.cfg.distill == 'mean' else 'theta'].clamp(min=0.0).cpu()

    @torch.no_grad()
    def finish(self, sequence: torch.Tensor, stats: dict) -> dict:
        """Close an iteration: record each row of `sequence` (one per trajectory), each rescaled so that
        sum_k row_k * spacing = U on the training grid, in the ring buffer; returns the statistics of the iteration."""
        spacing = self.clock.U / self.grid_steps
        sequence = sequence * self.clock.U / (sequence.sum(1, keepdim=True) * spacing).clamp(min=1e-300)
        for row in sequence:
            self.buffer[self.buffer_count % self.cfg.distill_size] = row
            self.buffer_count += 1
        self.iteration += 1
        return dict(stats, iteration=self.iteration, gamma=self.gamma)

    # ---- distillation -------------------------------------------------------------------------------------------

    def distill(self, num_steps: Optional[int] = None) -> dict:
        """Distilled schedule: the K+1 sigma grid (K = num_steps, default cfg.steps; descending, ending at 0), its
        clock knots (u in [0, 1] against sigma) and the clock speeds, from the mean of the buffer over all processes."""
        n = min(self.buffer_count, self.cfg.distill_size)
        if n == 0:
            raise RuntimeError('nothing to distill: run step() first')
        mean = self.buffer[:n].mean(0)
        if self.reduce is not None:
            mean = self.reduce(mean.to(self.device)).cpu()
        return self.schedule(mean, num_steps or self.cfg.steps)

    def levels(self, psi: torch.Tensor) -> torch.Tensor:
        """The noise levels of the progress values psi, pinned to exactly T and 0 at the ends."""
        sigma = self.clock.sigma(psi)
        sigma[0], sigma[-1] = self.T, 0.0
        return sigma

    # ---- snapshots ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue bit-exactly: networks, optimisers, gamma, iteration (= RNG state), buffer."""
        return dict(config=self.cfg.to_dict(), iteration=self.iteration, gamma=self.gamma,
                    actor=self.actor.state_dict(), critic=self.critic.state_dict(),
                    opt_actor=self.opt_actor.state_dict(), opt_critic=self.opt_critic.state_dict(),
                    buffer=self.buffer.clone(), buffer_count=self.buffer_count)

    def load_state_dict(self, state: dict) -> None:
        """Restore a snapshot of a learner with the same configuration (the iteration count `iters` may differ)."""
        mine = {k: v for k, v in self.cfg.to_dict().items() if k != 'iters'}
        theirs = {k: v for k, v in state['config'].items() if k != 'iters'}
        if mine != theirs:
            diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            raise ValueError(f'snapshot was made with a different configuration: {", ".join(diff)}')
        self.actor.load_state_dict(state['actor'])
        self.critic.load_state_dict(state['critic'])
        self.opt_actor.load_state_dict(state['opt_actor'])
        self.opt_critic.load_state_dict(state['opt_critic'])
        self.gamma = None if state['gamma'] is None else float(state['gamma'])
        self.iteration = int(state['iteration'])
        self.buffer.copy_(state['buffer'])
        self.buffer_count = int(state['buffer_count'])
