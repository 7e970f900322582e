"""GITS-style grid: dynamic programming over a fine teacher grid for the K-jump path that stays closest to the teacher.

Source: Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling" (GITS). Their observation is
that PF-ODE trajectories are regular enough that a grid chosen on a few teacher trajectories transfers to all; the
grid is found by dynamic programming over a fine teacher grid with a one-step deviation cost.

Here:
- teacher: Heun on the EDM rho = 7 grid with fine_steps levels (sigma_max = min(80, net.sigma_max) down to
  sigma_min = max(0.002, net.sigma_min)) and then 0, from x_T = latents * sigma_max; the teacher states x_i at every
  level and the field f_i = (x_i - D(x_i; sigma_i))/sigma_i at every positive level are kept;
- cost(i -> j), i < j, is the mean over latents of |x_j - step(x_i, sigma_i -> sigma_j)|^2 for one step of the
  student's solver (Euler: x_i + h f_i; Heun: the trapezoid with predictor x_i + h f_i and the field at sigma_j,
  except that a step to sigma = 0 is Euler, as edm.sampler);
- the grid is the min-cost path from level 0 to the last level (sigma = 0) with exactly K jumps (``min_cost_path``).

Cost (provenance['cost']), in per-sample network forward passes: the teacher costs 2 fine_steps - 1 per latent; Euler
jumps reuse the teacher's f_i (one evaluation per level per latent, shared by every j), so they cost nothing more;
Heun jumps need the field at the predicted point for every pair i < j < fine_steps, fine_steps (fine_steps - 1)/2 per
latent. The dynamic programme is O(K fine_steps^2) on the cost matrix and needs no network.
"""

import dataclasses
from typing import Optional, Tuple

import numpy as np
import torch

from art.latents import TRAIN_SEED_BASE, training_latents
from art.schedules import Schedule, Stopwatch, clock_from_grid, method_provenance
from edm import grids
from edm.grids import check_choice
from edm.sampler import SOLVER_STEPS, euler_step
from torch_utils.misc import module_device

def min_cost_path(cost: np.ndarray, num_steps: int) -> Tuple[list, float]:
    """The path 0 = n_0 < ... < n_K = L-1 minimising sum_k cost[n_k, n_(k+1)] over an L x L matrix (i < j used)."""
    levels = cost.shape[0]
    if not 1 <= num_steps <= levels - 1:
        raise ValueError(f'need 1 <= K <= {levels - 1} jumps on {levels} levels, got K = {num_steps}')
    upper = np.where(np.triu(np.ones((levels, levels), dtype=bool), k=1), cost, np.inf)
    best = np.full(levels, np.inf)                  # best[j]: min cost of reaching level j with k jumps
    best[0] = 0.0
    parents = []
    for _ in range(num_steps):
        total = best[:, None] + upper               # total[i, j]: reach i, then jump i -> j
        parent = np.argmin(total, axis=0)
        best = total[parent, np.arange(levels)]
        parents.append(parent)
    path = [levels - 1]
    for parent in reversed(parents):
        path.append(int(parent[path[-1]]))
    return path[::-1], float(best[-1])


def teacher_grid(net: torch.nn.Module, fine_steps: int, sigma_max: Optional[float] = None) -> np.ndarray:
    """The fine teacher grid: EDM rho = 7, fine_steps levels in the network's range, then 0, starting at sigma_max."""
    sigma_max = grids.horizon(net) if sigma_max is None else float(sigma_max)
    sigmas = grids.make_sigmas('edm', fine_steps, sigma_max=sigma_max, net=net)
    sigmas[0] = sigma_max
    return sigmas


def jump_costs(net: torch.nn.Module, sigmas: np.ndarray, latents: torch.Tensor, class_labels: Optional[torch.Tensor],
               solver: str, batch_size: int = 64) -> Tuple[np.ndarray, int]:
    """cost[i, j] = mean over latents of |x_j - step(x_i, sigma_i -> sigma_j)|^2 along Heun teacher trajectories.

    Returns the (L x L) matrix (inf on and below the diagonal) and the per-sample network forward passes spent.
    """
    check_choice('solver', solver, ('euler', 'heun'))
    s = torch.as_tensor(sigmas, dtype=torch.float64, device=latents.device)
    levels, num = len(s), latents.shape[0]
    cost = np.full((levels, levels), np.inf)
    cost[np.triu_indices(levels, k=1)] = 0.0
    evals = 0
    heun, jump = SOLVER_STEPS['heun'], SOLVER_STEPS[solver]

    with torch.no_grad():
        for start in range(0, num, batch_size):
            x = latents[start:start + batch_size].to(torch.float64) * s[0]
            c = None if class_labels is None else class_labels[start:start + batch_size]

            def field(x: torch.Tensor, sigma: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
                nonlocal evals
                evals += len(x)
                return (x - net(x, sigma, labels).to(torch.float64)) / sigma.reshape(-1, *[1] * (x.ndim - 1))

            def f(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                """The field at x [n, ...] and one level, as the samplers call, or at x [J, n, ...] and levels
                [J, 1, ...], batch_size rows a call."""
                if sigma.ndim == 0:
                    return field(x, sigma, c)
                flat, levels_flat = x.reshape(-1, *x.shape[2:]), sigma.reshape(-1, 1).expand(x.shape[:2]).reshape(-1)
                labels = None if c is None else c.repeat(x.shape[0], *[1] * (c.ndim - 1))
                return torch.cat([field(flat[k:k + batch_size], levels_flat[k:k + batch_size],
                                        None if labels is None else labels[k:k + batch_size])
                                  for k in range(0, len(flat), batch_size)]).reshape(x.shape)

            states, fields = [x], []
            for i in range(levels - 1):             # the teacher: Heun, last step (to 0) Euler
                fields.append(f(x, s[i]))
                x = heun(f, x, s[i], s[i + 1], fields[-1])
                states.append(x)
            teacher = torch.stack(states)           # [levels, n, ...]
            for i in range(levels - 1):             # one step from level i to every j > i; the step to 0 is Euler
                s_j = s[i + 1:-1].reshape(-1, *[1] * x.ndim)                # [levels-2-i, 1, ...]
                steps = [jump(f, teacher[i], s[i], s_j, fields[i])] if i < levels - 2 else []
                steps.append(euler_step(f, teacher[i], s[i], s[-1], fields[i]).unsqueeze(0))
                err = (teacher[i + 1:] - torch.cat(steps)).flatten(2).square().sum(2).sum(1)   # sum over the batch
                cost[i, i + 1:] += err.cpu().numpy() / num
    return cost, evals


@dataclasses.dataclass
class GitsTable:
    """The K-independent part of GITS: the teacher grid and the jump-cost matrix, with what they cost."""
    fine: np.ndarray
    cost: np.ndarray
    solver: str
    num_latents: int
    first_seed: int
    forward_evals: int
    seconds: dict            # CPU and wall seconds (Stopwatch.seconds)


def gits_table(net: torch.nn.Module, solver: str = 'euler', fine_steps: int = 100, num_latents: int = 256,
               seed: int = 0, sigma_max: Optional[float] = None, batch_size: int = 64) -> GitsTable:
    """Teacher trajectories on the fine grid and the cost of every one-step jump along them: computed once, it serves
    every K (each K is a shortest path through the same matrix)."""
    if num_latents < 1 or batch_size < 1:
        raise ValueError(f'need num_latents >= 1 and batch_size >= 1, got {num_latents}, {batch_size}')
    watch = Stopwatch()
    fine = teacher_grid(net, fine_steps, sigma_max)
    first_seed = TRAIN_SEED_BASE + seed
    latents, labels = training_latents(net, num_latents, first_seed, module_device(net))
    cost, evals = jump_costs(net, fine, latents, labels, solver, batch_size)
    return GitsTable(fine, cost, solver, num_latents, first_seed, evals, watch.seconds())


def gits_schedule(net: torch.nn.Module, num_steps: int, network: Optional[str] = None, solver: str = 'euler',
                  fine_steps: int = 100, num_latents: int = 256, seed: int = 0, sigma_max: Optional[float] = None,
                  batch_size: int = 64, table: Optional[GitsTable] = None) -> Schedule:
    """GITS grid: the K-jump subsequence of a fine teacher grid with the least accumulated one-step deviation; `table`
    (from gits_table, same solver) saves recomputing the teacher and the jump costs for another K."""
    grids.check_num_steps(num_steps)
    if table is None:
        table = gits_table(net, solver, fine_steps, num_latents, seed, sigma_max, batch_size)
    if table.solver != solver or len(table.fine) - 1 < num_steps:
        raise ValueError(f'the GITS table is for {table.solver} with {len(table.fine) - 1} levels; need {solver} and '
                         f'at least K = {num_steps}')
    path, total = min_cost_path(table.cost, int(num_steps))
    sigmas = table.fine[path]
    num, first = table.num_latents, table.first_seed
    provenance = method_provenance(network, {
        'method_source': 'GITS (Chen et al. 2024, On the Trajectory Regularity of ODE-based Diffusion Sampling)',
        'objective': 'min over K-jump subsequences of the teacher grid of sum_k cost(n_k -> n_k+1), cost(i -> j) = '
                     'mean over latents |x_teacher(sigma_j) - one solver step from x_teacher(sigma_i)|^2',
        'teacher': {'integrator': 'heun', 'discretization': 'edm', 'rho': 7, 'levels': len(table.fine) - 1,
                    'sigmas': table.fine.tolist()},
        'num_steps_built_for': int(num_steps), 'path': path, 'path_cost': total,
        'latents': {'num': num, 'seeds': f'{first}-{first + num - 1}', 'sigma_max': float(table.fine[0])},
        'seed': first - TRAIN_SEED_BASE,
    }, {'forward_evals': table.forward_evals, 'forward_evals_per_latent': table.forward_evals / num,
        'definition': 'per-sample network forward passes of the table (one table serves every K): teacher '
                      '2 fine_steps - 1 per latent, plus for Heun fine_steps (fine_steps - 1)/2 corrector '
                      'evaluations per latent', **table.seconds})
    return Schedule('gits', sigmas, solver=solver, clock=clock_from_grid(sigmas), provenance=provenance,
                    metrics={'path_cost': total})
