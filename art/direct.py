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

Optimisation: Adam on z, learning rate cosine-annealed to 0 over a cap of `iters` iterations (default 1000); the
loss is differentiated through an Euler/Heun rollout that calls the network at each level (edm.sampler's
SOLVER_STEPS, as edm.sampler.sample with the linear schedule, no scaling, no churn); gradients are taken with
respect to z only (the network's parameters stay frozen); the state is float64 (analytic models compute in float64
throughout). The fit stops before the cap once it has converged: at a scored iterate, when the lowest training loss
fell by less than the fraction `tol` (0.1%) over the last `window` (100) iterations; provenance['stop'] records the
reason ('converged' or 'cap'), the cap and the rule, and 'iterations' the steps taken; tol = 0 runs the cap. On the
1x8x8 mixture it stops after about 200 iterations, within 0.5% of a 3000-iteration run (docs/method.md, "direct:
when it has converged").

Choosing by held-out error: num_holdout (default 1024) further latents (seeds after the training seeds, still
disjoint from the benchmark's) score every candidate start, every eval_every-th iterate and the last one; the
returned grid is the scored one with the lowest held-out loss, a candidate start included. So direct is the optimum
of the endpoint error as a held-out benchmark sees it, not of its own training set, and never worse on held-out
latents than a warm start it was given (art.methods gives it the closed form's and gits' grids by default). The
held-out set is as large as the training set because the choice among some 30 iterates is noisy: with 256 held-out
latents it picked an excursion 3.7% above the optimum on the 1x8x8 mixture at K = 5.

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

import dataclasses
import math
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from art.analytic import AnalyticModel
from art.latents import TRAIN_SEED_BASE, training_latents
from art.metrics import REFERENCE_STEPS, reference_endpoints
from art.schedules import Schedule, Stopwatch, clock_from_grid, method_provenance
from edm import grids
from edm.grids import check_choice
from edm.sampler import SOLVER_STEPS, nfe
from torch_utils.misc import module_device

INIT_SIGMA_MINS = (0.002, 0.01, 0.05, 0.2, 0.5, 1.0, 2.0)   # starts scanned; 0.002 is EDM's own grid
NUM_LATENTS = 1024                                          # training latents (module docstring)
NUM_HOLDOUT = 1024                                          # held-out latents that choose the returned iterate
MAX_ITERS = 1000                                            # the cap on Adam iterations (the lr anneals over it)
STOP_WINDOW, STOP_TOL = 100, 1e-3                           # converged: < 0.1% lower training loss in 100 iterations


def rollout(net: torch.nn.Module, latents: torch.Tensor, sigmas: torch.Tensor, class_labels: Optional[torch.Tensor],
            solver: str) -> torch.Tensor:
    """Differentiable solve from latents * sigmas[0] over the grid by edm.sampler's steps, in float64: `sample` with
    the linear schedule, no scaling and no churn (Heun's last step is Euler)."""
    def d(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return (x - net(x, sigma, class_labels).to(torch.float64)) / sigma

    step = SOLVER_STEPS[solver]
    x = latents.to(torch.float64) * sigmas[0]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = step(d, x, sigma, sigma_next, d(x, sigma))
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


def candidate_grids(net: torch.nn.Module, num_steps: int, init: str, init_sigma_mins: Sequence[float],
                    init_grids: Optional[dict], sigma_max: float) -> Dict[str, np.ndarray]:
    """The named candidate starts, each from sigma_max: the `init` grid for every sigma_min of init_sigma_mins below
    sigma_max, then the given init_grids."""
    candidates = {f'{init} sigma_min={m:g}': grids.make_sigmas(init, num_steps, sigma_min=m, sigma_max=sigma_max,
                                                               net=net) for m in init_sigma_mins if m < sigma_max}
    for name, grid in (init_grids or {}).items():
        if len(grid) != num_steps + 1:
            raise ValueError(f'init_grids[{name!r}] has {len(grid) - 1} steps, not {num_steps}')
        candidates[name] = grid
    if not candidates:
        raise ValueError(f'no init_sigma_mins value lies below sigma_max = {sigma_max} and no init_grids')
    starts = {}
    for name, grid in candidates.items():
        starts[name] = np.array(grid, dtype=np.float64)
        starts[name][0] = sigma_max
    return starts


class EndpointLoss:
    """The objective: mean |x_K - x_ref|^2 of the rollout over the grid of logits z, on the training latents (seeds
    first_seed..) or the held-out ones after them, x_ref their reference endpoints; counts what it spends."""

    def __init__(self, net: torch.nn.Module, solver: str, sigma_max: float, num_latents: int, num_holdout: int,
                 first_seed: int, batch_size: int, reference: tuple):
        watch = Stopwatch()
        self.net, self.solver, self.sigma_max, self.batch_size = net, solver, sigma_max, batch_size
        self.first_seed, self.reference = first_seed, reference
        self.latents, self.labels = training_latents(net, num_latents + num_holdout, first_seed, module_device(net))
        with torch.no_grad():
            self.target = reference_endpoints(net, self.latents, sigma_max, self.labels, steps=reference[1],
                                              solver=reference[0]).to(torch.float64)
        self.train, self.holdout = slice(0, num_latents), slice(num_latents, num_latents + num_holdout)
        self.analytic = isinstance(net, AnalyticModel)                  # the reference is exact
        self.reference_cpu_seconds = watch.seconds()['cpu_seconds']
        self.forward_evals = self.backward_evals = 0                    # per-sample network passes (module docstring)

    def __call__(self, z: torch.Tensor, with_grad: bool = False, holdout: bool = False) -> float:
        """The mean over the training (or held-out) latents, accumulating d/dz into z.grad when with_grad."""
        which = self.holdout if holdout else self.train
        total, count = 0.0, which.stop - which.start
        for start in range(which.start, which.stop, self.batch_size):
            part = slice(start, min(start + self.batch_size, which.stop))
            with torch.set_grad_enabled(with_grad):
                x = rollout(self.net, self.latents[part], grid_from_logits(z, self.sigma_max),
                            None if self.labels is None else self.labels[part], self.solver)
                loss = (x - self.target[part]).flatten(1).square().sum(1).sum() / count
            if with_grad:
                grad, = torch.autograd.grad(loss, [z])      # d/dz only: the network's parameters stay frozen
                z.grad = grad if z.grad is None else z.grad + grad
            total += loss.item()
        evals = nfe(len(z), self.solver) * count
        self.forward_evals += evals
        self.backward_evals += evals if with_grad else 0
        return total

    def cost(self) -> dict:
        """The network evaluations spent so far and the reference solve's cost (module docstring)."""
        reference_solver, reference_steps = self.reference
        num = self.holdout.stop
        return {'forward_evals': self.forward_evals, 'backward_evals': self.backward_evals,
                'reference_forward_evals': None if self.analytic else num * nfe(reference_steps, reference_solver),
                'reference_cpu_seconds': self.reference_cpu_seconds}


@dataclasses.dataclass
class Fit:
    """What the fit went through: each candidate start's (training loss, logits, held-out loss), the start taken, the
    training loss of every iteration, the scored points (held-out loss, training loss, where, logits) and why it
    stopped ('converged' or 'cap')."""
    starts: dict
    start: str
    history: list
    scored: list
    stop: str = 'cap'

    @property
    def best(self) -> tuple:
        """The scored point with the lowest held-out loss."""
        return min(self.scored, key=lambda row: row[0])

    @property
    def iterations(self) -> int:
        """The Adam steps taken (a converged fit stops at a scored iterate before its step)."""
        return len(self.history) - (self.stop == 'converged')


def converged(history: Sequence[float], window: int, tol: float) -> bool:
    """The lowest training loss improved by less than the fraction tol over the last `window` iterations (tol = 0:
    never, since the lowest over more iterations can only be lower)."""
    n = len(history)
    return n >= 2 * window and min(history) > (1 - tol) * min(history[:n - window])


def fit(loss: EndpointLoss, starts: Dict[str, torch.Tensor], iters: int, lr: float, eval_every: int,
        window: int, tol: float) -> Fit:
    """Adam on the logits from the candidate start with the lowest training loss, lr cosine-annealed to 0 over `iters`
    (the cap); every candidate start, every eval_every-th iterate and the last one are scored on the held-out latents;
    at each scored iterate the fit stops if it has converged (`converged`)."""
    scored = []

    def score(z: torch.Tensor, train_loss: float, where) -> float:
        held_out = loss(z.detach(), holdout=True)
        scored.append((held_out, train_loss, where, z.detach().clone()))
        return held_out

    scanned = {}
    for name, z in starts.items():
        train_loss = loss(z)
        scanned[name] = (train_loss, z, score(z, train_loss, f'start {name}'))
    start = min(scanned, key=lambda key: scanned[key][0])
    logits = scanned[start][1].clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(int(iters), 1))
    history = []
    steps = int(len(logits) > 1) * iters            # K = 1 has no interior level to learn
    for iteration in range(steps):
        optimizer.zero_grad(set_to_none=True)
        history.append(loss(logits, with_grad=True))
        if iteration and iteration % eval_every == 0:   # iteration 0 is the start, scored above
            score(logits, history[-1], iteration)
            if converged(history, window, tol):         # the iterate just scored is the last one
                return Fit(scanned, start, history, scored, 'converged')
        optimizer.step()
        annealing.step()
    score(logits, loss(logits.detach()), steps)
    return Fit(scanned, start, history, scored)


def provenance_fields(result: Fit, loss: EndpointLoss, init: str, iters: int, lr: float, eval_every: int,
                      window: int, tol: float, seed: int) -> dict:
    """The provenance of a direct grid, apart from the network, the cost and the code version."""
    num_steps = len(result.starts[result.start][1])
    first, num, num_holdout = loss.first_seed, loss.train.stop, loss.holdout.stop - loss.holdout.start
    reference_solver, reference_steps = loss.reference
    return {
        'method_source': 'LD3 (Tong et al. 2024, Learning to Discretize Denoising Diffusion ODEs), plain squared error',
        'objective': 'mean over training latents of |x_K - x_ref|^2, x_ref the reference PF-ODE endpoint '
                     '(art.metrics.reference_endpoints) of the same latents',
        'parametrisation': f'sigma^(1/{grids.RHO:g}) from sigma_max to 0 by K increments v_0 softmax(z), K free logits',
        'init': {'discretization': init,
                 'candidates_training_rms': {k: math.sqrt(v[0]) for k, v in result.starts.items()},
                 'candidates_holdout_rms': {k: math.sqrt(v[2]) for k, v in result.starts.items()},
                 'rule': 'start from the candidate grid with the lowest training rms', 'start': result.start,
                 'sigmas': grid_from_logits(result.starts[result.start][1], loss.sigma_max).tolist()},
        'num_steps_built_for': num_steps, 'iterations': result.iterations,
        'stop': {'reason': result.stop, 'cap': int(iters) if num_steps > 1 else 0,
                 'rule': f'stop at a scored iterate once the lowest training loss improved by less than {tol:g} '
                         f'(relative) over the last {window} iterations (at least {2 * window} iterations), else at '
                         'the cap'},
        'optimizer': 'adam, lr cosine-annealed to 0 over the cap', 'lr': lr, 'batch_size': loss.batch_size,
        'latents': {'num': num, 'seeds': f'{first}-{first + num - 1}', 'sigma_max': loss.sigma_max},
        'holdout': {'num': num_holdout, 'seeds': f'{first + num}-{first + num + num_holdout - 1}',
                    'eval_every': eval_every, 'returned': result.best[2],
                    'loss_history': [row[0] for row in result.scored if not isinstance(row[2], str)]},
        'seed': seed, 'returned': 'lowest held-out loss among the candidate starts and the scored iterates (every '
                                  'eval_every, final)',
        'reference': ('exact (DOP853, rtol 1e-11)' if loss.analytic
                      else f'{reference_solver}, EDM rho=7 grid, {reference_steps} steps'),
        'final_training_loss': result.best[1], 'start_training_loss': result.starts[result.start][0],
        'loss_history_every_10': result.history[::10],
    }


def direct_schedule(net: torch.nn.Module, num_steps: int, network: Optional[str] = None, solver: str = 'euler',
                    num_latents: int = NUM_LATENTS, iters: int = MAX_ITERS, lr: float = 0.05, seed: int = 0,
                    init: str = 'edm', init_sigma_mins: Sequence[float] = INIT_SIGMA_MINS,
                    init_grids: Optional[dict] = None, sigma_max: Optional[float] = None, batch_size: int = 256,
                    num_holdout: int = NUM_HOLDOUT, eval_every: int = 10, window: int = STOP_WINDOW,
                    tol: float = STOP_TOL, reference: tuple = ('heun', REFERENCE_STEPS)) -> Schedule:
    """LD3-style grid: Adam on the K-1 interior levels to minimise the squared endpoint error, for at most `iters`
    iterations, stopping once converged (window, tol: `converged`; tol = 0 runs the cap) (module docstring)."""
    check_choice('solver', solver, ('euler', 'heun'))
    check_choice('init', init, grids.DISCRETIZATIONS)
    grids.check_num_steps(num_steps)
    if (num_latents < 1 or iters < 0 or not lr > 0 or batch_size < 1 or num_holdout < 1 or eval_every < 1
            or window < 1 or not 0 <= tol < 1):
        raise ValueError(f'need num_latents, batch_size, num_holdout, eval_every, window >= 1, iters >= 0, lr > 0 and '
                         f'0 <= tol < 1, got {num_latents}, {batch_size}, {num_holdout}, {eval_every}, {window}, '
                         f'{iters}, {lr}, {tol}')
    sigma_max = grids.horizon(net) if sigma_max is None else float(sigma_max)
    watch = Stopwatch()
    loss = EndpointLoss(net, solver, sigma_max, num_latents, num_holdout, TRAIN_SEED_BASE + seed, batch_size,
                        reference)
    candidates = candidate_grids(net, int(num_steps), init, init_sigma_mins, init_grids, sigma_max)
    device = module_device(net)
    result = fit(loss, {name: logits_from_grid(grid).to(device) for name, grid in candidates.items()}, iters, lr,
                 eval_every, window, tol)
    best_holdout, best_loss, _, best_logits = result.best
    start_loss, _, start_holdout = result.starts[result.start]
    sigmas = grid_from_logits(best_logits, sigma_max).cpu().numpy()
    sigmas[0], sigmas[-1] = sigma_max, 0.0
    fields = provenance_fields(result, loss, init, iters, lr, eval_every, window, tol, seed)
    provenance = method_provenance(network, fields, dict(loss.cost(), **watch.seconds()))
    metrics = {'train_rms': math.sqrt(best_loss), 'train_rms_start': math.sqrt(start_loss),
               'holdout_rms': math.sqrt(best_holdout), 'holdout_rms_start': math.sqrt(start_holdout)}
    return Schedule('direct', sigmas, solver=solver, clock=clock_from_grid(sigmas), provenance=provenance,
                    metrics=metrics)
