"""The paper's ART-RL learner: actor-critic on a uniform grid of the clock t (P1 Algorithm 1; the 'paper' preset).

Notation of docs/method.md: the clock t runs on a uniform grid t_k = k dt, dt = U / K; the policy draws the clock
speed theta ~ N(mu, lam/|Q|) (eq. 11); psi advances by theta dt and x by the Euler step of the deployed sampler between
the noise levels sigma(psi) (eq. 4); the running reward is -(gamma theta + |Q| theta**2) dt (eq. 9); the critic is
V = NN + lam t (eq. 20), updated by TD (eq. 22a); the actor by the likelihood ratio times the TD error (eq. 22b);
gamma by stochastic approximation of the budget (eq. 23).  The grid is distilled from the mean clock speed of the last
trajectories (docs/method.md §6.3).  docs/art-rl.md §2 lists where this learner departs from the paper.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch
from torch import nn

from art.error_density import error_density, q_norm
from art.rl import ARTDivergence, Learner, LearnerConfig, mlp
from art.schedules import Clock


@dataclasses.dataclass(kw_only=True)
class TimeConfig(LearnerConfig):
    """Settings of the paper's learner; the defaults are the paper's (P1 App. C)."""
    lam: float = 0.1                 # lambda: policy variance lam / (|Q| v eps), eq. 11
    gamma_lr: float = 1e-4           # step of the stochastic approximation, eq. 23
    gamma_init: float = 0.0          # gamma at iteration 0
    mean_param: str = 'linear'       # 'linear': mu = NN (the paper); 'exp': mu = exp(NN), positive
    variance_reduction: bool = False  # expected reward in the TD error, analytic immediate gradient, mean baseline
    theta_floor: float = 1e-3        # distilled theta >= theta_floor * its mean, so the grid is strictly monotone
    train_steps: Optional[int] = None  # None: train on the K-step grid (per-K, the paper); else a finer clock grid

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mean_param not in ('linear', 'exp'):
            raise ValueError(f"mean_param must be 'linear' or 'exp', not {self.mean_param!r}")
        if not self.lam > 0:
            raise ValueError('lam must be positive')
        if self.train_steps is not None and self.train_steps < 1:
            raise ValueError('train_steps must be positive')

    @property
    def grid_steps(self) -> int:
        """Steps of the training t-grid: train_steps, or the deployed K."""
        return self.train_steps or self.steps

    def form(self) -> str:
        """The paper's form."""
        return 'paper (eqs. 22a/22b/23)'

    def feature_names(self) -> list[str]:
        """Time-only features."""
        return ['t/U', 'psi/U']


class TimeLearner(Learner):
    """ART-RL as in the paper: Gaussian policy on theta, critic V = NN + lam t, TD and policy-gradient updates, gamma
    by stochastic approximation; the schedule is the mean clock speed as a function of t."""

    Config = TimeConfig

    def __init__(self, net, cfg: TimeConfig, **kwargs):
        super().__init__(net, cfg, **kwargs)
        self.dt = self.clock.U / self.grid_steps                                 # the uniform t-grid
        self.gamma = float(cfg.gamma_init)

    def make_actor(self, generator: torch.Generator) -> nn.Module:
        """MLP of (t/U, psi/U) whose output starts at mu = 1: the grid uniform in the clock (EDM's for rho = 7)."""
        actor = mlp(2, self.cfg.width, generator)
        if self.cfg.mean_param == 'linear':
            with torch.no_grad():
                actor[-1].bias.fill_(1.0)
        return actor

    def mean(self, feat: torch.Tensor) -> torch.Tensor:
        """Policy mean mu (eq. 20)."""
        out = self.actor(feat).squeeze(-1)
        return out.exp() if self.cfg.mean_param == 'exp' else out

    def value(self, feat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Critic V = NN + lam t (eq. 20, Thm 3.1)."""
        return self.critic(feat).squeeze(-1) + self.cfg.lam * t

    @torch.no_grad()
    def rollout(self, iteration: int, first_index: int, count: int) -> dict:
        """Roll out `count` trajectories (global indices first_index...) under the current policy, frozen net."""
        cfg, K, dt, dev = self.cfg, self.grid_steps, self.dt, self.device
        x, labels, z = self.start(iteration, first_index, count)
        psi = torch.zeros(count, dtype=torch.float64, device=dev)
        t_all, psi_all, theta_all, q_all, mu_all = [], [], [], [], []
        for k in range(K):
            t = torch.full_like(psi, k * dt)
            sigma = self.clock.sigma(psi)
            sigma_eval = sigma.clamp(min=cfg.sigma_floor)                        # psi itself is never clipped
            f, Q = error_density(self.net, x, sigma_eval, labels)
            q = (q_norm(Q).to(psi) * self.clock.speed2(sigma_eval)).clamp(min=cfg.eps)  # |Q_u| v eps, eq. M9
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

    def losses(self, traj: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Surrogate losses whose gradients are minus the ascent directions of eqs. 22a/22b, per trajectory mean."""
        cfg, dt, U = self.cfg, self.dt, self.clock.U
        t, psi, theta, q = traj['t'], traj['psi'], traj['theta'], traj['q']
        feat = self.features(t, psi)
        V = self.value(feat, t)                                                  # V_k, k < K
        V_T = torch.full_like(V[:, :1], (self.gamma + cfg.lam) * U)              # terminal (gamma + lam) U, eq. 16
        V_next = torch.cat([V[:, 1:], V_T], dim=1).detach()
        mu = self.mean(feat)
        reward = -(self.gamma * theta + q * theta ** 2)                          # running reward, eq. 9
        with torch.no_grad():
            if cfg.variance_reduction:                                           # docs/art-rl.md §2
                reward_mean = -(self.gamma * mu + q * mu ** 2 + cfg.lam)         # E_pi[reward], eq. M7
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
        """One iteration: roll out `batch` trajectories, update critic and actor (Adam) and gamma (eq. 23)."""
        cfg = self.cfg
        traj = self.rollout(self.iteration, self.rank * cfg.batch, cfg.batch)
        critic_loss, actor_loss, stats = self.losses(traj)
        d_gamma = cfg.gamma_lr * (traj['psi_T'] - self.clock.U).mean()          # eq. 23
        d_gamma, stats = self.descend(critic_loss + actor_loss, stats, d_gamma)
        self.gamma += float(d_gamma[0])
        return self.finish(self.policy_sequence(traj), stats)

    def schedule(self, theta: torch.Tensor, num_steps: int) -> dict:
        """The grid of the mean normalised clock speed theta(t_k): psi = cumulative sum, sigma = sigma(psi); another K
        is read off that clock (PCHIP of sigma^(1/7) at u = i/K, art.schedules.Clock)."""
        if not (theta > 0).any():
            raise ARTDivergence('the policy mean is not positive anywhere: no schedule to distill')
        theta = theta.clamp(min=self.cfg.theta_floor * float(theta.clamp(min=0).mean()))
        theta = theta * self.clock.U / (theta.sum() * self.dt)
        sigma = self.levels(torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(theta * self.dt, 0)]))
        u = np.linspace(0, 1, self.grid_steps + 1)
        sigmas = sigma.tolist()
        if num_steps != self.grid_steps:
            sigmas = Clock(u, sigma.numpy()).grid(num_steps).tolist()
        return dict(sigmas=sigmas, clock=dict(u=u.tolist(), sigma=sigma.tolist()), theta=theta.tolist())
