"""The embedded trained network (assets/edm-fmnist28-cond.pkl, card beside it) and its shipped schedules: small, safe
to load, the recipe's architecture, usable by the training loop, and the schedules fit it."""
import json
import os

import numpy as np
import PIL.Image
import torch

from art.networks import DEFAULT_NETWORK, network_name, shipped_schedule_path
from art.schedules import load_schedule
from edm.dataset_tool import convert_dataset
from edm.loading import load_network_pkl
from training.training_loop import training_loop

SHIPPED_K = (3, 5, 7, 10, 18)


def test_default_network_is_small_safe_and_the_recipe():
    assert os.path.getsize(DEFAULT_NETWORK) <= 10 * 2 ** 20
    net = load_network_pkl(DEFAULT_NETWORK)['ema']                       # safe mode: no embedded code runs
    assert type(net).__name__ == 'EDMPrecond' and type(net.model).__name__ == 'SongUNet'
    assert (net.img_resolution, net.img_channels, net.label_dim) == (28, 1, 10)
    assert sum(p.numel() for p in net.parameters()) == 1_703_041         # scripts/train_default.sh: cbase 32, 1,2,2
    kwargs = net.init_kwargs
    assert kwargs.model_channels == 32 and list(kwargs.channel_mult) == [1, 2, 2] and kwargs.num_blocks == 2


def test_shipped_closed_form_schedules_fit_the_default_network():
    for k in SHIPPED_K:
        path = shipped_schedule_path(DEFAULT_NETWORK, k)
        assert path is not None and path.parent.name == network_name(DEFAULT_NETWORK)
        schedule = load_schedule(path, num_steps=k)
        assert schedule.num_steps == k and schedule.sigmas[0] == 80.0 and schedule.sigmas[-1] == 0.0
        assert os.path.basename(schedule.provenance['network']) == os.path.basename(DEFAULT_NETWORK)


def test_default_network_round_trips_through_the_training_loop(tmp_path):
    # Ten images of the network's shape; one training step from the shipped weights at a negligible learning rate
    # gives a snapshot whose EMA equals them (beta = 0 at the first step), in upstream's snapshot format.
    src = tmp_path / 'src'
    src.mkdir()
    for i in range(10):                                               # one image per class: label_dim 10
        PIL.Image.fromarray(np.full((28, 28), 25 * i, np.uint8), 'L').save(src / f'{i}.png')
    (src / 'dataset.json').write_text(json.dumps({'labels': [[f'{i}.png', i] for i in range(10)]}))
    data = str(tmp_path / 'data.zip')
    convert_dataset(str(src), data, progress=False)
    shipped = load_network_pkl(DEFAULT_NETWORK)['ema']
    network_kwargs = dict(class_name='training.networks.EDMPrecond', **{
        key: value for key, value in shipped.init_kwargs.items()
        if key not in ('img_resolution', 'img_channels', 'label_dim')})
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    training_loop(run_dir=str(run_dir), dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=data,
                                                            use_labels=True, cache=True),
                  data_loader_kwargs=dict(num_workers=0), network_kwargs=network_kwargs,
                  loss_kwargs=dict(class_name='training.loss.EDMLoss'),
                  optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-12, betas=[0.9, 0.999], eps=1e-8),
                  batch_size=2, total_kimg=0, lr_rampup_kimg=0, kimg_per_tick=1, snapshot_ticks=1,
                  state_dump_ticks=None, resume_pkl=DEFAULT_NETWORK, load_pkl=load_network_pkl, device='cpu')
    snapshot = load_network_pkl(str(run_dir / 'network-snapshot-000000.pkl'))
    assert set(snapshot) >= {'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs'}
    for (name, a), (_, b) in zip(snapshot['ema'].named_parameters(), shipped.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=name)   # Adam moves each weight by <= lr


def test_shipped_diffusers_model_is_small_safe_and_the_recipe():
    # assets/ddpm-fmnist28-cond (card beside it): safetensors only, the architecture of training/ddpm.py, diffusers'
    # DDPM noise table, read by the adapter as a 1x28x28 class-conditional denoiser.
    from art.practitioner import SHIPPED_MODEL
    from edm.diffusers_net import load_diffusers
    from training.ddpm import unet_config
    files = [os.path.join(root, name) for root, _, names in os.walk(SHIPPED_MODEL) for name in names]
    assert sum(os.path.getsize(f) for f in files) <= 10 * 2 ** 20
    assert not [f for f in files if f.endswith(('.bin', '.pkl', '.pt', '.ckpt'))]
    net = load_diffusers(str(SHIPPED_MODEL))
    assert (net.img_resolution, net.img_channels, net.label_dim) == (28, 1, 10)
    assert sum(p.numel() for p in net.unet.parameters()) == 1_624_449 <= 2_000_000
    config = net.unet.config
    for key, value in unet_config().items():
        assert tuple(config[key]) == tuple(value) if isinstance(value, tuple) else config[key] == value, key
    assert net.prediction_type == 'epsilon' and abs(net.sigma_max - 157.4) < 0.05 and abs(net.sigma_min - 0.01) < 1e-4
    assert '1,624,449 parameters' in (SHIPPED_MODEL.parent / 'ddpm-fmnist28-cond.md').read_text()
