"""Tests of training/encoders.py: the RGB encoder against upstream EDM2's numbers, the VAE encoder's constants,
arithmetic and pickled state, and its lazy, offline loading of the VAE (a stand-in diffusers module; no download)."""
import ast
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from dnnlib.util import UserError
from torch_utils import persistence
from training import encoders
from training.encoders import StabilityVAEEncoder, StandardRGBEncoder

EDM2_FIXTURES = FIXTURES / 'edm2-compat'


def test_rgb_encoder_matches_upstream():
    arrays = np.load(EDM2_FIXTURES / 'edm2_snapshot_tiny.npz')
    encoder = StandardRGBEncoder()
    encoder.init(torch.device('cpu'))
    pixels = torch.from_numpy(arrays['in.pixels_uint8'])
    # One float32 division and subtraction, one multiply-add and a truncation: correctly rounded, so exact.
    assert torch.equal(encoder.encode(pixels), torch.from_numpy(arrays['out.encoder_encode']))
    decoded = encoder.decode(torch.from_numpy(arrays['out.D_fp16_params']))
    assert decoded.dtype == torch.uint8
    assert torch.equal(decoded, torch.from_numpy(arrays['out.encoder_decode_of_D_fp16_params']))


def test_rgb_encoder_round_trip_and_rounding():
    encoder = StandardRGBEncoder()
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    latents = encoder.encode(pixels)
    assert latents.min() == -1 and latents.max() == 1
    assert torch.equal(encoder.decode(latents), pixels)
    # Pixel value x * 127.5 + 127.5, clipped and rounded to nearest (127.4 -> 127, 127.6 -> 128).
    assert encoder.decode(torch.tensor([-3.0, 3.0, -0.1 / 127.5, 0.1 / 127.5])).tolist() == [0, 255, 127, 128]


def test_vae_encoder_constants_and_pickled_state():
    encoder = StabilityVAEEncoder()
    assert encoder.scale.dtype == np.float32 and encoder.bias.dtype == np.float32
    # Upstream's float32 values as NumPy prints them (8 decimals): equal to half a unit of the last decimal.
    np.testing.assert_allclose(encoder.scale, [0.11990407, 0.10822511, 0.13477089, 0.15243903], rtol=0, atol=5e-9)
    np.testing.assert_allclose(encoder.bias, [-0.69664264, -0.3517316, -0.01617251, 0.32774392], rtol=0, atol=5e-9)
    encoder._vae = object()   # a loaded VAE is never pickled
    reconstruct, (meta,) = encoder.__reduce__()[:2]
    assert reconstruct is persistence._reconstruct_persistent_obj and meta['class_name'] == 'StabilityVAEEncoder'
    state = meta['state']
    assert list(state) == ['vae_name', 'scale', 'bias', 'batch_size', '_vae', '_init_args', '_init_kwargs']
    assert state['_vae'] is None and state['batch_size'] == 8 and state['vae_name'] == 'stabilityai/sd-vae-ft-mse'
    rgb_state = StandardRGBEncoder().__reduce__()[1][0]['state']
    assert rgb_state == {'_init_args': (), '_init_kwargs': {}}


def test_vae_latent_arithmetic():
    encoder = StabilityVAEEncoder(raw_mean=[1, 2, 3, 4], raw_std=[2, 4, 5, 8], final_mean=0.25, final_std=0.5)
    mean = torch.randn(2, 4, 3, 3)
    raw = torch.cat([mean, torch.zeros_like(mean)], dim=1)
    scale = torch.tensor([0.25, 0.125, 0.1, 0.0625]).reshape(1, 4, 1, 1)
    bias = 0.25 - torch.tensor([1.0, 2, 3, 4]).reshape(1, 4, 1, 1) * scale
    torch.testing.assert_close(encoder.encode_latents(raw), mean * scale + bias)   # std 0: no noise
    torch.manual_seed(0)
    noisy = encoder.encode_latents(torch.cat([torch.zeros(1000, 4, 1, 1), torch.ones(1000, 4, 1, 1) * 2], dim=1))
    torch.testing.assert_close(((noisy - bias) / scale).std(dim=0).flatten(), torch.full([4], 2.0), rtol=0.1, atol=0)


class _FakeDist:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std


class _FakeVAE(torch.nn.Module):
    """Stand-in for diffusers' AutoencoderKL: 3 pixel channels <-> 4 latent channels, records its batches."""

    def __init__(self):
        super().__init__()
        self.decoded_batches = []

    def encode(self, x):
        mean = torch.cat([x, x[:, :1]], dim=1)
        return {'latent_dist': _FakeDist(mean, torch.full_like(mean, 0.5))}

    def decode(self, z):
        self.decoded_batches.append(len(z))
        return {'sample': z[:, :3]}


@pytest.fixture
def fake_diffusers(monkeypatch, tmp_path):
    """A diffusers module whose AutoencoderKL loads only from `tmp_path / 'vae'`; records every request."""
    calls = []
    (tmp_path / 'vae').mkdir()

    def from_pretrained(pretrained_model_name_or_path, **kwargs):
        calls.append(dict(kwargs, path=pretrained_model_name_or_path))
        if pretrained_model_name_or_path != str(tmp_path / 'vae'):
            raise OSError('not found locally')
        return _FakeVAE()

    module = types.ModuleType('diffusers')
    module.models = types.SimpleNamespace(AutoencoderKL=types.SimpleNamespace(from_pretrained=from_pretrained))
    monkeypatch.setitem(sys.modules, 'diffusers', module)
    return calls, str(tmp_path / 'vae')


def test_vae_is_loaded_lazily_from_a_folder(fake_diffusers):
    calls, folder = fake_diffusers
    encoder = StabilityVAEEncoder(batch_size=3)
    assert encoder._vae is None and not calls
    encoder.init(torch.device('cpu'), vae_path=folder)
    assert isinstance(encoder._vae, _FakeVAE) and calls == [dict(path=folder)]
    latents = torch.randn(7, 4, 2, 2)
    pixels = encoder.decode(latents)
    assert encoder._vae.decoded_batches == [3, 3, 1] and len(calls) == 1   # loaded once, decoded in batches
    scale, bias = (torch.from_numpy(v).reshape(1, 4, 1, 1) for v in (encoder.scale, encoder.bias))
    raw = (latents - bias) / scale
    assert torch.equal(pixels, raw[:, :3].clamp(0, 1).mul(255).to(torch.uint8))
    raw_latents = encoder.encode_pixels(torch.full([2, 3, 2, 2], 255, dtype=torch.uint8))
    assert raw_latents.shape == (2, 8, 2, 2) and torch.equal(raw_latents[:, :4], torch.ones(2, 4, 2, 2))


def test_vae_name_may_be_a_folder(fake_diffusers):
    calls, folder = fake_diffusers
    StabilityVAEEncoder(vae_name=folder).init(torch.device('cpu'))
    assert calls == [dict(path=folder)]


def test_missing_vae_is_one_user_error_and_never_downloads(fake_diffusers, tmp_path):
    calls, _ = fake_diffusers
    encoder = StabilityVAEEncoder()
    with pytest.raises(UserError) as info:
        encoder.decode(torch.zeros(1, 4, 2, 2))
    message = str(info.value)
    assert '\n' not in message and 'stabilityai/sd-vae-ft-mse' in message and 'huggingface-cli download' in message
    assert calls and all(call['local_files_only'] for call in calls)   # only local caches were asked
    with pytest.raises(UserError, match='does not exist'):
        encoder.init(torch.device('cpu'), vae_path=str(tmp_path / 'nowhere'))


def test_missing_diffusers_is_one_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'diffusers', None)   # import fails
    with pytest.raises(UserError, match='pip install diffusers') as info:
        StabilityVAEEncoder().init(torch.device('cpu'))
    assert '\n' not in str(info.value)


def test_pickle_round_trip_keeps_classes_and_drops_the_vae(fake_diffusers):
    _, folder = fake_diffusers
    encoder = StabilityVAEEncoder(batch_size=2)
    encoder.init(torch.device('cpu'), vae_path=folder)
    clone = pickle.loads(pickle.dumps(encoder))
    assert type(clone) is StabilityVAEEncoder and clone._vae is None and encoder._vae is not None
    assert clone.init_kwargs == dict(batch_size=2) and np.array_equal(clone.scale, encoder.scale)
    assert type(pickle.loads(pickle.dumps(StandardRGBEncoder()))) is StandardRGBEncoder


def test_module_imports_only_what_upstream_has():
    tree = ast.parse(Path(encoders.__file__).read_text())
    imported = set()
    for node in tree.body:   # top-level imports; diffusers is imported lazily inside a function
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f'{node.module}.{alias.name}' for alias in node.names}
    assert imported <= {'os', 'numpy', 'torch', 'dnnlib', 'torch_utils.persistence', 'torch_utils.misc'}
