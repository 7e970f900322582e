"""Learn ART timestep schedules for an EDM network (or an analytic model), on one CPU or under torchrun.

    python train_art.py --network=PKL --outdir=runs --steps=5,10 --method=art-rl
    python train_art.py --network=analytic:gauss1d --outdir=runs --steps=10 --batch=8 --lr=3e-4 --gamma-lr=3e-4
    torchrun --standalone --nproc_per_node=8 train_art.py --network=PKL --outdir=runs --steps=10 --preset=images

`--preset=auto` (the default) uses the images preset for image-shaped networks and the paper's for a one-dimensional
model; the preset used is recorded in training_options.json and in each schedule's provenance. Each process rolls out
its own trajectories and the updates use the mean over all processes. The run directory holds training_options.json,
log.txt, stats.jsonl, atomic snapshots and one schedule-k<K>.json per K; `--resume=<run dir>` continues a stopped run
exactly. `--gnet` and `--guidance` learn the schedule on the autoguided field that generate_art.py then integrates
(edm.guidance); the run's network (its options and every schedule's provenance) names the guided field.
"""

from typing import List, Optional

import click
import torch

from dnnlib.util import UserError
from art.networks import DEFAULT_NETWORK, load_network_spec
from art.methods import METHODS
from art.train import (MAX_BATCH, MAX_CF_SAMPLES, MAX_ITERS, MAX_POOL, PRESETS, check_new_run, check_resumed_preset,
                        make_run_dir, new_run_dir, new_run_options, resume_options, train_run)
from edm.cli import SEED, Command, check_output_dir, guidance_options, parse_device, steps_callback
from edm.imagegen import load_on_ranks
from edm.guidance import check_guidance_options, guided_spec
from edm.sampler import SOLVERS
from torch_utils import distributed as dist

@click.command(cls=Command)
@click.option('--network', help='Network pickle, URL or analytic:... spec  [default: the embedded default]',
              metavar='PATH|URL|SPEC', type=str)
@click.option('--outdir', help='Where to make the run directory', metavar='DIR', type=str, default='runs',
              show_default=True)
@click.option('--steps', help='Step budget(s) K, e.g. 10 or 5,10,18', metavar='LIST', type=str, default='10',
              show_default=True, callback=steps_callback())
@click.option('--method', type=click.Choice(list(METHODS)), default='art-rl', show_default=True,
              help='; '.join(f'{name}: {text}' for name, text in METHODS.items()))
@click.option('--preset', type=click.Choice(['auto'] + sorted(PRESETS)), default='auto', show_default=True,
              help='ART-RL learner: paper (the paper\'s time-domain actor-critic, P1 App. C), images (the '
                   'progress-domain learner, docs/art-rl.md), auto (paper for a one-dimensional model, else images)')
@click.option('--iters', help='ART-RL iterations  [default: preset]', metavar='INT', type=click.IntRange(1, MAX_ITERS))
@click.option('--batch', help='Trajectories per process per iteration  [default: preset]', metavar='INT',
              type=click.IntRange(1, MAX_BATCH))
@click.option('--lambda', 'lam', help='Policy variance lambda (paper preset)  [default: 0.1]', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True))
@click.option('--lr', help='Adam learning rate of actor and critic  [default: preset]', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True))
@click.option('--gamma-lr', 'gamma_lr', help='Step of the gamma update, eq. 23 (paper preset)  [default: 1e-4]',
              metavar='FLOAT', type=click.FloatRange(min=0, min_open=True))
@click.option('--pool', help='Images preset: replay the error densities of this many trajectories, computed once  '
                            '[default: those of the closed form\'s adaptive estimate, as many as its rule takes]',
              metavar='INT', type=click.IntRange(1, MAX_POOL))
@click.option('--seed', help='Random seed', metavar='INT', type=SEED, default=0, show_default=True)
@click.option('--snap', help='Iterations between snapshots', metavar='INT', type=click.IntRange(min=1), default=100,
              show_default=True)
@click.option('--cf-samples', help='Trajectories for the closed-form estimate of E|Q|, on 256 levels  [default: '
                                  'adaptive, until the clock stops moving, at most 1,000 evaluations]', metavar='INT',
              type=click.IntRange(1, MAX_CF_SAMPLES))
@click.option('--solver', type=click.Choice(SOLVERS), default='euler', show_default=True,
              help='The solver the grid is made for: direct and gits optimise through it; ART (art-rl, closed-form) '
                   'minimises the Euler error and serves every solver, so it takes euler only')
@click.option('--resume', help='Continue the run in this directory', metavar='DIR', type=str)
@click.option('--desc', help='String to include in the run directory name', metavar='STR', type=str)
@click.option('--device', help='Device  [default: cuda if available, else cpu]', metavar='DEVICE', type=str,
              default=None, callback=parse_device)
@click.option('--trust-pickle', is_flag=True, help='Run the code embedded in the network pickle')
@guidance_options()
@click.pass_context
def main(ctx: click.Context, network: Optional[str], outdir: str, steps: List[int], method: str, preset: str,
         snap: int, cf_samples: Optional[int], solver: str, resume: Optional[str], desc: Optional[str],
         device: torch.device, trust_pickle: bool, gnet: Optional[str], guidance: Optional[float],
         **rl_options) -> None:
    """Learn timestep schedules for a network: ART-RL, training-free ART, or a peer method."""
    guidance = check_guidance_options(gnet, guidance)
    if resume and gnet is not None and network is None:
        raise UserError('--resume continues with the run\'s own network and guide; give --network as well to check '
                        'them against --gnet, or leave out --gnet and --guidance')
    field = None if network is None and gnet is None else guided_spec(network or DEFAULT_NETWORK, gnet, guidance)
    dist.init()
    # Options given on the command line: ART-RL's (named as fields of the learner's config) override the preset's;
    # the run's own must match the run being resumed.
    def given(key: str) -> bool:
        return ctx.get_parameter_source(key) != click.core.ParameterSource.DEFAULT
    rl = {key: value for key, value in rl_options.items() if value is not None and given(key)}
    explicit = {key: value for key, value in dict(steps=steps, method=method, preset=preset, snap=snap,
                                                  cf_samples=cf_samples, solver=solver, outdir=outdir,
                                                  desc=desc).items() if given(key)}
    if resume:
        opts = resume_options(resume, rl, field, explicit)
        run_dir = check_output_dir(resume, '--resume')
    else:
        check_output_dir(outdir, '--outdir')
        check_new_run(steps, method, solver, rl, explicit)
    net = load_on_ranks(lambda spec: load_network_spec(spec, trust_embedded_code=trust_pickle),
                        opts.network if resume else field or DEFAULT_NETWORK, device)
    if resume:
        check_resumed_preset(opts, explicit.get('preset'), net)
    else:
        opts = new_run_options(field or DEFAULT_NETWORK, net, steps, method, preset, dict(rl, seed=rl_options['seed']),
                               snap, cf_samples, solver)
        run_dir = new_run_dir(outdir, desc, opts)
    dist.barrier()                                  # every rank has named the run directory before rank 0 makes it
    if dist.get_rank() == 0 and not resume:
        make_run_dir(run_dir, opts)
    dist.barrier()
    paths = train_run(net, run_dir, opts, device)
    dist.print0('Done: ' + ', '.join(paths))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
