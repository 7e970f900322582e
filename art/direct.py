"""Direct optimisation of a K-step grid through the sampler: the LD3 idea with a plain squared error.

Source: Tong et al. 2024, "Learning to Discretize Denoising Diffusion ODEs" (LD3). LD3 learns the K-1 interior noise
levels by backpropagating through the few-step solver so that its output matches a teacher's; it uses a slackened
(LPIPS) loss. Here the loss is the plain mean squared endpoint error against the high-accuracy reference of the same
latents (art.metrics.reference_endpoints: exact for analytic models, the `reference` (solver, steps) solve otherwise,
512-step Heun by default), i.e. the square of the rms that art.bench reports, so on analytic models this approaches
the optimum for a given K.

Parametrisation: with rho = 7 and v = sigma^(1/rho), the grid runs v_0 = sigma_max^(1/rho) down to v_K = 0 by K
positive increments v_0 softmax(z) (z: K free logits); sigma_k = v_k^rho. Every z gives a strictly descending grid
with sigma_0 = sigma_max and sigma_K = 0 exactly.

Start: the loss is not convex in z (on mixtures, Euler from EDM's grid with sigma_min = 0.002 descends into a basin
whose last level stays near 0.002, while the best grids end near sigma ~ 1). So the EDM rho = 7 grid (K levels then 0)
is scored for each sigma_min in init_sigma_mins (0.002 is EDM's own grid; forward passes only) and Adam starts from
the best; init_sigma_mins = (0.002,) is the plain EDM start.  `init_grids` adds named candidate starts (e.g. the grids
of the closed form and of gits for the same K, as art.report passes them: a warm start, so that the optimisation
begins from the best grid known; their cost is in their own methods' rows).

Optimisation: Adam on z, learning rate cosine-annealed to 0; the loss is differentiated through an Euler/Heun rollout
that calls the network at each level (the arithmetic of edm.sampler.sample with the linear schedule, no scaling, no
churn); gradients are taken with respect to z only (the network's parameters stay frozen); the state is float64
(analytic models compute in float64 throughout).

Stopping by held-out error: num_holdout further latents (seeds after the training seeds, still disjoint from the
benchmark's) score every candidate start, every eval_every-th iterate and the final one; the returned grid is the
scored one with the lowest held-out loss, a candidate start included. So direct is the optimum of the endpoint error
as a held-out benchmark sees it, not of its own training set, and never worse on held-out latents than a warm start
it was given (art.methods gives it the closed form's and gits' grids by default).

Training set size: the rms is dominated by rare latents whose trajectories pass near the boundaries between mixture
components, so a small training set overfits (docs/bench: 64 latents on the 1x8x8 mixture at K=10 gave training rms
0.53 but 1.73 held out). Hence the default of 1024 training latents, processed in batches of batch_size (default 256)
with the gradients accumulated, and the held-out stopping rule above.

Training latents come from per-seed generators (edm.rng, drawn as art.bench draws them) with seeds
TRAIN_SEED_BASE + seed + i, disjoint from the seeds 0..N-1 that art.bench evaluates on: benchmarks are held out.

Cost (provenance['cost']): forward_evals counts per-sample network forward passes (latents x NFE per pass: one pass per
scanned start, one per iteration, one final, and the held-out passes), backward_evals the per-sample vector-Jacobian
products through the network (iterations x latents x NFE); the reference solve is counted apart
(reference_forward_evals for networks; for analytic models it is an adaptive DOP853 solve whose CPU time is in
reference_cpu_seconds and cpu_seconds).
"""

import math
import time
from typing import Optional, Sequence

import numpy as np
import torch

from art.analytic import AnalyticModel
from art.latents import TRAIN_SEED_BASE, training_latents
from art.metrics import REFERENCE_STEPS, reference_endpoints
from art.schedules import Schedule, clock_from_grid, code_version
from edm import grids
from edm.grids import check_choice
from edm.sampler import nfe
from torch_utils.misc import module_device

INIT_SIGMA_MINS = (0.002, 0.01, 0.05, 0.2, 0.5, 1.0, 2.0)   # starts scanned; 0.002 is EDM's own grid
NUM_LATENTS = 1024                                          # training latents (module docstring)


def rollout(net: torch.nn.Module, latents: torch.Tensor, sigmas: torch.Tensor, class_labels: Optional[torch.Tensor],
            solver: str) -> torch.Tensor:
    """Differentiable Euler/Heun solve from latents * sigmas[0] over the grid (Heun's last step is Euler)."""
    def f(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return (x - net(x, sigma, class_labels).to(torch.float64)) / sigma

    x = latents.to(torch.float64) * sigmas[0]
    num_steps = len(sigmas) - 1
    for i in range(num_steps):
        h = sigmas[i + 1] - sigmas[i]
        d = f(x, sigmas[i])
        if solver == 'euler' or i == num_steps - 1:
            x = x + h * d
        else:
            x = x + 0.5 * h * (d + f(x + h * d, sigmas[i + 1]))
    return x


def grid_from_logits(logits: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """sigma_k = v_k^rho with v_k = v_0 (1 - cumsum(softmax(z))_k): strictly descending, sigma_max down to exactly 0."""
    v0 = sigma_max ** (1 / grids.RHO)
    frac = torch.cumsum(torch.softmax(logits, dim=0), dim=0)[:-1]       # K-1 interior fractions in (0, 1)
    interior = (v0 * (1 - frac)).clamp(min=0) ** grids.RHO
    ends = logits.new_tensor([sigma_max, 0.0])
    return torch.cat([ends[:1], interior, ends[1:]])


def logits_from_grid(sigmas: np.ndarray) -> torch.Tensor:
    """The logits z whose grid is `sigmas` (log of the v-increments; softmax is invariant to their shift)."""
    v = np.asarray(sigmas, dtype=np.float64) ** (1 / grids.RHO)
    return torch.from_numpy(np.log(v[:-1] - v[1:]))


def direct_schedule(net: torch.nn.Module, num_steps: int, network: Optional[str] = None, solver: str = 'euler',
                    num_latents: int = NUM_LATENTS, iters: int = 300, lr: float = 0.05, seed: int = 0,
                    init: str = 'edm', init_sigma_mins: Sequence[float] = INIT_SIGMA_MINS,
                    init_grids: Optional[dict] = None, sigma_max: Optional[float] = None, batch_size: int = 256,
                    num_holdout: int = 256, eval_every: int = 10,
                    reference: tuple = ('heun', REFERENCE_STEPS)) -> Schedule:
    """LD3-style grid: Adam on the K-1 interior levels to minimise the squared endpoint error (module docstring)."""
    check_choice('solver', solver, ('euler', 'heun'))
    check_choice('init', init, grids.DISCRETIZATIONS)
    grids.check_num_steps(num_steps)
    if num_latents < 1 or iters < 0 or not lr > 0 or batch_size < 1 or num_holdout < 1 or eval_every < 1:
        raise ValueError(f'need num_latents, batch_size, num_holdout, eval_every >= 1, iters >= 0 and lr > 0, got '
                         f'{num_latents}, {batch_size}, {num_holdout}, {eval_every}, {iters}, {lr}')
    sigma_max = grids.horizon(net) if sigma_max is None else float(sigma_max)
    device = module_device(net)
    cpu0, wall0 = time.process_time(), time.perf_counter()

    first_seed = TRAIN_SEED_BASE + seed
    latents, labels = training_latents(net, num_latents + num_holdout, first_seed, device)
    with torch.no_grad():
        reference_solver, reference_steps = reference
        target = reference_endpoints(net, latents, sigma_max, labels, steps=reference_steps,
                                     solver=reference_solver).to(torch.float64)
    reference_cpu = time.process_time() - cpu0
    train, holdout = slice(0, num_latents), slice(num_latents, num_latents + num_holdout)

    per_pass = nfe(int(num_steps), solver) * num_latents
    per_holdout = nfe(int(num_steps), solver) * num_holdout
    forward_evals = backward_evals = 0

    def loss_and_grad(z: torch.Tensor, with_grad: bool, which: slice = train) -> float:
        """Mean over the latents `which` of |x_K - x_ref|^2, accumulating d/dz over batches when with_grad."""
        total, count = 0.0, which.stop - which.start
        for start in range(which.start, which.stop, batch_size):
            part = slice(start, min(start + batch_size, which.stop))
            with torch.set_grad_enabled(with_grad):
                x = rollout(net, latents[part], grid_from_logits(z, sigma_max), None if labels is None else
                            labels[part], solver)
                loss = (x - target[part]).flatten(1).square().sum(1).sum() / count
            if with_grad:
                grad, = torch.autograd.grad(loss, [z])      # d/dz only: the network's parameters stay frozen
                z.grad = grad if z.grad is None else z.grad + grad
            total += loss.item()
        return total

    candidates = {f'{init} sigma_min={m:g}': grids.make_sigmas(init, int(num_steps), sigma_min=m, sigma_max=sigma_max,
                                                               net=net) for m in init_sigma_mins if m < sigma_max}
    for name, grid in (init_grids or {}).items():
        grid = np.asarray(grid, dtype=np.float64)
        if len(grid) != num_steps + 1:
            raise ValueError(f'init_grids[{name!r}] has {len(grid) - 1} steps, not {num_steps}')
        candidates[name] = grid
    if not candidates:
        raise ValueError(f'no init_sigma_mins value lies below sigma_max = {sigma_max} and no init_grids')
    history, scored = [], []                        # scored: (held-out loss, training loss, where, logits)

    def score(z: torch.Tensor, train_loss: float, where) -> float:
        nonlocal forward_evals
        held_out = loss_and_grad(z.detach(), with_grad=False, which=holdout)
        scored.append((held_out, train_loss, where, z.detach().clone()))
        forward_evals += per_holdout
        return held_out

    starts = {}                                     # name -> (training loss, logits, held-out loss) of each candidate
    for name, start_sigmas in candidates.items():
        start_sigmas = np.array(start_sigmas, dtype=np.float64)
        start_sigmas[0] = sigma_max
        z = logits_from_grid(start_sigmas).to(device)
        train_loss = loss_and_grad(z, with_grad=False)
        forward_evals += per_pass
        starts[name] = (train_loss, z, score(z, train_loss, f'start {name}'))
    start_name = min(starts, key=lambda key: starts[key][0])
    logits = starts[start_name][1].clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(int(iters), 1))

    steps = int(num_steps > 1) * iters              # K = 1 has no interior level to learn
    for iteration in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_and_grad(logits, with_grad=True)
        forward_evals += per_pass
        backward_evals += per_pass
        history.append(loss)
        if iteration and iteration % eval_every == 0:   # iteration 0 is the start, scored above
            score(logits, loss, iteration)
        optimizer.step()
        annealing.step()
    final_loss = loss_and_grad(logits.detach(), with_grad=False)
    forward_evals += per_pass
    score(logits, final_loss, steps)
    best_holdout, best_loss, best_where, best_logits = min(scored, key=lambda row: row[0])
    start_holdout = starts[start_name][2]

    sigmas = grid_from_logits(best_logits, sigma_max).cpu().numpy()
    sigmas[0], sigmas[-1] = sigma_max, 0.0
    analytic = isinstance(net, AnalyticModel)
    start_loss = starts[start_name][0]
    provenance = {
        'network': network,
        'method_source': 'LD3 (Tong et al. 2024, Learning to Discretize Denoising Diffusion ODEs), plain squared error',
        'objective': 'mean over training latents of |x_K - x_ref|^2, x_ref the reference PF-ODE endpoint '
                     '(art.metrics.reference_endpoints) of the same latents',
        'parametrisation': f'sigma^(1/{grids.RHO:g}) from sigma_max to 0 by K increments v_0 softmax(z), K free logits',
        'init': {'discretization': init, 'candidates_training_rms': {k: math.sqrt(v[0]) for k, v in starts.items()},
                 'candidates_holdout_rms': {k: math.sqrt(v[2]) for k, v in starts.items()},
                 'rule': 'start from the candidate grid with the lowest training rms', 'start': start_name,
                 'sigmas': grid_from_logits(starts[start_name][1], sigma_max).tolist()},
        'num_steps_built_for': int(num_steps), 'iterations': int(iters) if num_steps > 1 else 0,
        'optimizer': 'adam, lr cosine-annealed to 0', 'lr': lr, 'batch_size': batch_size,
        'latents': {'num': num_latents, 'seeds': f'{first_seed}-{first_seed + num_latents - 1}',
                    'sigma_max': sigma_max},
        'holdout': {'num': num_holdout,
                    'seeds': f'{first_seed + num_latents}-{first_seed + num_latents + num_holdout - 1}',
                    'eval_every': eval_every, 'returned': best_where,
                    'loss_history': [row[0] for row in scored if not isinstance(row[2], str)]},
        'seed': seed, 'returned': 'lowest held-out loss among the candidate starts and the scored iterates (every '
                                  'eval_every, final)',
        'reference': ('exact (DOP853, rtol 1e-11)' if analytic
                      else f'{reference_solver}, EDM rho=7 grid, {reference_steps} steps'),
        'final_training_loss': best_loss, 'start_training_loss': start_loss,
        'loss_history_every_10': history[::10],
        'cost': {'forward_evals': forward_evals, 'backward_evals': backward_evals,
                 'reference_forward_evals': None if analytic else (num_latents + num_holdout) * nfe(
                     reference_steps, reference_solver),
                 'reference_cpu_seconds': round(reference_cpu, 3),
                 'cpu_seconds': round(time.process_time() - cpu0, 3),
                 'wall_seconds': round(time.perf_counter() - wall0, 3)},
        'code_version': code_version(),
    }
    metrics = {'train_rms': math.sqrt(best_loss), 'train_rms_start': math.sqrt(start_loss),
               'holdout_rms': math.sqrt(best_holdout), 'holdout_rms_start': math.sqrt(start_holdout)}
    return Schedule('direct', sigmas, solver=solver, clock=clock_from_grid(sigmas), provenance=provenance,
                    metrics=metrics)
