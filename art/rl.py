"""ART-RL: learn the timestep schedule of a diffusion sampler by actor-critic RL (P1 §3-5, Algorithm 1).

One readable module, top to bottom: the configuration, the clock, actor and critic, the rollout, the updates
(TD error eqs. 22a/22b, Lagrange multiplier eq. 23, Adam), and the distillation of a sigma grid (§5 of art-method.md).

Notation follows the paper.  The sampler state is x; the clock is t on a uniform grid t_k = k U / K; psi is the
progress variable with psi(0) = 0 and, on average, psi(U) = U; theta = dpsi/dt is the control; Q is the error density
(the total derivative of the field along the flow) and gamma the Lagrange multiplier of the budget.

Formulation (each choice is a field of `ARTConfig` and is written into the schedule file's provenance):

* Clock.  The noise level is sigma = Phi(U - psi) with Phi(u) = u**rho and U = T**(1/rho), T = sigma_max.  rho = 1 is
  the paper's sigma = T - psi.  For rho > 1 the control problem is the same problem written in another clock: an Euler
  step from sigma_k to sigma_{k+1} ~ sigma_k - Phi'(u) theta dt has local error (dt**2/2) |Q| Phi'(u)**2 theta**2, so the
  cost density becomes |Q_u| theta**2 with |Q_u| = |Q| Phi'(u)**2 (Q the paper's sigma-form density) and the budget
  int theta dt = U means sigma runs from T to 0.  Every grid has the same cost in both clocks, so the optimum grid is
  unchanged, but theta is O(1) along the whole trajectory (rho = 7: theta = 1 is EDM's grid with sigma_min = 0), which is
  what makes a Gaussian policy on linear theta with one lambda workable on image-shaped models (art-method.md §9).
* State update.  x follows the deployed sampler exactly: x_{k+1} = x_k + (sigma_{k+1} - sigma_k) f(x_k, sigma_k), with
  f = (x - D)/sigma and the field evaluated at max(sigma, sigma_floor); psi itself is never clipped, so eq. 23 sees
  overshoot as well as undershoot (art-method.md §9, lesson 1).
* Features.  Actor and critic see the time-only features (t/U, psi/U) (P1: images use low-dimensional features
  including t and psi; distillation keeps only a time curve).
* Variance reduction (`variance_reduction=True`).  Three unbiased substitutions that leave the expected updates of
  eqs. 22a/22b unchanged: (i) the TD error uses the known conditional expectation of the running reward,
  E_pi[-gamma theta - |Q| theta**2] = -gamma mu - |Q| mu**2 - lam (the randomisation cost, §3.1); (ii) the actor receives
  the gradient of that expectation in mu analytically, -(gamma + 2 |Q| mu), instead of its likelihood-ratio estimate;
  (iii) the likelihood-ratio term for the future value uses the baseline V(t_{k+1}, psi_k + mu_k dt), which does not
  depend on theta_k.  The expected actor direction is (V_psi - gamma - 2|Q| mu) dmu/dvartheta, zero at eq. 18.
* Preconditioning (`precondition=True`): each step's actor direction is divided by its curvature 2 |Q| dt (batch
  mean), so every step moves towards its own eq.-18 target at the same relative rate although |Q| spans decades.
* Mean parametrisation.  'linear' (paper: mu = NN) or 'exp' (mu = exp(NN), positive, for the dynamic range).  Both start
  at mu = 1, i.e. the grid uniform in the clock (Uniform for rho = 1, EDM for rho = 7): the last layer starts at zero.
* Distillation.  'mean' (default) averages the policy mean mu_k along the last trajectories, each rescaled so that
  sum_k mu_k dt = U; by Thm 3.2 the mean is the object that converges to the ART control, and it averages far faster
  than the executed theta (art-method.md §9).  'executed' is the paper's literal statistic (the sampled theta).

Progress domain (`domain='progress'`, the 'images' preset).  The same control problem, eqs. 9/14 with the budget of
eq. 6, written with the progress psi as the independent variable (this clock: sigma = Phi(U - psi), rho = 7).
* Reparametrisation.  For a monotone control theta > 0, dt = dpsi/theta, so the cost and the budget become
      int_0^U |Q_u| theta**2 dt = int_0^U q(psi) theta(psi) dpsi,      int_0^U theta dt = U  <=>  int_0^U dpsi/theta(psi) = U,
  q = |Q_u| the clock's cost density (above): horizon and budget swap roles (progress runs over [0, U], the time spent
  must be U), and the feasible schedules and their costs are the same as in eqs. 6/9.  In the fine-grid limit x(psi)
  follows the exact flow whatever theta is, so q(psi) does not depend on the policy and the Lagrangian
  C + gamma'(B - U), C = E int q theta dpsi, B = E int dpsi/theta, has the LOCAL gradient (q - gamma'/theta**2) per unit
  psi: no costate V_psi is needed.  Its stationarity q theta**2 = gamma' is the conservation of the Hamiltonian
  H = |Q| theta*(t)**2 of eq. 18 along the optimal path (art-method.md §2; gamma' = H, theta* ∝ |Q|**(-1/2)), and for a
  time-only policy its solution is theta ∝ qbar**(-1/2), the training-free optimum of art.closed_form, which here is
  LEARNED from rollouts, never computed or used for initialisation (the actor starts at theta = 1: EDM's grid).
* Randomisation.  A Gaussian on theta has E[1/theta] = inf, so eq. 11 does not carry over to the psi form; the policy
  is log-normal, theta = mu exp(log_std z), z ~ N(0, 1) (log_std fixed, like lambda).  Analogue of Thm 3.1:
  E_z[q theta + gamma'/theta] = exp(log_std**2/2) (q mu + gamma'/mu), i.e. the randomised value is the deterministic
  one times exp(log_std**2/2) (a multiplicative shift in place of + lam t); analogue of Thm 3.2: its minimiser in mu is
  mu* = sqrt(gamma'/q), the deterministic optimum, whatever log_std.
* Rollout.  Uniform psi-grid psi_k = k dpsi, dpsi = U/train_steps (`train_steps`, fine; `steps` = deployed K): x takes
  the Euler step from sigma_k to sigma_{k+1} (policy-free, as in the limit), theta_k is drawn at every step and lasts
  dt_k = dpsi/theta_k; running reward r_k = -(q_k theta_k + gamma'/theta_k) dpsi = -(|Q_u| theta**2 + gamma') dt_k
  (eq. 9's -|Q| theta**2 - gamma theta with the multiplier on time instead of progress).
* Critic (eq. 20/22a).  V(t, psi) = v_scale NN(t/U, psi/U), terminal value gamma' U, TD error
  delta_k = r_k + V_{k+1} - V_k, updated by eq. 22a (semi-gradient, normalised by v_scale).
* Actor (eq. 22b).  a = log mu, d log pi / d a = z/log_std; ascent coefficient (z_k/log_std) A_k with A_k = delta_k
  (`baseline='critic'`: the critic is the baseline; x and q do not depend on theta_k, so the future part of the
  return is independent of theta_k) or A_k = r_k - E_z[r_k | q_k] (`baseline='expected'`: the known conditional
  expectation of the reward given the observed q_k, independent of z_k, hence unbiased; much lower variance because
  q varies by ~35% between trajectories).  `precondition`: divided by the expected step cost
  exp(log_std**2/2)(qbar_k mu_k + gamma'/mu_k) dpsi, so each psi moves at a rate ~ tanh(log(mu/mu*)).
* Budget.  Exact renormalisation of the mean (art-method.md §8 item 3's alternative): log mu_k = a_k + log(sum_j dpsi
  exp(-a_j) / U), so sum_k dpsi/mu_k = U; gamma' = C/B on each batch (`gamma_update='ratio'`, batch means over all
  ranks), the value at which the Lagrangian is stationary along the common mode (d/dc [C + gamma' B] = 0 for
  theta -> c theta), so the true gradient has zero sum over psi.  The common mode of a is a gauge: the shift carries
  no gradient and the (preconditioned) ascent coefficients are centred over the psi-grid.  Fixed points: all
  coefficients equal, i.e. mu_k = kappa sqrt(gamma'/q_k); then C/B = kappa**2 gamma', so kappa = 1: the optimum.
  (Differentiating through the shift instead lets the preconditioned, non-zero-sum coefficients drain the head of
  the grid early on: measured, mu(0) fell to 0.2 before recovering.)  The stats report gamma = gamma' and
  psi_T_mean = E[time spent]/U (= exp(log_std**2/2) for the mean-normalised policy).
* Actor parametrisation (`actor`).  'mlp': a = NN(psi/U), the paper's function approximator; 'table': one a_k per
  psi-grid step (the most general time-only policy on the training grid; both start at a = 0, i.e. EDM's grid).  With
  time-only features the table is exact where the MLP must fit a profile whose log changes by ~1 within a few
  percent of the clock (near sigma ~ 1-2 on the Fashion-MNIST mixture), which 700 Adam steps of the MLP smooth away:
  measured there, MLP 1.16-1.21 x the closed form's rms at K=5/10, table 1.00-1.03 x (Status below).
* Distillation.  Mean over the last `distill_size` trajectories of the normalised time increments dpsi/mu_k: the
  clock u(psi_k) = t_k/U, sigma_k = Phi(U - psi_k); the K-step grid is read off at u = i/K (art.schedules.Clock).

Status of the progress domain ('images' preset: 16 trajectories per iteration on the 128-step psi-grid, tabular
actor, 700 iterations; one training serves every K).  Euler, rms endpoint error against the exact solution over
4 x 256 latents (seeds 0-1023), ratios on the same latents:
* write_random_gmm(k=10, shape=(1,8,8), seed=0) (docs/bench/mixture-k10-1x8x8.npz), 580 s CPU: K=5 2.211 = 0.967 x
  closed form = 0.681 x EDM; K=10 1.474 = 0.996 x closed form = 0.733 x EDM.
* the Fashion-MNIST mixture (assets/fmnist-gmm.npz, 64 components, 1x32x32), 760 s CPU: K=5 7.759 = 1.017 x closed
  form = 0.643 x EDM; K=10 5.462 = 1.027 x closed form = 0.751 x EDM; K=18 1.017 x closed form.
* gauss1d (exact W2): .3469/.1483/.0766/.0390/.0158/.0080 at K=2/5/10/20/50/100 (closed form .3492/.1493/.0771/
  .0392/.0159/.0080).
Measured alternatives on the Fashion-MNIST mixture (K=5/10, one set of 256 latents, closed form 6.82/3.96): the MLP
actor (64-step grid, lr 3e-3) 8.22/4.61 (1.21/1.16 x closed form; 1,500 iterations or a 128-step grid did not
help); the table on the 64-step grid, lr 3e-3 7.47/4.19, lr 1e-2 7.07/4.12 (1.04 x); on the 128-step grid, lr 1e-2
7.00/3.95 (1.03/1.00 x: the preset).  The exact fixed point of the learner (mu_k = sqrt(gamma'/qbar_k), qbar_k from
128 rollouts) is 1.06/1.04 x closed form on the 64-step grid and 1.01/1.00 x on a 256-step grid: the training grid
bounds what any learner can reach, the MLP was a further 12-15% off its own fixed point.  The critic baseline alone
(baseline='critic') learns far more slowly (1x8x8: 1.66 x closed form after 150 iterations).

Why a fine training grid (measured on the same mixture).  Per-K training on the K-step grid cannot reach the closed
form even with a perfect learner: the exact optimum of the discrete objective sum_k |Q_k| theta_k**2 dt (|Q| at the
left end of each step, rho = 7 clock, 128 rollouts, Nelder-Mead over theta) has rms 3.78 at K=5 and 2.93 at K=10,
WORSE than EDM; the left-point quadrature of a density spanning decades inside one coarse step is what the optimiser
exploits.  On a fine grid the discrete optimum approaches the continuous one, and the grid of any K is read off the
learned clock.  Critic-driven variants in the time domain (an eq.-18 actor from dV/dpsi, pathwise-costate critics,
relative exploration noise) changed the level but not the shape of the profile in 300 iterations and were dropped.

Randomness: every trajectory draws its initial noise, class label and policy noise from its own torch.Generator seeded
from (seed, iteration, global trajectory index), so the learner's RNG state is (seed, iteration) and results depend on
the seed, not on the number of processes.  Actor and critic are initialised from a generator seeded by the seed.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from edm import grids
from art.error_density import error_density, q_norm
from art.schedules import Clock

Reduce = Callable[[torch.Tensor], torch.Tensor]  # averages a flat float64 vector across processes


@dataclasses.dataclass
class ARTConfig:
    """Every hyper-parameter of ART-RL; defaults are the paper's (P1 App. C), `PRESETS['images']` for image models."""
    steps: int = 100                 # K: training grid t_k = k U / K (per-K training); the deployed K if train_steps
    lam: float = 0.1                 # lambda: policy variance lam / (|Q| v eps), eq. 11
    eps: float = 1e-6                # floor on |Q|
    lr: float = 1e-4                 # Adam learning rate, actor and critic
    betas: tuple[float, float] = (0.9, 0.999)
    gamma_lr: float = 1e-4           # step of the stochastic approximation eq. 23
    gamma_init: float = 0.0          # gamma at iteration 0
    width: int = 128                 # 3-layer MLPs, Softplus
    iters: int = 5000                # N, recorded for provenance (the caller runs the loop)
    batch: int = 1                   # trajectories per process per iteration
    rho: float = 1.0                 # clock sigma = (U - psi)**rho; 1 = the paper's sigma = T - psi
    sigma_floor: float = 0.002       # the field is evaluated at max(sigma, sigma_floor) (art-method.md §8 item 1)
    mean_param: str = 'linear'       # 'linear': mu = NN; 'exp': mu = exp(NN)
    variance_reduction: bool = False  # expected reward in the TD error, analytic immediate gradient, mean baseline
    precondition: bool = False       # scale each step's actor direction by its inverse curvature 1/(2 |Q| dt)
    distill: str = 'mean'            # 'mean': policy mean mu (Thm 3.2); 'executed': sampled theta (paper §5.1)
    distill_size: int = 1000         # trajectories kept for distillation (ring buffer)
    theta_floor: float = 1e-3        # distilled theta >= theta_floor * its mean, so the grid is strictly monotone
    gamma_update: str = 'sa'         # 'sa': eq. 23; 'ratio': exact budget renormalisation (progress domain)
    actor: str = 'mlp'               # 'mlp': mean from an MLP (paper); 'table': one log-mean per psi-grid step (progress)
    domain: str = 'time'             # 'time': the paper's rollout on a uniform t-grid; 'progress': uniform psi-grid (docstring)
    train_steps: Optional[int] = None  # fine training grid; the distilled grid then has `steps` (= deployed K) steps
    log_std: float = 0.3             # progress domain: theta = mu exp(log_std z), z ~ N(0, 1)
    baseline: str = 'critic'         # progress domain: 'critic' (TD error of eq. 22a) or 'expected' (E_z[reward | q_k])
    seed: int = 0

    def __post_init__(self) -> None:
        if self.gamma_update not in ('sa', 'ratio'):
            raise ValueError(f"gamma_update must be 'sa' or 'ratio', not {self.gamma_update!r}")
        if self.actor not in ('mlp', 'table'):
            raise ValueError(f"actor must be 'mlp' or 'table', not {self.actor!r}")
        if self.domain not in ('time', 'progress'):
            raise ValueError(f"domain must be 'time' or 'progress', not {self.domain!r}")
        if self.baseline not in ('critic', 'expected'):
            raise ValueError(f"baseline must be 'critic' or 'expected', not {self.baseline!r}")
        if self.domain == 'progress' and (self.mean_param != 'exp' or self.gamma_update != 'ratio'):
            raise ValueError("domain='progress' needs mean_param='exp' and gamma_update='ratio'")
        if self.domain != 'progress' and (self.gamma_update == 'ratio' or self.actor == 'table'):
            raise ValueError("gamma_update='ratio' and actor='table' belong to the progress domain")
        if self.train_steps is not None and self.train_steps < 1:
            raise ValueError('train_steps must be positive')
        if not self.log_std > 0:
            raise ValueError('log_std must be positive')
        if self.mean_param not in ('linear', 'exp'):
            raise ValueError(f"mean_param must be 'linear' or 'exp', not {self.mean_param!r}")
        if self.distill not in ('mean', 'executed'):
            raise ValueError(f"distill must be 'mean' or 'executed', not {self.distill!r}")
        if self.steps < 1 or self.batch < 1 or self.distill_size < 1:
            raise ValueError('steps, batch and distill_size must be positive')
        if not (self.lam > 0 and self.eps > 0 and self.rho >= 1):
            raise ValueError('lam and eps must be positive and rho >= 1')
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict:
        """Plain-JSON form for the schedule file's provenance."""
        if self.domain == 'progress':
            form = ('progress domain (eqs. 9/14 in psi, budget int dpsi/theta = U): local Lagrangian gradient '
                    'q - gamma/theta**2 by likelihood ratio of log-normal exploration, baseline ' + self.baseline +
                    ', budget by exact renormalisation (gamma = C/B), actor ' + self.actor)
            features = ['psi/U'] if self.actor == 'mlp' else ['psi-grid index']
        else:
            form, features = 'paper (eqs. 22a/22b/23)', ['t/U', 'psi/U']
        return dict(dataclasses.asdict(self), betas=list(self.betas), algorithm='ART-RL', features=features,
                    clock=f'sigma = (U - psi)**{self.rho}, U = sigma_max**(1/rho)', form=form,
                    train_grid=self.train_steps or self.steps, deployed_steps=self.steps)


PRESETS: dict[str, dict] = {
    'paper': {},
    # Image-shaped models (T = 80): the progress domain (module docstring) on a fine psi-grid of 128 steps in EDM's
    # rho = 7 clock, tabular actor, log-normal exploration, expected-reward baseline, exact budget; one learned clock
    # serves every deployed K.
    'images': dict(domain='progress', rho=7.0, mean_param='exp', train_steps=128, actor='table', log_std=0.3,
                   baseline='expected', gamma_update='ratio', precondition=True, lr=1e-2, batch=16, distill_size=800,
                   iters=700),
}


class ARTDivergence(FloatingPointError):
    """Raised when a rollout or an update produces NaN or inf; the learner's state is left at the last good step."""


class PowerClock:
    """The time change sigma = Phi(U - psi), Phi(u) = u**rho, on the horizon t in [0, U]."""

    def __init__(self, sigma_max: float, rho: float):
        self.rho = rho
        self.U = sigma_max ** (1.0 / rho)

    def sigma(self, psi: torch.Tensor) -> torch.Tensor:
        """Noise level reached at progress psi (psi outside [0, U] is held at the ends)."""
        return (self.U - psi).clamp(0.0, self.U) ** self.rho

    def speed2(self, sigma: torch.Tensor) -> torch.Tensor:
        """(dsigma/du)**2 = (rho sigma**((rho-1)/rho))**2: converts the sigma-form |Q| into the clock's cost density."""
        return (self.rho * sigma ** ((self.rho - 1.0) / self.rho)) ** 2


def mlp(n_in: int, width: int, generator: torch.Generator) -> nn.Sequential:
    """3-layer Softplus MLP with a scalar output whose last layer starts at zero."""
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


class Table(nn.Module):
    """Tabular actor of the progress domain: one output a_k per psi-grid step, starting at 0 (mu = 1: EDM's grid)."""

    def __init__(self, size: int):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(size, dtype=torch.float64))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """a on the whole psi-grid (feat holds the grid's psi/U, one row per step)."""
        if feat.shape[0] != self.a.shape[0]:
            raise ValueError(f'the table has {self.a.shape[0]} steps, asked for {feat.shape[0]}')
        return self.a.unsqueeze(-1)


def trajectory_generator(seed: int, iteration: int, index: int) -> torch.Generator:
    """Generator of one trajectory, seeded from (seed, iteration, global trajectory index)."""
    state = np.random.SeedSequence([seed, iteration, index]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


class ARTLearner:
    """Actor, critic, gamma and distillation buffer of ART-RL for one frozen network; `step()` is one iteration."""

    def __init__(self, net, cfg: ARTConfig, rank: int = 0, device: torch.device | str = 'cpu',
                 reduce: Optional[Reduce] = None):
        self.net, self.cfg, self.rank, self.device = net, cfg, rank, torch.device(device)
        self.reduce = reduce
        self.T = grids.horizon(net)                                              # T = 80 for EDM networks
        self.clock = PowerClock(self.T, cfg.rho)
        self.grid_steps = cfg.train_steps or cfg.steps                           # the training grid
        self.dt = self.clock.U / self.grid_steps                                 # dt (time domain) or dpsi (progress)
        self.shape = (net.img_channels, net.img_resolution, net.img_resolution)
        init = torch.Generator().manual_seed(cfg.seed)
        if cfg.actor == 'table':
            self.actor = Table(self.grid_steps).to(self.device)
        else:
            self.actor = mlp(1 if cfg.domain == 'progress' else 2, cfg.width, init).to(self.device)
        self.critic = mlp(2, cfg.width, init).to(self.device)
        if cfg.mean_param == 'linear':
            with torch.no_grad():
                self.actor[-1].bias.fill_(1.0)
        self.opt_actor = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.gamma = float(cfg.gamma_init)
        # output scale of the critic, V = v_scale NN (+ lam t); 1 in the time domain, set on the first batch in psi
        self.v_scale = 1.0 if cfg.domain == 'time' else float('nan')
        self.iteration = 0
        self.buffer = torch.zeros(cfg.distill_size, self.grid_steps, dtype=torch.float64)
        self.buffer_count = 0

    # ---- actor and critic -------------------------------------------------------------------------------------

    def features(self, t: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """Time-only features (t/U, psi/U)."""
        return torch.stack([t / self.clock.U, psi / self.clock.U], dim=-1)

    def mean(self, feat: torch.Tensor) -> torch.Tensor:
        """Policy mean mu (eq. 20)."""
        out = self.actor(feat).squeeze(-1)
        return out.exp() if self.cfg.mean_param == 'exp' else out

    def value(self, feat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Critic V = NN + lam t (eq. 20, Thm 3.1)."""
        return self.critic(feat).squeeze(-1) + self.cfg.lam * t

    # ---- rollout ----------------------------------------------------------------------------------------------

    def start(self, iteration: int, first_index: int, count: int) -> tuple:
        """Initial states x(0) ~ p_T (= T N(0, I)), random class labels and the policy noise z of `count` trajectories,
        each drawn from its own generator seeded by (seed, iteration, global index): draws follow seeds, not ranks."""
        dev = self.device
        gens = [trajectory_generator(self.cfg.seed, iteration, first_index + i) for i in range(count)]
        x = torch.stack([torch.randn(self.shape, generator=g, dtype=torch.float64) for g in gens]).to(dev) * self.T
        labels = None
        if getattr(self.net, 'label_dim', 0):
            idx = torch.stack([torch.randint(self.net.label_dim, (1,), generator=g)[0] for g in gens]).to(dev)
            labels = torch.eye(self.net.label_dim, device=dev)[idx]
        z = torch.stack([torch.randn(self.grid_steps, generator=g, dtype=torch.float64) for g in gens]).to(dev)
        return x, labels, z

    @torch.no_grad()
    def rollout(self, iteration: int, first_index: int, count: int) -> dict:
        """Roll out `count` trajectories (global indices first_index...) under the current policy with the frozen net."""
        cfg, K, dt, dev = self.cfg, self.grid_steps, self.dt, self.device
        x, labels, z = self.start(iteration, first_index, count)
        psi = torch.zeros(count, dtype=torch.float64, device=dev)
        t_all, psi_all, theta_all, q_all, mu_all = [], [], [], [], []
        for k in range(K):
            t = torch.full_like(psi, k * dt)
            sigma = self.clock.sigma(psi)
            sigma_eval = sigma.clamp(min=cfg.sigma_floor)
            f, Q = error_density(self.net, x, sigma_eval, labels)
            q = (q_norm(Q).to(psi) * self.clock.speed2(sigma_eval)).clamp(min=cfg.eps)  # |Q_u| v eps
            mu = self.mean(self.features(t, psi))
            theta = mu + (cfg.lam / q).sqrt() * z[:, k]                           # theta ~ N(mu, lam/|Q|), eq. 11
            for store, v in zip((t_all, psi_all, theta_all, q_all, mu_all), (t, psi, theta, q, mu)):
                store.append(v)
            psi = psi + theta * dt                                               # eq. 4
            x = x + (self.clock.sigma(psi) - sigma).reshape(-1, *[1] * len(self.shape)) * f.to(x)
        traj = {name: torch.stack(v, dim=1) for name, v in
                dict(t=t_all, psi=psi_all, theta=theta_all, q=q_all, mu=mu_all).items()}
        traj['psi_T'] = psi
        if not all(torch.isfinite(v).all() for v in traj.values()):
            raise ARTDivergence(f'non-finite rollout at iteration {iteration}')
        return traj

    # ---- updates ----------------------------------------------------------------------------------------------

    def losses(self, traj: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Surrogate losses whose gradients are minus the ascent directions of eqs. 22a/22b, per trajectory mean."""
        cfg, dt, U = self.cfg, self.dt, self.clock.U
        t, psi, theta, q = traj['t'], traj['psi'], traj['theta'], traj['q']
        feat = self.features(t, psi)
        V = self.value(feat, t)                                                  # V_k, k < K
        V_T = torch.full_like(V[:, :1], (self.gamma + cfg.lam) * U)              # terminal (gamma + lam) U, §8 item 2
        V_next = torch.cat([V[:, 1:], V_T], dim=1).detach()
        mu = self.mean(feat)
        reward = -(self.gamma * theta + q * theta ** 2)                          # running reward
        with torch.no_grad():
            if cfg.variance_reduction:
                reward_mean = -(self.gamma * mu + q * mu ** 2 + cfg.lam)         # E_pi[reward], §3.1
                delta = V_next - V.detach() + reward_mean * dt
                t_next, psi_mean = t + dt, psi + mu * dt
                baseline = self.value(self.features(t_next, psi_mean), t_next)
                baseline[:, -1] = V_T[:, 0]
                # ascent coefficient on mu_k: likelihood ratio of the future value + exact immediate gradient
                coef = q / cfg.lam * (theta - mu) * (V_next - baseline) - (self.gamma + 2 * q * mu) * dt
            else:
                delta = V_next - V.detach() + reward * dt                        # TD error
                coef = q / cfg.lam * (theta - mu) * delta                        # d log pi / d mu * delta
            if cfg.precondition:
                # Newton step in the actor's output: -d2J/dmu2 = 2 q dt (batch mean), times (dmu/dNN)**2
                dmu = mu if cfg.mean_param == 'exp' else torch.ones_like(mu)
                coef = coef / (2 * q.mean(0, keepdim=True) * dt * dmu ** 2)
        critic_loss = -(V * delta).sum(1).mean()                                 # eq. 22a
        actor_loss = -(coef * mu).sum(1).mean()                                  # eq. 22b
        with torch.no_grad():
            stats = dict(td_error=delta.pow(2).mean().sqrt(), reward=(reward * dt).sum(1).mean(),
                         psi_T_mean=traj['psi_T'].mean() / U, psi_T_std=traj['psi_T'].std(unbiased=False) / U,
                         theta_mean=theta.mean(), theta_std=theta.std(unbiased=False),
                         std_over_mu=((cfg.lam / q).sqrt() / mu.abs().clamp(min=1e-12)).mean(),
                         mu_first=mu[:, 0].mean(), mu_last=mu[:, -1].mean())
        return critic_loss, actor_loss, stats

    def step(self) -> dict:
        """One ART-RL iteration: roll out `batch` trajectories, update critic, actor (Adam) and gamma (eq. 23)."""
        cfg = self.cfg
        if cfg.domain == 'progress':
            return self.step_progress()
        traj = self.rollout(self.iteration, self.rank * cfg.batch, cfg.batch)
        critic_loss, actor_loss, stats = self.losses(traj)
        d_gamma = cfg.gamma_lr * (traj['psi_T'] - self.clock.U).mean()          # eq. 23
        return self.update(traj, critic_loss, actor_loss, stats, d_gamma)

    def update(self, traj: dict, critic_loss: torch.Tensor, actor_loss: torch.Tensor, stats: dict,
               d_gamma: torch.Tensor) -> dict:
        """Gradients of both losses and the gamma increment, averaged over processes (`reduce`), then Adam steps
        (eqs. 22a/22b), the gamma step (eq. 23) and the distillation record; returns the iteration's statistics."""
        self.opt_actor.zero_grad(set_to_none=False)
        self.opt_critic.zero_grad(set_to_none=False)
        (critic_loss + actor_loss).backward()
        params = list(self.actor.parameters()) + list(self.critic.parameters())
        flat = torch.cat([p.grad.reshape(-1) for p in params] + [d_gamma.reshape(1)] +
                         [v.reshape(1) for v in stats.values()]).to(torch.float64)
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
        self.gamma += float(flat[offset])
        self.record(traj)
        self.iteration += 1
        out = dict(zip(stats, flat[offset + 1:].tolist()))
        out.update(iteration=self.iteration, gamma=self.gamma)
        return out

    @torch.no_grad()
    def record(self, traj: dict) -> None:
        """Push each trajectory's theta (or mu) sequence, rescaled to sum_k theta_k dt = U, into the ring buffer
        (progress domain: its time increments dpsi/theta_k, rescaled to sum U)."""
        seq = (traj['mu'] if self.cfg.distill == 'mean' else traj['theta']).clamp(min=0.0).cpu()
        if self.cfg.domain == 'progress':
            seq = self.dt / seq
        seq = seq * self.clock.U / (seq.sum(1, keepdim=True) * self.dt).clamp(min=1e-300)
        for row in seq:
            self.buffer[self.buffer_count % self.cfg.distill_size] = row
            self.buffer_count += 1

    # ---- distillation -----------------------------------------------------------------------------------------

    def distill(self, num_steps: Optional[int] = None) -> dict:
        """Distilled schedule (§5): the K+1 sigma grid (K = num_steps, default cfg.steps; descending, ending at 0) and
        its clock knots (u in [0,1])."""
        n = min(self.buffer_count, self.cfg.distill_size)
        if n == 0:
            raise RuntimeError('nothing to distill: run step() first')
        mean = self.buffer[:n].mean(0)
        if self.reduce is not None:
            mean = self.reduce(mean.to(self.device)).cpu()
        num_steps = num_steps or self.cfg.steps
        if self.cfg.domain == 'progress':
            return self.distill_progress(mean, num_steps)
        if not (mean > 0).any():
            raise ARTDivergence('the policy mean is not positive anywhere: no schedule to distill')
        theta = mean.clamp(min=self.cfg.theta_floor * float(mean.clamp(min=0).mean()))
        theta = theta * self.clock.U / (theta.sum() * self.dt)
        psi = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(theta * self.dt, 0)])
        sigma = self.clock.sigma(psi)
        sigma[0], sigma[-1] = self.T, 0.0
        u = np.linspace(0, 1, self.grid_steps + 1)
        sigmas = sigma.tolist()
        if num_steps != self.grid_steps:
            # the grid of the deployed K read off the learned clock (PCHIP of sigma^(1/7) at u = i/K, art.schedules)
            sigmas = Clock(u, sigma.numpy()).grid(num_steps).tolist()
        return dict(sigmas=sigmas, clock=dict(u=u.tolist(), sigma=sigma.tolist()), theta=theta.tolist())

    # ---- progress domain (module docstring, "Progress domain") -----------------------------------------------

    @torch.no_grad()
    def rollout_progress(self, iteration: int, first_index: int, count: int) -> dict:
        """Roll out `count` trajectories on the uniform psi-grid psi_k = k dpsi: x follows the fine Euler flow (policy-
        free), theta_k = mu(psi_k) exp(log_std z_k) is drawn at every step and sets its duration dt_k = dpsi/theta_k."""
        cfg, M, dpsi, dev = self.cfg, self.grid_steps, self.dt, self.device
        x, labels, z = self.start(iteration, first_index, count)
        psi = torch.arange(M + 1, dtype=torch.float64, device=dev) * dpsi
        sigma = self.clock.sigma(psi)
        sigma[0], sigma[-1] = self.T, 0.0
        q_all = []
        for k in range(M):
            sigma_eval = float(sigma[k].clamp(min=cfg.sigma_floor))
            f, Q = error_density(self.net, x, sigma_eval, labels)
            speed2 = self.clock.speed2(torch.tensor(sigma_eval, dtype=torch.float64))
            q_all.append((q_norm(Q).to(psi) * speed2).clamp(min=cfg.eps))       # |Q_u| at max(sigma, sigma_floor)
            if not torch.isfinite(q_all[-1]).all():                              # stop at the first bad level
                raise ARTDivergence(f'non-finite error density at iteration {iteration}, sigma = {sigma_eval:.4g}')
            x = x + float(sigma[k + 1] - sigma[k]) * f.to(x)
        q = torch.stack(q_all, dim=1)                                            # [count, M]
        mu = self.progress_log_mean().exp().expand_as(q)
        theta = mu * (cfg.log_std * z).exp()
        duration = dpsi / theta
        t = torch.cat([torch.zeros_like(duration[:, :1]), duration.cumsum(1)[:, :-1]], dim=1)
        traj = dict(psi=psi[:-1].expand_as(q), t=t, q=q, z=z, theta=theta, mu=mu, t_T=duration.sum(1),
                    cost=(q * theta).sum(1) * dpsi)
        if not all(torch.isfinite(v).all() for v in traj.values()):
            raise ARTDivergence(f'non-finite rollout at iteration {iteration}')
        return traj

    def progress_features(self, psi: torch.Tensor) -> torch.Tensor:
        """The actor's feature psi/U (the learned object is the clock speed as a function of progress)."""
        return (psi / self.clock.U).unsqueeze(-1)

    def progress_log_mean(self) -> torch.Tensor:
        """log mu_k on the psi-grid: the actor's a(psi_k) shifted so that the mean spends the time budget exactly,
        sum_k dpsi / mu_k = U (exact renormalisation; the common mode of a is a gauge, the shift carries no gradient)."""
        psi = torch.arange(self.grid_steps, dtype=torch.float64, device=self.device) * self.dt
        a = self.actor(self.progress_features(psi)).squeeze(-1)
        return a + (torch.logsumexp(-a, 0) + math.log(self.dt / self.clock.U)).detach()

    def losses_progress(self, traj: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Critic: TD (eq. 22a in psi); actor: likelihood ratio of the log-normal exploration times the advantage."""
        cfg, dpsi, U, gamma, s = self.cfg, self.dt, self.clock.U, self.gamma, self.cfg.log_std
        q, theta, z, t, psi = traj['q'], traj['theta'], traj['z'], traj['t'], traj['psi']
        log_mu = self.progress_log_mean()                                        # log mu(psi_k), shared by the batch
        mu = log_mu.exp().detach()
        V = self.v_scale * self.critic(self.features(t, psi)).squeeze(-1)        # V(t_k, psi_k)
        V_T = torch.full_like(V[:, :1], gamma * U)                               # terminal value gamma U (eq. 9)
        V_next = torch.cat([V[:, 1:], V_T], dim=1).detach()
        with torch.no_grad():
            reward = -(q * theta + gamma / theta) * dpsi                         # -(|Q| theta^2 + gamma') dt
            delta = V_next - V.detach() + reward                                 # TD error, eq. 22a
            growth = math.exp(s * s / 2)                                         # E[exp(s z)] = E[exp(-s z)]
            if cfg.baseline == 'critic':
                advantage = delta
            else:                                                                # reward minus E_z[reward | q_k]
                advantage = reward + growth * (q * mu + gamma / mu) * dpsi
            coef = z / s * advantage                                             # d log pi / d a = z / s
            if cfg.precondition:                                                 # relative: / expected cost of the step
                coef = coef / (growth * (traj['qbar'] * mu + gamma / mu) * dpsi)
        critic_loss = -(V * delta).sum(1).mean() / self.v_scale ** 2           # eq. 22a (normalised)
        coef = coef.mean(0)
        actor_loss = -((coef - coef.mean()) * log_mu).sum()                      # gauge-fixed policy gradient on log mu
        with torch.no_grad():
            stats = dict(td_error=delta.pow(2).mean().sqrt(), reward=reward.sum(1).mean(),
                         psi_T_mean=traj['t_T'].mean() / U, psi_T_std=traj['t_T'].std(unbiased=False) / U,
                         theta_mean=theta.mean(), theta_std=theta.std(unbiased=False),
                         std_over_mu=torch.tensor(math.sqrt(math.exp(s * s) - 1.0), dtype=torch.float64),
                         mu_first=mu[0], mu_last=mu[-1], cost=traj['cost'].mean())
        return critic_loss, actor_loss, stats

    def step_progress(self) -> dict:
        """One iteration in the progress domain: rollout, budget multiplier, critic and actor (Adam)."""
        cfg, U = self.cfg, self.clock.U
        traj = self.rollout_progress(self.iteration, self.rank * cfg.batch, cfg.batch)
        cb = torch.cat([traj['cost'].mean().reshape(1), traj['t_T'].mean().reshape(1), traj['q'].mean(0)])
        cb = self.reduce(cb) if self.reduce is not None else cb                  # batch means over all ranks
        self.gamma = float(cb[0] / cb[1])                                        # d/dc [C + gamma B] = 0: C = gamma B
        traj['qbar'] = cb[2:]
        if math.isnan(self.v_scale):
            self.v_scale = 2 * self.gamma * U                                    # |C + gamma B| at the budget
        critic_loss, actor_loss, stats = self.losses_progress(traj)
        return self.update(traj, critic_loss, actor_loss, stats, torch.zeros((), dtype=torch.float64))  # gamma: set above

    def distill_progress(self, duration: torch.Tensor, num_steps: int) -> dict:
        """Clock of the progress domain: t(psi_k) = sum_{j<k} mean normalised dt_j; the K-step grid read off it."""
        t = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(duration * self.dt, 0)])
        u = (t / t[-1]).numpy()
        u[0], u[-1] = 0.0, 1.0
        psi = torch.arange(self.grid_steps + 1, dtype=torch.float64) * self.dt
        sigma = self.clock.sigma(psi)
        sigma[0], sigma[-1] = self.T, 0.0
        sigmas = Clock(u, sigma.numpy()).grid(num_steps).tolist()
        theta = (self.dt / (duration * self.dt)).tolist()                        # dpsi/dt on the psi-grid
        return dict(sigmas=sigmas, clock=dict(u=u.tolist(), sigma=sigma.tolist()), theta=theta)

    # ---- snapshots --------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue bit-exactly: networks, optimisers, gamma, iteration (= RNG state), buffer."""
        return dict(config=self.cfg.to_dict(), iteration=self.iteration, gamma=self.gamma,
                    actor=self.actor.state_dict(), critic=self.critic.state_dict(),
                    opt_actor=self.opt_actor.state_dict(), opt_critic=self.opt_critic.state_dict(),
                    buffer=self.buffer.clone(), buffer_count=self.buffer_count, v_scale=self.v_scale)

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
        self.gamma, self.iteration = float(state['gamma']), int(state['iteration'])
        self.buffer.copy_(state['buffer'])
        self.buffer_count = int(state['buffer_count'])
        self.v_scale = float(state.get('v_scale', 1.0))
