"""Train the shipped diffusers model: a class-conditional UNet2DModel on Fashion-MNIST with diffusers' DDPM recipe.

Runs `training.ddpm.train` in a run folder (resumable: run the same command again to continue; a larger --kimg
extends the run) and copies the last snapshot, a diffusers pipeline folder, to --dest. Reproduce with
    apt-get install dataset-fashion-mnist
    OMP_NUM_THREADS=1 python scripts/train_ddpm_fmnist.py --run-dir=runs/ddpm-fmnist28-cond
"""

import argparse
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dnnlib.util import UserError  # noqa: E402  pylint: disable=wrong-import-position
from training import ddpm  # noqa: E402  pylint: disable=wrong-import-position
from training.dataset import fashion_mnist  # noqa: E402  pylint: disable=wrong-import-position

FMNIST = '/usr/share/datasets/fashion-mnist'


def main() -> int:
    """Parse the options, train or resume, copy the last snapshot to --dest."""
    defaults = ddpm.Recipe()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--run-dir', required=True, help='run folder (training state, snapshots, log.jsonl)')
    parser.add_argument('--data', default=FMNIST, help='folder of the Fashion-MNIST .gz files  [%(default)s]')
    parser.add_argument('--dest', default=None, help='copy the last snapshot to this folder (replaced)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads  [%(default)s]')
    for field in ('kimg', 'batch', 'lr', 'warmup_steps', 'snap_kimg', 'seed'):
        value = getattr(defaults, field)
        parser.add_argument(f'--{field.replace("_", "-")}', type=type(value), default=value,
                            help='[%(default)s]')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = ddpm.Recipe(kimg=args.kimg, batch=args.batch, lr=args.lr, warmup_steps=args.warmup_steps,
                         snap_kimg=args.snap_kimg, seed=args.seed)
    try:
        images, labels = fashion_mnist(args.data, 'train')
        snapshot = ddpm.train(images, labels, args.run_dir, recipe, log=lambda line: print(line, flush=True))
    except UserError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    if args.dest and snapshot:
        shutil.rmtree(args.dest, ignore_errors=True)
        shutil.copytree(snapshot, args.dest)
        print(f'copied {snapshot} to {args.dest}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
