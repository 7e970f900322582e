"""Tests of training/networks_edm2.py: numerical identity with upstream EDM2 (fixtures), the training-mode weight
update, released parameter counts, the magnitude-preserving ops and the module's pickle contract.

Tolerance: outputs agree with upstream to 1e-5 of the output scale (max |expected|), the agreement of two float32
implementations that order their sums differently (measured: at most 8.1e-7 here). Every difference the tests
must see is far larger: training mode moves D by 1.3e-4 of its scale, float16 gains by 5e-5.
"""
import ast
import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIXTURES, imported_names
from torch_utils import persistence
from training import networks_edm2
from training.networks_edm2 import (MPConv, MPFourier, Block, Precond, UNet, mp_cat, mp_silu, mp_sum, normalize,
                                    resample)

EDM2_FIXTURES = FIXTURES / 'edm2-compat'
CASES = ['edm2_c3_r16_uncond', 'edm2_c4_r8_cond_fp32', 'edm2_c3_r8_cond_defaults']
_LOADED = {}


def load_case(case: str) -> tuple:
    """(json meta, npz arrays, network with the upstream state loaded strictly, in eval mode), cached; tests must
    not modify the network."""
    if case not in _LOADED:
        meta = json.loads((EDM2_FIXTURES / f'{case}.json').read_text())
        arrays = dict(np.load(EDM2_FIXTURES / f'{case}.npz'))
        net = Precond(**meta['kwargs'])
        net.load_state_dict({k[len('state.'):]: torch.from_numpy(v) for k, v in arrays.items()
                             if k.startswith('state.')}, strict=True)
        _LOADED[case] = (meta, arrays, net.eval().requires_grad_(False))
    return _LOADED[case]


def case_inputs(arrays: dict) -> tuple:
    """(x, sigma, class_labels or None) of a fixture case."""
    labels = torch.from_numpy(arrays['in.class_labels']) if 'in.class_labels' in arrays else None
    return torch.from_numpy(arrays['in.x']), torch.from_numpy(arrays['in.sigma']), labels


def assert_roundoff_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    """Agreement to float32 round-off: max abs difference <= 1e-5 of the output scale (see the module docstring)."""
    assert actual.dtype == torch.float32 and tuple(actual.shape) == expected.shape
    np.testing.assert_allclose(actual.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


# ----------------------------------------------------------------------------------------------------------------------
# Upstream fixtures.


@pytest.mark.parametrize('case', CASES)
def test_state_dict_layout_matches_upstream(case):
    meta, _, net = load_case(case)
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == meta['state_keys']
    assert sum(p.numel() for p in net.parameters()) == meta['num_params']
    assert sum(b.numel() for b in net.buffers()) == meta['num_buffer_elems']
    assert [name for name, _ in net.named_buffers()] == meta['buffer_keys']
    assert [name for name, p in net.named_parameters() if p.ndim == 0] == meta['zero_dim_param_keys']
    heads = {name: m.num_heads for name, m in net.named_modules() if isinstance(m, Block) and m.num_heads}
    assert heads == meta['attention_blocks']


@pytest.mark.parametrize('case', CASES)
def test_outputs_match_upstream(case):
    _, arrays, net = load_case(case)
    x, sigma, labels = case_inputs(arrays)
    with torch.no_grad():
        D, logvar = net(x, sigma, labels, return_logvar=True)
        assert_roundoff_close(D, arrays['out.D'])
        assert_roundoff_close(logvar, arrays['out.logvar'])
        assert torch.equal(net(x, sigma, labels), D)
        assert torch.equal(net(x, sigma, labels, force_fp32=True), D)   # use_fp16 acts only on CUDA inputs
        D_scalar = net(x, torch.tensor(2.5, dtype=torch.float64), labels)   # 0-dim sigma, as the sampler passes it
        assert_roundoff_close(D_scalar, arrays['out.D_scalar_sigma_2.5'])
        if labels is not None:
            assert_roundoff_close(net(x, sigma), arrays['out.D_no_labels'])


def test_training_mode_normalises_weights_in_place():
    meta, arrays, net = load_case('edm2_c4_r8_cond_fp32')
    x, sigma, labels = case_inputs(arrays)
    trained = copy.deepcopy(net).train()
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    with torch.no_grad():
        D, logvar = trained(x, sigma, labels, return_logvar=True)
    assert_roundoff_close(D, arrays['out.D_train'])
    assert_roundoff_close(logvar, arrays['out.logvar_train'])
    after = trained.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed == meta['train_forward']['changed_keys']   # every MPConv that ran, nothing else
    for key in changed:
        assert_roundoff_close(after[key], arrays[f'state_after_train_forward.{key}'])
    with torch.no_grad():
        assert_roundoff_close(trained.eval()(x, sigma, labels), arrays['out.D_eval_after_train_forward'])


def test_training_mode_without_logvar_leaves_the_logvar_head_alone():
    _, arrays, net = load_case('edm2_c4_r8_cond_fp32')
    x, sigma, labels = case_inputs(arrays)
    trained = copy.deepcopy(net).train()
    with torch.no_grad():
        trained(x, sigma, labels)
    assert torch.equal(trained.logvar_linear.weight, net.logvar_linear.weight)
    assert not torch.equal(trained.unet.out_conv.weight, net.unet.out_conv.weight)


def test_release_configurations_by_construction_on_meta():
    configs = json.loads((EDM2_FIXTURES / 'edm2_release_configs.json').read_text())['configs']
    assert len(configs) == 14
    for config in configs:
        with torch.device('meta'):
            net = Precond(img_resolution=config['img_resolution'], img_channels=config['img_channels'],
                          label_dim=config['label_dim'], model_channels=config['model_channels'],
                          dropout=config['dropout'])
        assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == config['state_keys'], config['preset']
        assert sum(p.numel() for p in net.parameters()) == config['num_params'], config['preset']
        assert sum(b.numel() for b in net.buffers()) == config['num_buffer_elems'], config['preset']


# ----------------------------------------------------------------------------------------------------------------------
# Behaviour beyond the fixtures.


def test_float16_parameters_on_cpu_compute_in_float32():
    _, arrays, net = load_case('edm2_c3_r16_uncond')
    x, sigma, _ = case_inputs(arrays)
    half = copy.deepcopy(net).to(torch.float16)
    with torch.no_grad():
        D, logvar = half(x, sigma, return_logvar=True)
    assert D.dtype == torch.float32 and logvar.dtype == torch.float32
    # float16 weights round to 2^-11 relative and the 0-dim gains divide in float16: close, not equal.
    np.testing.assert_allclose(D.numpy(), arrays['out.D'], rtol=0, atol=2e-2 * np.abs(arrays['out.D']).max())


def test_unet_runs_in_float16():
    # Precond feeds the UNet float16 for CUDA inputs with use_fp16; the same path on the CPU: the embedding stays
    # float32, every layer casts its normalised weights to float16, the result is float16 within its precision.
    _, arrays, net = load_case('edm2_c4_r8_cond_fp32')
    x, sigma, labels = case_inputs(arrays)
    x_in, c_noise = x / (0.25 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt(), sigma.log() / 4
    with torch.no_grad():
        F_32 = net.unet(x_in, c_noise, labels)
        F_16 = net.unet(x_in.half(), c_noise, labels)
    assert F_16.dtype == torch.float16
    np.testing.assert_allclose(F_16.float().numpy(), F_32.numpy(), rtol=0, atol=1e-2 * F_32.abs().max().item())


def test_unconditional_net_ignores_labels():
    _, arrays, net = load_case('edm2_c3_r16_uncond')
    x, sigma, _ = case_inputs(arrays)
    with torch.no_grad():
        assert torch.equal(net(x, sigma, torch.eye(10)[:3]), net(x, sigma))


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    block = Block(8, 8, 16, dropout=0.5).eval()
    with torch.no_grad():
        block.emb_gain.fill_(1.0)
        x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 16)
        assert torch.equal(block(x, emb), block(x, emb))
        block.train()
        assert not torch.equal(block(x, emb), block(x, emb))


def test_normalize_gives_unit_rms_rows_and_channels():
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3) * torch.exp(torch.randn(5, 1, 1, 1))
    row_rms = w.square().mean(dim=[1, 2, 3], keepdim=True).sqrt()
    torch.testing.assert_close(normalize(w), w / (1e-4 + row_rms))
    rms = normalize(w).square().mean(dim=[1, 2, 3]).sqrt()
    torch.testing.assert_close(rms, (row_rms / (1e-4 + row_rms)).flatten())   # unit RMS but for eps = 1e-4
    x = torch.randn(2, 6, 4, 4) * 3
    torch.testing.assert_close(normalize(x, dim=1).square().mean(dim=1).sqrt(), torch.ones(2, 4, 4), rtol=1e-4, atol=0)


def test_magnitude_preserving_ops_keep_unit_variance():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4096, 64, generator=generator)
    for t in (0.3, 0.5, 0.8):
        assert abs(mp_sum(a, b, t).var().item() - 1) < 0.02
        assert abs(mp_cat(a, b[:, :16], dim=1, t=t).square().mean().item() - 1) < 0.02
    assert abs(mp_silu(a).square().mean().item() - 1) < 0.02
    torch.testing.assert_close(mp_sum(a, b, 0.3), (0.7 * a + 0.3 * b) / np.sqrt(0.7 ** 2 + 0.3 ** 2))


def test_resampling_preserves_constants_and_shapes():
    x = torch.full([1, 3, 8, 8], 2.0)
    down = resample(x, mode='down')
    up = resample(x, mode='up')
    assert down.shape == (1, 3, 4, 4) and up.shape == (1, 3, 16, 16)
    assert torch.equal(down, torch.full_like(down, 2.0)) and torch.equal(up, torch.full_like(up, 2.0))
    y = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(resample(y, mode='down'), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))   # 2x2 means
    assert torch.equal(resample(y, mode='up')[0, 0, :2, :2], torch.zeros(2, 2))                  # nearest
    assert resample(y) is y


def test_mpconv_uses_gain_over_sqrt_fan_in():
    torch.manual_seed(0)
    layer = MPConv(6, 4, kernel=[])
    x = torch.randn(3, 6)
    w = layer.weight / layer.weight.norm(dim=1, keepdim=True) * np.sqrt(6)
    torch.testing.assert_close(layer(x, gain=2.0), x @ (w * 2 / np.sqrt(6)).t(), rtol=1e-4, atol=1e-5)
    assert MPConv(4, 5, kernel=[3, 3])(torch.randn(2, 4, 6, 6)).shape == (2, 5, 6, 6)


def test_fourier_features():
    torch.manual_seed(0)
    fourier = MPFourier(32, bandwidth=2)
    x = torch.tensor([0.0, 1.0])
    expected = torch.cos(torch.outer(x, fourier.freqs) + fourier.phases) * np.sqrt(2)
    torch.testing.assert_close(fourier(x), expected)
    assert fourier.freqs.std() > 2 * np.pi   # 2 pi bandwidth N(0, 1); std of 32 draws near 4 pi


def test_unet_passes_block_arguments_to_every_block():
    unet = UNet(img_resolution=8, img_channels=3, label_dim=0, model_channels=8, channel_mult=[1, 2], num_blocks=1,
                attn_resolutions=[4], channels_per_head=4, res_balance=0.4, clip_act=None)
    blocks = [m for m in unet.modules() if isinstance(m, Block)]
    assert blocks and all(b.res_balance == 0.4 and b.clip_act is None for b in blocks)
    assert unet.emb_label is None and 'emb_label' not in unet._modules


# ----------------------------------------------------------------------------------------------------------------------
# The module's source is embedded in pickles and must run inside upstream EDM2.


def test_module_imports_and_persistence_decorators():
    tree = ast.parse(Path(networks_edm2.__file__).read_text())
    assert imported_names(networks_edm2.__file__) <= {'numpy', 'torch', 'torch_utils.persistence', 'torch_utils.misc'}
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    assert {node.name for node in classes} == {'MPFourier', 'MPConv', 'Block', 'UNet', 'Precond'}
    for node in classes:
        assert [ast.unparse(d) for d in node.decorator_list] == ['persistence.persistent_class'], node.name


def test_embedded_source_runs_on_its_own():
    _, arrays, net = load_case('edm2_c3_r8_cond_defaults')
    reconstruct, (meta,) = net.__reduce__()[:2]
    assert reconstruct is persistence._reconstruct_persistent_obj and meta['class_name'] == 'Precond'
    # A source text that differs from the live module's is executed in a fresh module, as in another process.
    clone = reconstruct(dict(meta, module_src=meta['module_src'] + '\n# another copy\n'))
    assert type(clone).__module__.startswith('_imported_module_') and type(clone).__name__ == 'Precond'
    x, sigma, labels = case_inputs(arrays)
    with torch.no_grad():
        assert torch.equal(clone(x, sigma, labels), net(x, sigma, labels))
    assert type(pickle.loads(pickle.dumps(net))) is Precond
