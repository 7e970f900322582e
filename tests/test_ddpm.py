"""training.ddpm: diffusers' DDPM recipe, resumable, snapshots of the EMA weights in diffusers' pipeline format."""
import dataclasses
import json
import os

import pytest
import torch

from dnnlib.util import UserError
from training import ddpm

# 8x8 images keep the shipped architecture (three resolutions) at a test's cost: 500 images a step, 2 steps a kimg.
RECIPE = ddpm.Recipe(kimg=1, batch=500, warmup_steps=2, snap_kimg=1)


def _data(n: int = 40):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=gen, dtype=torch.uint8), torch.arange(n) % 3


def _train(run_dir, recipe):
    images, labels = _data()
    return ddpm.train(images, labels, str(run_dir), recipe, log=lambda line: None)


def _unet_weights(snapshot: str) -> dict:
    from safetensors.torch import load_file
    return load_file(os.path.join(snapshot, 'unet', 'diffusion_pytorch_model.safetensors'))


@pytest.mark.slow
def test_extended_run_equals_one_run_and_snapshots_hold_the_ema(tmp_path):
    longer = dataclasses.replace(RECIPE, kimg=2)
    whole = _train(tmp_path / 'whole', longer)
    first = _train(tmp_path / 'parts', RECIPE)
    assert os.path.basename(first) == 'snapshot-000001'
    resumed = _train(tmp_path / 'parts', longer)               # the same folder, --kimg grown: continues at step 2
    assert os.path.basename(whole) == os.path.basename(resumed) == 'snapshot-000002'
    # Same op sequence in one process, but a resumed run rebuilds its tensors: compared within float32 round-off.
    a, b = _unet_weights(whole), _unet_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name])
    log = [json.loads(line) for line in (tmp_path / 'parts' / 'log.jsonl').read_text().splitlines()]
    assert [entry['kimg'] for entry in log] == [1, 2] and [entry['step'] for entry in log] == [2, 4]
    # The snapshot holds the EMA weights, not the raw ones.
    state = torch.load(tmp_path / 'parts' / ddpm.STATE_FILE, weights_only=True)
    from diffusers import UNet2DModel
    names = [name for name, _ in UNet2DModel(**ddpm.unet_config(8, 1, 3)).named_parameters()]
    shadow = dict(zip(names, state['ema']['shadow_params']))
    for name in ('conv_in.weight', 'class_embedding.weight'):
        torch.testing.assert_close(b[name], shadow[name])
        assert not torch.allclose(b[name], state['unet'][name])


def test_snapshot_is_a_diffusers_denoiser(tmp_path):
    from edm.diffusers_net import load_diffusers
    snapshot = _train(tmp_path, RECIPE)
    net = load_diffusers(snapshot)
    assert net.label_dim == 3 and net.img_resolution == 8
    with torch.no_grad():
        out = net(torch.randn(2, 1, 8, 8), torch.tensor([1.0, 10.0]), torch.eye(3)[:2])
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_resume_with_other_options_is_refused(tmp_path):
    _train(tmp_path, RECIPE)
    with pytest.raises(UserError, match='resume with the same options'):
        _train(tmp_path, dataclasses.replace(RECIPE, lr=1e-3))
