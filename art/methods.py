"""The schedule methods by name (the one registry: train_art.py --method, art.bench, art.report) and the maker of the
methods that need no run directory, for any K.

ART-RL learns in a run directory with resumable snapshots (art/train.py); the others are made in one call.
"""

from typing import Dict, Optional

import torch

from art.closed_form import closed_form_schedule
from art.direct import direct_schedule
from art.gits import GitsTable, gits_schedule, gits_table
from art.schedules import Schedule

METHODS = {
    'art-rl': 'ART-RL: the paper\'s actor-critic or the progress-domain learner (art/rl_time.py, art/rl_progress.py)',
    'closed-form': 'training-free ART: the open-loop optimum of the same objective (art/closed_form.py)',
    'direct': 'LD3-style: the grid optimised through the sampler against reference endpoints (art/direct.py)',
    'gits': 'GITS-style: dynamic programming over a fine teacher grid (art/gits.py)',
}
MAKER_METHODS = tuple(name for name in METHODS if name != 'art-rl')   # made by ScheduleMaker, no run directory
# Solvers a method's schedule is optimised for: direct and gits differentiate or tabulate Euler/Heun steps; the
# closed form and ART-RL optimise the Euler error density, whatever solver later uses their grid.
SOLVER_SPECIFIC = {'direct': ('euler', 'heun'), 'gits': ('euler', 'heun')}


class ScheduleMaker:
    """Makes one method's schedule for any K, once per K; the closed form's clock and the gits cost table do not
    depend on K and are computed once."""

    def __init__(self, method: str, net: torch.nn.Module, network: Optional[str], solver: str = 'euler',
                 options: Optional[dict] = None, clock: Optional[Schedule] = None):
        """`clock`: closed-form only, a schedule of the method made earlier (a shipped file) whose clock then serves
        every K instead of a new estimate."""
        if clock is not None and (method != 'closed-form' or clock.method != method or clock.clock is None):
            raise ValueError('only a closed-form schedule with a clock can stand in for the closed-form estimate')
        if method not in MAKER_METHODS:
            raise ValueError(f'unknown schedule method {method!r}; expected one of {", ".join(MAKER_METHODS)}')
        if solver not in SOLVER_SPECIFIC.get(method, (solver,)):
            raise ValueError(f'{method} makes grids for the {" and ".join(SOLVER_SPECIFIC[method])} solvers, not '
                             f'{solver}')
        self.method, self.net, self.network, self.solver = method, net, network, solver
        self.options = dict(options or {})
        # direct: makers whose grids are candidate starts; by default the closed form's and gits', so that direct
        # begins from the best grid known and stays the limit the other methods are measured against.
        default_starts = ['closed-form', 'gits'] if method == 'direct' else []
        self.warm_start = self.options.pop('warm_start', None)
        if self.warm_start is None:
            self.warm_start = [ScheduleMaker(name, net, network, solver) for name in default_starts]
        self._closed_form: Optional[Schedule] = clock
        self._gits: Optional[GitsTable] = None
        self._made: Dict[int, Schedule] = {}

    def __call__(self, num_steps: int) -> Schedule:
        """The schedule for K = num_steps."""
        if num_steps not in self._made:
            self._made[num_steps] = self._make(num_steps)
        return self._made[num_steps]

    def _make(self, num_steps: int) -> Schedule:
        if self.method == 'closed-form':
            if self._closed_form is None:
                self._closed_form = closed_form_schedule(self.net, num_steps, network=self.network, **self.options)
            return self._closed_form.resample(num_steps)
        if self.method == 'direct':
            starts = {maker.method: maker(num_steps).sigmas for maker in self.warm_start}
            return direct_schedule(self.net, num_steps, network=self.network, solver=self.solver, init_grids=starts,
                                   **self.options)
        if self._gits is None:                     # the teacher and the jump costs serve every K
            self._gits = gits_table(self.net, self.solver, **self.options)
        return gits_schedule(self.net, num_steps, network=self.network, solver=self.solver, table=self._gits)
