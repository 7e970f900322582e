"""The progress-domain ART-RL learner (the 'images' preset): the paper's control problem with psi as the independent
variable, learned on a fine psi-grid; one learned clock serves every K.

docs/art-rl.md §3 derives this form (equations R1-R7; M-labels are in docs/method.md).  On the uniform psi-grid
psi_k = k dpsi, dpsi = U / train_steps, x follows the PF-ODE whatever the policy does; the policy draws
theta_k = mu_k exp(log_std z_k) (log-normal, eq. R4), which makes the step last dt_k = dpsi/theta_k; the running
reward is -(q_k theta_k + gamma/theta_k) dpsi (eq. R3) with q = |Q_u| the clock's error density (eq. M9); gamma = C/B
on each batch (eq. R6) and the mean is renormalised to spend the time budget exactly (eq. R7).  The actor ascends the
likelihood ratio times an advantage: the reward minus its known expectation given q ('expected', the preset's choice,
which stands in for the critic) or the critic's TD error ('critic').  The grid is read off the mean time spent per
psi-step (the learned clock u(psi)).  The preset replays the error densities of a pool of trajectories computed once:
those of the closed form's adaptive estimate (pool='adaptive': its rule sizes the pool; docs/art-rl.md §3.4), so the
iterations cost no network evaluation.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from art.closed_form import AdaptiveSettings, adaptive_estimate
from art.error_density import error_density, field, q_norm
from art.rl import ARTDivergence, Learner, LearnerConfig, mlp, trajectory_generator
from art.schedules import Clock
from edm import grids
from edm.sampler import SOLVER_STEPS


POOL_STREAM = 2 ** 32        # the `iteration` entry of the pool trajectories' generators: apart from every iteration
ADAPTIVE = 'adaptive'        # pool: sized by the closed form's adaptive rule (art.closed_form.adaptive_estimate)


@dataclasses.dataclass(kw_only=True)
class ProgressConfig(LearnerConfig):
    """Settings of the progress-domain learner; the defaults are the 'images' preset (docs/art-rl.md §4)."""
    lr: float = 1e-2
    iters: int = 700
    batch: int = 16
    rho: float = grids.RHO           # EDM's clock: theta = 1 is EDM's grid (with sigma_min = 0)
    precondition: bool = True        # divide each step's coefficient by its expected cost
    distill_size: int = 800
    train_steps: int = 128           # the fine psi-grid; the deployed grids are read off the learned clock
    actor: str = 'table'             # 'table': one log-mean per psi-grid step; 'mlp': a = NN(psi/U)
    log_std: float = 0.3             # theta = mu exp(log_std z), z ~ N(0, 1) (eq. R4)
    baseline: str = 'expected'       # 'expected': E_z[reward | q_k] (stands in for the critic); 'critic': TD error
    pool: Union[int, str, None] = ADAPTIVE   # replay the error densities of trajectories computed once: 'adaptive'
                                     # (the closed form's adaptive estimate's), N (N rollouts), None: fresh rollouts
    pool_batch: int = 64             # trajectories per network call when a pool of N is computed
    q_mode: str = 'fd'               # Q by a finite difference along the flow ('fd') or forward-mode AD ('jvp')
    path: str = 'heun'               # the state between psi-grid levels: a Heun or an Euler step of the PF-ODE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.actor not in ('mlp', 'table'):
            raise ValueError(f"actor must be 'mlp' or 'table', not {self.actor!r}")
        if self.baseline not in ('critic', 'expected'):
            raise ValueError(f"baseline must be 'critic' or 'expected', not {self.baseline!r}")
        if self.train_steps < 1:
            raise ValueError('train_steps must be positive')
        if not self.log_std > 0:
            raise ValueError('log_std must be positive')
        if isinstance(self.pool, str) and self.pool != ADAPTIVE or self.pool_batch < 1:
            raise ValueError(f"pool must be {ADAPTIVE!r}, None or a number, and pool_batch positive")
        if isinstance(self.pool, int) and self.pool < self.batch:
            raise ValueError('pool must be at least batch')
        if self.q_mode not in ('jvp', 'fd'):
            raise ValueError(f"q_mode must be 'jvp' or 'fd', not {self.q_mode!r}")
        if self.path not in ('heun', 'euler'):
            raise ValueError(f"path must be 'heun' or 'euler', not {self.path!r}")

    @property
    def grid_steps(self) -> int:
        """Steps of the training psi-grid."""
        return self.train_steps

    def form(self) -> str:
        """The progress form and its choices."""
        return ('progress domain (eqs. 9/14 in psi, budget int dpsi/theta = U): local Lagrangian gradient '
                'q - gamma/theta**2 by likelihood ratio of log-normal exploration, baseline ' + self.baseline +
                ', budget by exact renormalisation (gamma = C/B), actor ' + self.actor +
                ('' if self.pool is None else ', error densities of the adaptive estimate\'s trajectories replayed'
                 if self.pool == ADAPTIVE else f', error densities of {self.pool} trajectories replayed'))

    def feature_names(self) -> list[str]:
        """The actor sees where it is in progress: psi/U, or the psi-grid index for the table."""
        return ['psi/U'] if self.actor == 'mlp' else ['psi-grid index']


class Table(nn.Module):
    """Tabular actor: one output a_k per psi-grid step, starting at 0 (mu = 1: EDM's grid)."""

    def __init__(self, size: int):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(size, dtype=torch.float64))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """a on the whole psi-grid (feat holds the grid's psi/U, one row per step)."""
        if feat.shape[0] != self.a.shape[0]:
            raise ValueError(f'the table has {self.a.shape[0]} steps, asked for {feat.shape[0]}')
        return self.a.unsqueeze(-1)


class ProgressLearner(Learner):
    """ART-RL in the progress domain: log-normal policy on the clock speed per psi-step, exact budget, gamma = C/B,
    likelihood-ratio actor with the expected-reward (or critic) baseline; the schedule is the learned clock t(psi)."""

    Config = ProgressConfig
    budget_stat = 't_T_mean'        # E[t_T] / U: the time spent over the budget

    def __init__(self, net, cfg: ProgressConfig, **kwargs):
        super().__init__(net, cfg, **kwargs)
        self.dpsi = self.clock.U / self.grid_steps                               # the uniform psi-grid
        self.v_scale: Optional[float] = None        # critic output scale V = v_scale NN, set from the first batch
        self.pool_q: dict[int, torch.Tensor] = {}   # replay pool: q along trajectory j, computed at first use
        self.pool_record: Optional[dict] = None     # the adaptive pool's size, rule, stop and cost, once made

    def make_actor(self, generator: torch.Generator) -> nn.Module:
        """A table (one a_k per psi-step) or an MLP of psi/U; both start at a = 0 (mu = 1: EDM's grid)."""
        if self.cfg.actor == 'table':
            return Table(self.grid_steps)
        return mlp(1, self.cfg.width, generator)

    @torch.no_grad()
    def densities(self, x: torch.Tensor, labels: Optional[torch.Tensor], iteration: int) -> torch.Tensor:
        """q_k, the mean of q = |Q_u| (eq. M9) over psi-step k (trapezoid of its ends), along the PF-ODE path from x
        (policy-free: eq. R2); [count, M].  |Q| is evaluated at max(sigma, sigma_floor) but the clock's speed at sigma
        itself, so below the floor q follows the clock down to 0 at sigma = 0, as the closed form's qbar does (held at
        its sigma_floor value; docs/art-rl.md §3.4).  The path is followed by Heun or Euler steps on the psi-grid
        (`path`)."""
        cfg, M = self.cfg, self.grid_steps
        sigma = self.levels(torch.arange(M + 1, dtype=torch.float64, device=self.device) * self.dpsi)
        floored = sigma.clamp(min=cfg.sigma_floor)
        speed2 = self.clock.speed2(sigma)                                        # 0 at sigma_M = 0
        step = SOLVER_STEPS[cfg.path]

        def d(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return field(self.net, x, max(float(s), cfg.sigma_floor), labels)

        q_levels = []
        for k in range(M):
            f, Q = error_density(self.net, x, float(floored[k]), labels, mode=cfg.q_mode)
            q_levels.append(q_norm(Q).to(sigma) * speed2[k])
            if not torch.isfinite(q_levels[-1]).all():                           # stop at the first bad level
                raise ARTDivergence(f'non-finite error density at iteration {iteration}, '
                                    f'sigma = {float(floored[k]):.4g}')
            if k + 1 == M:
                break
            x = step(d, x, sigma[k], sigma[k + 1], f)                            # first stage f, at the floor
        q_levels.append(torch.zeros_like(q_levels[-1]))                          # speed2 = 0: q = 0 at sigma_M = 0
        return self.step_means(torch.stack(q_levels, dim=1))

    def step_means(self, q: torch.Tensor) -> torch.Tensor:
        """Each psi-step's q [count, M]: the trapezoid mean of q at its two ends (q [count, M + 1] at the levels)."""
        return (0.5 * (q[:, :-1] + q[:, 1:])).clamp(min=self.cfg.eps)

    def adaptive_pool(self) -> None:
        """The pool of pool='adaptive': the trajectories of the closed form's adaptive estimate (its rule, settings and
        seed: |Q| by forward differences on its fine levels, trajectories doubled until the clock it implies moves
        less than the tolerance, under its budget), their |Q| carried onto the psi-grid log-linearly in
        sigma^(1/rho) and held at the lowest level below it (the closed form's rule), times the clock's speed."""
        settings = AdaptiveSettings()
        try:
            found = adaptive_estimate(self.net, settings, seed=self.cfg.seed)
        except FloatingPointError as exc:
            raise ARTDivergence(f'the replay pool: {exc}') from None
        est = found.estimate
        sigma = self.levels(torch.arange(self.grid_steps + 1, dtype=torch.float64) * self.dpsi)
        v, v_fine = sigma.numpy() ** (1 / grids.RHO), est.sigma[::-1] ** (1 / grids.RHO)      # ascending v_fine
        log_q = np.log(np.maximum(found.q[:, ::-1], np.finfo(np.float64).tiny))
        at_levels = np.exp(np.stack([np.interp(v, v_fine, row) for row in log_q]))
        q = self.step_means(torch.from_numpy(at_levels) * self.clock.speed2(sigma))
        self.pool_q = dict(enumerate(q))
        self.pool_record = dict(found.record(settings), num_samples=est.num_samples, levels=len(est.sigma),
                                evals=est.evals, forward_evals=est.forward_evals, jvp_evals=est.jvp_evals,
                                seconds=est.seconds, made_by='every process, identically')

    def pool_size(self) -> int:
        """Trajectories in the replay pool (the adaptive pool is made here, at first use)."""
        if self.cfg.pool != ADAPTIVE:
            return self.cfg.pool
        if self.pool_record is None:
            self.adaptive_pool()
        return len(self.pool_q)

    def record(self) -> dict:
        """The replay pool, for the schedules' provenance: its rule, size, why it stopped and its cost."""
        if self.cfg.pool == ADAPTIVE:
            return dict(pool=self.pool_record)
        return dict(pool=dict(rule='fixed' if self.cfg.pool else 'fresh rollouts', num_samples=self.cfg.pool,
                              levels=self.grid_steps, q_mode=self.cfg.q_mode))

    def network_evals(self, iters: int) -> dict:
        """Network evaluations of `iters` iterations, all processes: the adaptive pool's, whatever `iters`; else per
        rollout level a forward pass and a JVP (q_mode 'fd': two forward passes), plus the Heun corrector's forward
        pass between levels."""
        if self.cfg.pool == ADAPTIVE:                      # every process makes the same pool (here, if not yet)
            self.pool_size()
            return {key: self.pool_record[key] * self.world for key in ('forward_evals', 'jvp_evals')}
        rollouts, M = self.trajectories(iters), self.grid_steps
        forward = rollouts * (M + (M - 1 if self.cfg.path == 'heun' else 0))
        if self.cfg.q_mode == 'fd':
            return dict(forward_evals=forward + rollouts * M, jvp_evals=0)
        return dict(forward_evals=forward, jvp_evals=rollouts * M)

    def pool_densities(self, rows: list[int], iteration: int) -> torch.Tensor:
        """q of the replay pool's trajectories `rows`, each computed once, pool_batch trajectories per network call.
        Pool trajectory j starts from its own generator (seed, POOL_STREAM, j), so the pool depends on the seed only."""
        missing = sorted(set(rows) - self.pool_q.keys())
        for at in range(0, len(missing), self.cfg.pool_batch):
            chunk = missing[at:at + self.cfg.pool_batch]
            x, labels = self.initial_states([trajectory_generator(self.cfg.seed, POOL_STREAM, j) for j in chunk])
            for j, q in zip(chunk, self.densities(x, labels, iteration).cpu()):
                self.pool_q[j] = q
        return torch.stack([self.pool_q[j] for j in rows]).to(self.device)

    def trajectories(self, iters: int) -> int:
        """Trajectories whose error densities `iters` iterations compute, all processes together (the pool once)."""
        fresh = super().trajectories(iters)
        return fresh if self.cfg.pool is None else min(fresh, self.pool_size())

    @torch.no_grad()
    def rollout(self, iteration: int, first_index: int, count: int) -> dict:
        """Roll out `count` trajectories on the psi-grid: x follows the PF-ODE (policy-free), theta_k =
        mu(psi_k) exp(log_std z_k) is drawn at every step and sets its duration dt_k = dpsi/theta_k (eq. R2).
        With a replay pool the error densities of pool trajectories are replayed in turn (global batch index
        iteration * batch * world + first_index + i, modulo the pool); only the policy noise z is new."""
        cfg, dpsi = self.cfg, self.dpsi
        x, labels, z = self.start(iteration, first_index, count)
        if cfg.pool is None:
            q = self.densities(x, labels, iteration)                             # [count, M]
        else:
            first, size = iteration * cfg.batch * self.world + first_index, self.pool_size()
            q = self.pool_densities([(first + i) % size for i in range(count)], iteration)
        psi = torch.arange(self.grid_steps, dtype=torch.float64, device=self.device) * dpsi
        mu = self.log_mean().exp().expand_as(q)
        theta = mu * (cfg.log_std * z).exp()                                     # eq. R4
        duration = dpsi / theta
        t = torch.cat([torch.zeros_like(duration[:, :1]), duration.cumsum(1)[:, :-1]], dim=1)
        traj = dict(psi=psi.expand_as(q), t=t, q=q, z=z, theta=theta, mu=mu, t_T=duration.sum(1),
                    cost=(q * theta).sum(1) * dpsi)
        if not all(torch.isfinite(v).all() for v in traj.values()):
            raise ARTDivergence(f'non-finite rollout at iteration {iteration}')
        return traj

    def log_mean(self) -> torch.Tensor:
        """log mu_k on the psi-grid: the actor's a(psi_k) shifted so that the mean spends the time budget exactly,
        sum_k dpsi / mu_k = U (eq. R7; the common mode of a is a gauge, the shift carries no gradient)."""
        psi = torch.arange(self.grid_steps, dtype=torch.float64, device=self.device) * self.dpsi
        a = self.actor((psi / self.clock.U).unsqueeze(-1)).squeeze(-1)
        return a + (torch.logsumexp(-a, 0) + math.log(self.dpsi / self.clock.U)).detach()

    def losses(self, traj: dict, qbar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Critic: TD (eq. 22a in psi); actor: likelihood ratio of the log-normal exploration times the advantage.
        qbar: the batch mean of q at each psi-step over all processes (for the preconditioner)."""
        cfg, dpsi, U, gamma, s = self.cfg, self.dpsi, self.clock.U, self.gamma, self.cfg.log_std
        q, theta, z, t, psi = traj['q'], traj['theta'], traj['z'], traj['t'], traj['psi']
        log_mu = self.log_mean()                                                 # log mu(psi_k), shared by the batch
        mu = log_mu.exp().detach()
        V = self.v_scale * self.critic(self.features(t, psi)).squeeze(-1)        # V(t_k, psi_k)
        V_T = torch.full_like(V[:, :1], gamma * U)                               # terminal value gamma U (eq. 9)
        V_next = torch.cat([V[:, 1:], V_T], dim=1).detach()
        with torch.no_grad():
            reward = -(q * theta + gamma / theta) * dpsi                         # eq. R3
            delta = V_next - V.detach() + reward                                 # TD error, eq. 22a
            growth = math.exp(s * s / 2)                                         # E[exp(s z)] = E[exp(-s z)]
            if cfg.baseline == 'critic':
                advantage = delta
            else:                                                                # r - E_z[r | q_k], eq. R5
                advantage = reward + growth * (q * mu + gamma / mu) * dpsi
            coef = z / s * advantage                                             # d log pi / d a = z / s
            if cfg.precondition:                                                 # relative: / expected cost of the step
                coef = coef / (growth * (qbar * mu + gamma / mu) * dpsi)
        critic_loss = -(V * delta).sum(1).mean() / self.v_scale ** 2           # eq. 22a (normalised)
        coef = coef.mean(0)
        actor_loss = -((coef - coef.mean()) * log_mu).sum()                      # gauge-fixed policy gradient on log mu
        with torch.no_grad():
            stats = dict(td_error=delta.pow(2).mean().sqrt(), reward=reward.sum(1).mean(),
                         t_T_mean=traj['t_T'].mean() / U, t_T_std=traj['t_T'].std(unbiased=False) / U,
                         theta_mean=theta.mean(), theta_std=theta.std(unbiased=False),
                         std_over_mu=torch.tensor(math.sqrt(math.exp(s * s) - 1.0), dtype=torch.float64),
                         mu_first=mu[0], mu_last=mu[-1], cost=traj['cost'].mean())
        return critic_loss, actor_loss, stats

    def step(self) -> dict:
        """One iteration: rollout, the budget's multiplier gamma = C/B (eq. R6), critic and actor (Adam)."""
        cfg, U = self.cfg, self.clock.U
        traj = self.rollout(self.iteration, self.rank * cfg.batch, cfg.batch)
        cb = torch.cat([traj['cost'].mean().reshape(1), traj['t_T'].mean().reshape(1), traj['q'].mean(0)])
        cb = self.reduce(cb) if self.reduce is not None else cb                  # batch means over all ranks
        self.gamma = float(cb[0] / cb[1])                                        # eq. R6
        if self.v_scale is None:
            self.v_scale = 2 * self.gamma * U                                    # |C + gamma B| at the budget
        critic_loss, actor_loss, stats = self.losses(traj, qbar=cb[2:])
        _, stats = self.descend(critic_loss + actor_loss, stats)
        return self.finish(self.dpsi / self.policy_sequence(traj), stats)        # time spent per psi-step

    def schedule(self, duration: torch.Tensor, num_steps: int) -> dict:
        """The learned clock t(psi_k) = sum_{j<k} mean normalised time spent, u = t/t_K; the K-step grid read off it."""
        t = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(duration * self.dpsi, 0)])
        u = (t / t[-1]).numpy()
        u[0], u[-1] = 0.0, 1.0
        sigma = self.levels(torch.arange(self.grid_steps + 1, dtype=torch.float64) * self.dpsi)
        sigmas = Clock(u, sigma.numpy()).grid(num_steps).tolist()
        theta = (self.dpsi / (duration * self.dpsi)).tolist()                    # dpsi/dt on the psi-grid
        return dict(sigmas=sigmas, clock=dict(u=u.tolist(), sigma=sigma.tolist()), theta=theta)

    def state_dict(self) -> dict:
        """The base snapshot, the critic's scale and the replay pool's error densities computed so far."""
        rows = sorted(self.pool_q)
        pool = (torch.stack([self.pool_q[j] for j in rows]) if rows
                else torch.zeros(0, self.grid_steps, dtype=torch.float64))
        return dict(super().state_dict(), v_scale=self.v_scale, pool_rows=torch.tensor(rows, dtype=torch.int64),
                    pool_q=pool, pool_record=self.pool_record)

    def load_state_dict(self, state: dict) -> None:
        """Restore a snapshot (see Learner.load_state_dict), the critic's scale and the replay pool."""
        super().load_state_dict(state)
        self.pool_q = dict(zip(state['pool_rows'].tolist(), state['pool_q'].to(torch.float64)))
        self.pool_record = state.get('pool_record')
        self.v_scale = None if state['v_scale'] is None else float(state['v_scale'])
