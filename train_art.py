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

import dataclasses
import json
import os
from typing import List, Optional

import click
import torch

import dnnlib
from dnnlib.util import UserError
from art.networks import DEFAULT_NETWORK, load_network_spec, network_name
from art.methods import METHODS, SOLVER_SPECIFIC
from art.train import PRESETS, RunOptions, auto_preset, next_run_dir, rl_config, rl_option_names, train_schedules
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
@click.option('--iters', help='ART-RL iterations  [default: preset]', metavar='INT', type=click.IntRange(min=1))
@click.option('--batch', help='Trajectories per process per iteration  [default: preset]', metavar='INT',
              type=click.IntRange(min=1))
@click.option('--lambda', 'lam', help='Policy variance lambda (paper preset)  [default: 0.1]', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True))
@click.option('--lr', help='Adam learning rate of actor and critic  [default: preset]', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True))
@click.option('--gamma-lr', 'gamma_lr', help='Step of the gamma update, eq. 23 (paper preset)  [default: 1e-4]',
              metavar='FLOAT', type=click.FloatRange(min=0, min_open=True))
@click.option('--pool', help='Images preset: replay the error densities of this many trajectories, computed once, '
                            'instead of new rollouts every iteration  [default: preset]', metavar='INT',
              type=click.IntRange(min=1))
@click.option('--seed', help='Random seed', metavar='INT', type=SEED, default=0, show_default=True)
@click.option('--snap', help='Iterations between snapshots', metavar='INT', type=click.IntRange(min=1), default=100,
              show_default=True)
@click.option('--cf-samples', help='Trajectories for the closed-form estimate of E|Q|', metavar='INT',
              type=click.IntRange(min=1), default=256, show_default=True)
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
         snap: int, cf_samples: int, solver: str, resume: Optional[str], desc: Optional[str],
         device: torch.device, trust_pickle: bool, gnet: Optional[str], guidance: Optional[float],
         **rl_options) -> None:
    """Learn timestep schedules for a network: ART-RL, training-free ART, or a peer method."""
    guidance = check_guidance_options(gnet, guidance)
    if resume and gnet is not None and network is None:
        raise UserError('--resume continues with the run\'s own network and guide; give --network as well to check '
                        'them against --gnet, or leave out --gnet and --guidance')
    field = None if network is None and gnet is None else guided_spec(network or DEFAULT_NETWORK, gnet, guidance)
    dist.init()
    # ART-RL options given on the command line (named as fields of the learner's config) override the preset's.
    given = {key: value for key, value in rl_options.items() if value is not None
             and ctx.get_parameter_source(key) != click.core.ParameterSource.DEFAULT}
    if resume:
        run_dir, opts = resume_options(resume, given, field)
        check_output_dir(run_dir, '--resume')
    else:
        check_output_dir(outdir, '--outdir')
        if solver not in SOLVER_SPECIFIC.get(method, ('euler',)):
            raise UserError(f'--method={method} makes grids for --solver='
                            f'{" or ".join(SOLVER_SPECIFIC.get(method, ("euler",)))}, not {solver}')
    name = desc or f'{method}-{network_name(network or DEFAULT_NETWORK)}'
    network = opts.network if resume else field or DEFAULT_NETWORK
    net = load_on_ranks(lambda spec: load_network_spec(spec, trust_embedded_code=trust_pickle), network, device)
    if not resume:
        chosen = auto_preset(net) if preset == 'auto' else preset
        unknown = [key for key in given if key not in rl_option_names(chosen)]
        if unknown:
            flags = ', '.join(next(p.opts[0] for p in ctx.command.params if p.name == key) for key in unknown)
            raise UserError(f'{flags}: not an option of the {chosen} preset'
                            f'{" (chosen by --preset=auto for this network)" if preset == "auto" else ""}; '
                            f'leave it out or pass another --preset')
        rl = dict(given, seed=rl_options['seed'])
        try:
            rl_config(chosen, rl, steps[0])                        # validate before making a run directory
        except ValueError as exc:
            raise UserError(str(exc)) from None
        run_dir = next_run_dir(outdir, f'{name}-k{"_".join(map(str, steps))}'.replace('/', '_'))
        opts = RunOptions(network=network, steps=steps, method=method, preset=chosen, rl=rl, snap=snap,
                          cf_samples=cf_samples, solver=solver, world_size=dist.get_world_size())
    dist.barrier()                                  # every rank has named the run directory before rank 0 makes it
    if dist.get_rank() == 0:
        os.makedirs(run_dir, exist_ok=True)
        dnnlib.util.atomic_write_json(os.path.join(run_dir, 'training_options.json'), dataclasses.asdict(opts))
    dist.barrier()
    logger = dnnlib.util.Logger(os.path.join(run_dir, 'log.txt'), file_mode='a', should_flush=True) \
        if dist.get_rank() == 0 else None
    try:
        dist.print0(f'Run directory: {run_dir}')
        paths = train_schedules(net, run_dir, opts, device)
        dist.print0('Done: ' + ', '.join(paths))
    finally:
        if logger is not None:
            logger.close()


def resume_options(run_dir: str, given: dict, network: Optional[str]) -> tuple:
    """The options of the run being resumed; options given now must not contradict them."""
    path = os.path.join(run_dir, 'training_options.json')
    try:
        with open(path) as f:
            options = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f'--resume={run_dir}: cannot read {path} ({getattr(exc, "strerror", None) or exc})') from None
    try:
        opts = RunOptions.from_dict(options)
    except (TypeError, ValueError) as exc:
        raise UserError(f'--resume={run_dir}: {path} does not hold the options of a train_art.py run ({exc}); '
                        f'give the run directory train_art.py made') from None
    if network is not None and network != opts.network:
        raise UserError(f'--resume: the run learned for {opts.network}, not {network}')
    try:
        cfg = rl_config(opts.preset, opts.rl, opts.steps[0])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise UserError(f'--resume={run_dir}: the run\'s ART-RL options do not fit this version ({exc}); '
                        f'start a new run') from None
    for key, value in given.items():
        if getattr(cfg, key, None) != value:
            raise UserError(f'--resume: {key}={value} differs from the run being resumed '
                            f'({getattr(cfg, key, "not an option of its preset")})')
    return run_dir, opts


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
