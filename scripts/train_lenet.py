"""Train the LeNet of `fid.py --detector=lenet` and write its shipped files.

Trains `edm.lenet.LeNet` on the Fashion-MNIST train split (60k images) with a fixed seed on one CPU thread, reports
its accuracy on the 10k test split, and writes atomically
    assets/lenet-fmnist.pt                    the weights (a state_dict, read back with torch.load(weights_only=True))
    assets/fid-refs/fmnist-train-lenet.npz    mu and sigma of the 60k train images in its feature space
The reference statistics are those `python fid.py ref --detector=lenet` gives on the train images. Reproduce with
    apt-get install dataset-fashion-mnist && OMP_NUM_THREADS=1 python scripts/train_lenet.py
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dnnlib  # noqa: E402  pylint: disable=wrong-import-position
from dnnlib.util import UserError  # noqa: E402  pylint: disable=wrong-import-position
from edm import fid, lenet  # noqa: E402  pylint: disable=wrong-import-position
from training.dataset import fashion_mnist  # noqa: E402  pylint: disable=wrong-import-position

FMNIST = '/usr/share/datasets/fashion-mnist'


def train(images: torch.Tensor, labels: torch.Tensor, epochs: int, batch: int, lr: float, seed: int) -> lenet.LeNet:
    """Adam on the cross-entropy without augmentation, the learning rate cosine-annealed to 0 over the run."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = lenet.LeNet().train()
    x_all = lenet.to_input(images)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * (len(images) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        total = 0.0
        for i in range(len(images) // batch):
            idx = order[i * batch:(i + 1) * batch]
            loss = torch.nn.functional.cross_entropy(net(x_all[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f'epoch {epoch + 1}/{epochs}: mean loss {total / (len(images) // batch):.4f}', flush=True)
    return net.eval().requires_grad_(False)


def accuracy(detector: lenet.LeNetDetector, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images whose largest logit is their label."""
    with torch.no_grad():
        pred = torch.cat([detector(b, return_features=False).argmax(1) for b in images.split(1000)])
    return float((pred == labels).double().mean())


def main() -> None:
    """Train, evaluate, write the weights and the train-split reference statistics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', default=FMNIST, help='folder of the Fashion-MNIST .gz files  [%(default)s]')
    parser.add_argument('--epochs', type=int, default=10, help='training epochs  [%(default)s]')
    parser.add_argument('--batch', type=int, default=128, help='batch size  [%(default)s]')
    parser.add_argument('--lr', type=float, default=2e-3, help='initial Adam learning rate  [%(default)s]')
    parser.add_argument('--seed', type=int, default=0, help='random seed  [%(default)s]')
    parser.add_argument('--weights', default=lenet.WEIGHTS, help='output state_dict  [%(default)s]')
    parser.add_argument('--refs', default=lenet.REFERENCE, help='output reference statistics  [%(default)s]')
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        train_images, train_labels = fashion_mnist(args.data, 'train')
        test_images, test_labels = fashion_mnist(args.data, 't10k')
    except UserError as exc:
        sys.exit(f'error: {exc}')

    cpu0, wall0 = time.process_time(), time.time()
    net = train(train_images, train_labels, args.epochs, args.batch, args.lr, args.seed)
    cpu_train, wall_train = time.process_time() - cpu0, time.time() - wall0
    detector = lenet.LeNetDetector(net)
    test_acc = accuracy(detector, test_images, test_labels)

    with torch.no_grad():
        mu, sigma = fid.images_stats(detector, train_images.split(1000))
        test_mu, test_sigma = fid.images_stats(detector, test_images.split(1000))
    floor = fid.frechet_distance(test_mu, test_sigma, mu, sigma)
    dnnlib.util.atomic_write(args.weights, lambda f: torch.save(net.state_dict(), f))
    fid.save_reference(args.refs, mu, sigma)
    print(f'seed {args.seed}, {args.epochs} epochs, batch {args.batch}, lr {args.lr:g}: '
          f'{sum(p.numel() for p in net.parameters())} parameters')
    print(f'test accuracy {test_acc:.4f} (10k), train accuracy {accuracy(detector, train_images, train_labels):.4f}')
    print(f'LeNet-FID of the 10k test images vs the train statistics: {floor:.4f}')
    print(f'training: {cpu_train:.1f} s CPU ({wall_train:.1f} s wall); whole script: {time.process_time():.1f} s CPU')
    print(f'wrote {args.weights} ({os.path.getsize(args.weights)} bytes) and {args.refs} '
          f'({os.path.getsize(args.refs)} bytes)')


if __name__ == '__main__':
    try:
        main()
    except UserError as exc:
        sys.exit(f'error: {exc}')
