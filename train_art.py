"""Learn ART timestep schedules for an EDM network (or an analytic model), on one CPU or under torchrun.

    python train_art.py --network=PKL --outdir=runs --steps=5,10 --method=art-rl
    python train_art.py --network=analytic:gauss1d --outdir=runs --steps=10 --batch=8 --lr=3e-4 --gamma-lr=3e-4
    torchrun --standalone --nproc_per_node=8 train_art.py --network=PKL --outdir=runs --steps=10 --preset=images

Each process rolls out its own trajectories and the updates use the mean over all processes. The run directory
holds training_options.json, log.txt, stats.jsonl, atomic snapshots and one schedule-k<K>.json per K;
`--resume=<run dir>` continues a stopped run exactly.
"""

import json
import os
from typing import List, Optional

import click
import torch

import dnnlib
from art.networks import DEFAULT_NETWORK, network_name
from art.networks import load_network as load_any_network
from art.rl import PRESETS, ARTConfig
from art.train import METHODS, next_run_dir, train_schedules
from edm.errors import Command, UserError
from edm.generate import int_list_callback, load_network, parse_device
from torch_utils import distributed as dist

@click.command(cls=Command)
@click.option('--network', help='Network pickle, URL or analytic:... spec  [default: the embedded default]',
              metavar='PATH|URL|SPEC', type=str)
@click.option('--outdir', help='Where to make the run directory', metavar='DIR', type=str, default='runs',
              show_default=True)
@click.option('--steps', help='Step budget(s) K, e.g. 10 or 5,10,18', metavar='LIST', type=str, default='10',
              show_default=True, callback=int_list_callback(1, 'steps'))
@click.option('--method', type=click.Choice(METHODS), default='art-rl', show_default=True,
              help='art-rl (the paper), closed-form (training-free ART), direct (LD3-style), gits (GITS-style)')
@click.option('--preset', type=click.Choice(sorted(PRESETS)), default='paper', show_default=True,
              help='ART-RL settings: paper (P1 App. C) or images (progress-domain reformulation for image models)')
@click.option('--iters', help='ART-RL iterations  [default: preset]', metavar='INT', type=click.IntRange(min=1))
@click.option('--batch', help='Trajectories per process per iteration  [default: preset]', metavar='INT',
              type=click.IntRange(min=1))
@click.option('--lambda', 'lam', help='Policy variance lambda  [default: preset]', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True))
@click.option('--lr', help='Adam learning rate of actor and critic  [default: preset]', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True))
@click.option('--gamma-lr', 'gamma_lr', help='Step of the gamma update (eq. 23)  [default: preset]', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True))
@click.option('--seed', help='Random seed', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--snap', help='Iterations between snapshots', metavar='INT', type=click.IntRange(min=1), default=100,
              show_default=True)
@click.option('--cf-samples', help='Trajectories for the closed-form estimate of E|Q|', metavar='INT',
              type=click.IntRange(min=1), default=256, show_default=True)
@click.option('--resume', help='Continue the run in this directory', metavar='DIR', type=str)
@click.option('--desc', help='String to include in the run directory name', metavar='STR', type=str)
@click.option('--device', help='Device  [default: cuda if available, else cpu]', metavar='DEVICE', type=str,
              default=None, callback=parse_device)
@click.option('--trust-pickle', is_flag=True, help='Run the code embedded in the network pickle')
@click.pass_context
def main(ctx: click.Context, network: Optional[str], outdir: str, steps: List[int], method: str, preset: str,
         snap: int, cf_samples: int, resume: Optional[str], desc: Optional[str], device: torch.device,
         trust_pickle: bool, **rl_options) -> None:
    """Learn timestep schedules for a network: ART-RL, training-free ART, or a peer method."""
    dist.init()
    # ART-RL options given on the command line (named as ARTConfig fields) override the preset.
    given = {key: value for key, value in rl_options.items() if value is not None
             and ctx.get_parameter_source(key) != click.core.ParameterSource.DEFAULT}
    if resume:
        run_dir, options = resume_options(resume, given, network)
    else:
        network = network or DEFAULT_NETWORK
        rl = dict(PRESETS[preset], **dict(given, seed=rl_options['seed']))      # given options override the preset
        ARTConfig(**dict(rl, steps=steps[0]))                     # validate before making a run directory
        name = desc or f'{method}-{network_name(network)}'
        run_dir = next_run_dir(outdir, f'{name}-k{"_".join(map(str, steps))}'.replace('/', '_'))
        options = dict(network=network, steps=steps, method=method, preset=preset, rl=rl, snap=snap,
                       cf_samples=cf_samples, world_size=dist.get_world_size())
    net = load_network(options['network'], device,
                       loader=lambda spec: load_any_network(spec, trust_embedded_code=trust_pickle))
    if dist.get_rank() == 0:
        os.makedirs(run_dir, exist_ok=True)
        dnnlib.util.atomic_write(os.path.join(run_dir, 'training_options.json'),
                                 lambda f: f.write((json.dumps(options, indent=2) + '\n').encode()))
    dist.barrier()
    logger = dnnlib.util.Logger(os.path.join(run_dir, 'log.txt'), file_mode='a', should_flush=True) \
        if dist.get_rank() == 0 else None
    try:
        dist.print0(f'Run directory: {run_dir}')
        paths = train_schedules(net, run_dir, options['steps'], options['method'], options, options['rl'],
                                options['snap'], device, method_options=method_options(options))
        dist.print0('Done: ' + ', '.join(paths))
    finally:
        if logger is not None:
            logger.close()


def method_options(options: dict) -> dict:
    """Options of the non-RL schedule methods from the run's options."""
    return dict(num_samples=options['cf_samples']) if options['method'] == 'closed-form' else {}


def resume_options(run_dir: str, given: dict, network: Optional[str]) -> tuple:
    """The options of the run being resumed; options given now must not contradict them."""
    path = os.path.join(run_dir, 'training_options.json')
    try:
        with open(path) as f:
            options = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f'--resume={run_dir}: cannot read {path} ({getattr(exc, "strerror", None) or exc})') from None
    if network is not None and network != options['network']:
        raise UserError(f'--resume: the run learned for {options["network"]}, not {network}')
    for key, value in given.items():
        if options['rl'].get(key) != value:
            raise UserError(f'--resume: {key}={value} differs from the run being resumed ({options["rl"].get(key)})')
    return run_dir, options


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
