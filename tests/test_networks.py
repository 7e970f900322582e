"""Tests of training/networks.py: numerical identity with upstream EDM (fixtures), released parameter counts,
every architecture option, resampling shapes, forward-mode derivatives and the preconditioners' contracts."""
import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import imported_names
from training import networks
from training.networks import (AttentionOp, Conv2d, DhariwalUNet, EDMPrecond, FourierEmbedding, GroupNorm, Linear,
                               PositionalEmbedding, SongUNet, UNetBlock, VEPrecond, VPPrecond, iDDPMPrecond,
                               weight_init)

CASES = ['edm_songunet_ddpmpp_cond_aug', 've_songunet_ncsnpp', 'iddpm_dhariwal_cond']
_LOADED = {}


def build_case(meta: dict, arrays: dict) -> torch.nn.Module:
    """The fixture's network built from its json, with the upstream state loaded strictly, in eval mode."""
    net = getattr(networks, meta['precond'])(**meta['kwargs'])
    state = {k[len('state.'):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith('state.')}
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)


def load_case(fixtures_dir: Path, case: str) -> tuple:
    """(json meta, npz arrays, built network), cached; tests must not modify the network."""
    if case not in _LOADED:
        meta = json.loads((fixtures_dir / f'{case}.json').read_text())
        arrays = dict(np.load(fixtures_dir / f'{case}.npz'))
        _LOADED[case] = (meta, arrays, build_case(meta, arrays))
    return _LOADED[case]


def case_inputs(arrays: dict) -> tuple:
    """(x, sigma, class_labels or None, model kwargs) of a fixture case."""
    x = torch.from_numpy(arrays['in.x'])
    sigma = torch.from_numpy(arrays['in.sigma'])
    labels = torch.from_numpy(arrays['in.class_labels']) if 'in.class_labels' in arrays else None
    kwargs = dict(augment_labels=torch.from_numpy(arrays['in.augment_labels'])) if 'in.augment_labels' in arrays else {}
    return x, sigma, labels, kwargs


def randomize_(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every parameter by a random draw (fresh networks have zero or tiny output layers)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) / np.sqrt(p[0].numel() if p.ndim > 1 else 1))
    return model


def assert_roundoff_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    """Agreement to float32 round-off: max abs difference <= 1e-5 of the output scale."""
    assert actual.dtype == torch.float32 and tuple(actual.shape) == expected.shape
    np.testing.assert_allclose(actual.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


# ----------------------------------------------------------------------------------------------------------------------
# Upstream fixtures.


@pytest.mark.parametrize('case', CASES)
def test_state_dict_layout_matches_upstream(fixtures_dir, case):
    meta, _, net = load_case(fixtures_dir, case)
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == meta['state_keys']
    assert sum(p.numel() for p in net.parameters()) == meta['num_params']


@pytest.mark.parametrize('case', CASES)
def test_outputs_match_upstream(fixtures_dir, case):
    _, arrays, net = load_case(fixtures_dir, case)
    x, sigma, labels, kwargs = case_inputs(arrays)
    with torch.no_grad():
        assert_roundoff_close(net(x, sigma, labels, **kwargs), arrays['out.D'])
        assert_roundoff_close(net(x, torch.tensor(2.5, dtype=torch.float64), labels), arrays['out.D_scalar_sigma_2.5'])
        assert_roundoff_close(net(x, sigma), arrays['out.D_no_labels'])


@pytest.mark.parametrize('case', CASES)
def test_sigma_and_label_broadcasting(fixtures_dir, case):
    _, arrays, net = load_case(fixtures_dir, case)
    x, _, labels, _ = case_inputs(arrays)
    with torch.no_grad():
        ref = net(x, torch.full([3], 1.7))
        close = dict(rtol=0, atol=1e-5 * ref.abs().max().item())  # a [1, C] embedding rounds like a [3, C] one
        for sigma in [torch.tensor(1.7), torch.tensor(1.7, dtype=torch.float64), torch.full([3, 1, 1, 1], 1.7)]:
            torch.testing.assert_close(net(x, sigma), ref, **close)
        if net.label_dim:
            torch.testing.assert_close(net(x, torch.full([3], 1.7), torch.zeros(3, net.label_dim)), ref, **close)
            assert not torch.allclose(net(x, torch.full([3], 1.7), labels), ref, **close)


def test_fp16_flag_is_ignored_on_cpu(fixtures_dir):
    meta, arrays, net = load_case(fixtures_dir, 'edm_songunet_ddpmpp_cond_aug')
    net16 = EDMPrecond(**meta['kwargs'], use_fp16=True).eval()
    net16.load_state_dict(net.state_dict())
    x, sigma, labels, kwargs = case_inputs(arrays)
    with torch.no_grad():
        out = net16(x, sigma, labels, **kwargs)
        assert out.dtype == torch.float32
        assert torch.equal(out, net(x, sigma, labels, **kwargs))
        assert torch.equal(net16(x, sigma, labels, force_fp32=True, **kwargs), out)


def test_iddpm_noise_levels_match_upstream(fixtures_dir):
    _, arrays, _ = load_case(fixtures_dir, 'iddpm_dhariwal_cond')
    fresh = iDDPMPrecond(img_resolution=8, img_channels=1, model_channels=16, channel_mult=[1], num_blocks=1,
                         attn_resolutions=[])
    u = arrays['state.u']
    # u_{j-1} = sqrt((u_j^2 + 1) / ratio - 1) runs 1000 steps in float32 through sin; the last bit of sin depends on
    # the machine. Perturbing sin by 1 ulp at random moves u by <= 6e-6 (relative) where u >= 1, and by up to 1.5e-3
    # at the smallest levels, where the ratio tends to 1 and the subtraction cancels (measured, 10 draws). The bounds
    # below are about 3x those; a wrong constant (M, C_1, C_2) or step moves u by percents.
    ours = fresh.u.numpy().astype(np.float64)
    large = u >= 1
    np.testing.assert_allclose(ours[large], u[large], rtol=2e-5, atol=0)
    np.testing.assert_allclose(ours[~large], u[~large], rtol=5e-3, atol=0)
    exact = np.zeros(1001)  # the same recursion in float64: the formula itself, independent of the fixture
    alpha_bar = np.sin(0.5 * np.pi * np.arange(1001) / 1000 / (0.008 + 1)) ** 2
    for j in range(1000, 0, -1):
        exact[j - 1] = np.sqrt((exact[j] ** 2 + 1) / max(alpha_bar[j - 1] / alpha_bar[j], 0.001) - 1)
    np.testing.assert_allclose(ours[large], exact[large], rtol=2e-5, atol=0)
    np.testing.assert_allclose(ours[~large], exact[~large], rtol=5e-3, atol=0)
    assert fresh.sigma_min == float(fresh.u[999]) == pytest.approx(float(u[999]), rel=5e-3)  # the range is u's ends
    assert fresh.sigma_max == float(fresh.u[0]) == pytest.approx(float(u[0]), rel=2e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Released configurations (docs/edm-compat.md §4.7), counted on the meta device.

DDPMPP = dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
              channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2])
NCSNPP = dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
              channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2])
ADM = dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4])


@pytest.mark.parametrize('kwargs, num_params, num_buffer_elements', [
    (dict(DDPMPP, img_resolution=32, label_dim=10, augment_dim=9), 55_735_299, 32),
    (dict(DDPMPP, img_resolution=32, augment_dim=9), 55_733_891, 32),
    (dict(NCSNPP, img_resolution=32, label_dim=10, augment_dim=9), 56_400_643, 288),
    (dict(NCSNPP, img_resolution=32, augment_dim=9), 56_397_827, 288),
    (dict(DDPMPP, img_resolution=64, channel_mult=[1, 2, 2, 2], augment_dim=9), 61_805_571, 48),
    (dict(NCSNPP, img_resolution=64, channel_mult=[1, 2, 2, 2], augment_dim=9), 62_761_091, 368),
    (dict(ADM, img_resolution=64, label_dim=1000), 295_899_267, 48),
])
def test_released_parameter_counts(kwargs, num_params, num_buffer_elements):
    with torch.device('meta'):
        net = EDMPrecond(img_channels=3, **kwargs)
    assert sum(p.numel() for p in net.parameters()) == num_params
    assert sum(b.numel() for b in net.buffers()) == num_buffer_elements


def test_iddpm_adm_parameter_count():
    # iDDPMPrecond adds no parameters; its model predicts 2 * img_channels outputs (checked on a small net below).
    with torch.device('meta'):
        model = DhariwalUNet(img_resolution=64, in_channels=3, out_channels=6, label_dim=1000,
                             **{k: v for k, v in ADM.items() if k != 'model_type'})
    assert sum(p.numel() for p in model.parameters()) == 295_904_454
    small = iDDPMPrecond(img_resolution=8, img_channels=3, model_channels=16, channel_mult=[1], num_blocks=1,
                         attn_resolutions=[])
    assert small.model.out_conv.out_channels == 6
    assert small(torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0])).shape == (2, 3, 8, 8)


# ----------------------------------------------------------------------------------------------------------------------
# Building blocks.


def test_weight_init_modes():
    torch.manual_seed(0)
    w = weight_init([200, 300], 'xavier_uniform', fan_in=300, fan_out=200)
    assert w.abs().max() <= np.sqrt(6 / 500) and w.abs().max() > 0.9 * np.sqrt(6 / 500)
    w = weight_init([200, 300], 'kaiming_uniform', fan_in=300, fan_out=200)
    assert w.abs().max() <= np.sqrt(3 / 300) and w.abs().max() > 0.9 * np.sqrt(3 / 300)
    assert weight_init([400, 500], 'kaiming_normal', 500, 400).std() == pytest.approx(np.sqrt(1 / 500), rel=0.02)
    assert weight_init([400, 500], 'xavier_normal', 500, 400).std() == pytest.approx(np.sqrt(2 / 900), rel=0.02)
    with pytest.raises(ValueError):
        weight_init([2, 2], 'orthogonal', 2, 2)


def test_linear_and_group_norm():
    lin = Linear(4, 3, init_bias=1)
    x = torch.randn(5, 4, dtype=torch.float64)
    assert torch.allclose(lin(x), x @ lin.weight.double().t() + lin.bias.double())
    assert Linear(4, 3, bias=False).bias is None
    assert [GroupNorm(c).num_groups for c in [16, 64, 128, 256, 512]] == [4, 16, 32, 32, 32]
    norm = GroupNorm(64, eps=1e-6)
    assert torch.equal(norm.weight, torch.ones(64)) and torch.equal(norm.bias, torch.zeros(64))
    x = torch.randn(2, 64, 4, 4)
    groups = x.reshape(2, 16, -1)
    ref = (groups - groups.mean(2, keepdim=True)) / (groups.var(2, unbiased=False, keepdim=True) + 1e-6).sqrt()
    ref = ref.reshape(x.shape)
    assert torch.allclose(norm(x), ref, atol=1e-5)


def test_resample_filter_buffer():
    assert Conv2d(4, 4, 3).resample_filter is None
    assert 'resample_filter' not in Conv2d(4, 4, 3).state_dict()
    f = Conv2d(4, 4, 3, down=True, resample_filter=[1, 3, 3, 1]).resample_filter
    expected = torch.tensor([1., 3, 3, 1])
    assert torch.equal(f, (torch.outer(expected, expected) / 64).reshape(1, 1, 4, 4))
    with pytest.raises(AssertionError):
        Conv2d(4, 4, 3, up=True, down=True)


@pytest.mark.parametrize('resample_filter', [[1, 1], [1, 3, 3, 1]])
@pytest.mark.parametrize('kernel', [0, 1, 3])
@pytest.mark.parametrize('fused', [False, True])
def test_resampling_shapes(resample_filter, kernel, fused):
    x = torch.randn(2, 4, 32, 32)
    out_channels = 4 if kernel == 0 else 6
    up = Conv2d(4, out_channels, kernel, up=True, resample_filter=resample_filter, fused_resample=fused)
    down = Conv2d(4, out_channels, kernel, down=True, resample_filter=resample_filter, fused_resample=fused)
    assert up(x).shape == (2, out_channels, 64, 64)  # upstream issue #2: fused up once gave 60x60
    assert down(x).shape == (2, out_channels, 16, 16)


@pytest.mark.parametrize('resample_filter, border', [([1, 1], 0), ([1, 3, 3, 1], 1)])
def test_fused_upsampling_equals_separate_steps_inside(resample_filter, border):
    torch.manual_seed(0)
    fused = Conv2d(4, 6, 3, up=True, resample_filter=resample_filter, fused_resample=True, init_bias=1)
    plain = Conv2d(4, 6, 3, up=True, resample_filter=resample_filter)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 4, 8, 8)
    a, b = fused(x), plain(x)
    inner = slice(border, a.shape[-1] - border)
    assert torch.allclose(a[..., inner, inner], b[..., inner, inner], atol=1e-5)
    assert border == 0 or not torch.allclose(a, b, atol=1e-3)  # only zero padding at the border differs


def test_embeddings_put_cos_first():
    emb = PositionalEmbedding(8, endpoint=True)(torch.tensor([0.0, 2.0]))
    assert torch.equal(emb[0], torch.tensor([1., 1, 1, 1, 0, 0, 0, 0]))
    freqs = (1 / 10000) ** (torch.arange(4) / 3)  # endpoint=True: the last frequency is 1/max_positions
    assert torch.allclose(emb[1], torch.cat([(2 * freqs).cos(), (2 * freqs).sin()]))
    freqs = (1 / 10000) ** (torch.arange(4) / 4)
    assert torch.allclose(PositionalEmbedding(8)(torch.tensor([2.0]))[0], torch.cat([(2 * freqs).cos(),
                                                                                      (2 * freqs).sin()]))
    fourier = FourierEmbedding(8)
    assert list(fourier.state_dict()) == ['freqs'] and fourier.freqs.shape == (4,)
    phase = 2 * np.pi * 0.3 * fourier.freqs
    assert torch.allclose(fourier(torch.tensor([0.3]))[0], torch.cat([phase.cos(), phase.sin()]), atol=1e-5)


def test_unet_block_heads_and_submodules():
    assert UNetBlock(128, 128, 32).num_heads == 0
    assert UNetBlock(128, 256, 32, attention=True).num_heads == 4
    assert UNetBlock(128, 128, 32, attention=True, num_heads=1).num_heads == 1
    assert UNetBlock(64, 64, 32).skip is None
    assert UNetBlock(64, 64, 32, down=True).skip.weight is None  # a pure resampler without resample_proj
    assert UNetBlock(64, 64, 32, down=True, resample_proj=True).skip.weight.shape == (64, 64, 1, 1)
    assert UNetBlock(64, 64, 32, adaptive_scale=True).affine.out_features == 128


def test_attention_uses_interleaved_qkv_channels():
    torch.manual_seed(0)
    block = UNetBlock(8, 8, 4, attention=True, num_heads=2, adaptive_scale=False, init_zero=dict(init_bias=0.1)).eval()
    x, emb = torch.randn(2, 8, 3, 3), torch.randn(2, 4)
    h = block.conv1(torch.nn.functional.silu(block.norm1(block.conv0(torch.nn.functional.silu(block.norm0(x)))
                                                          + block.affine(emb)[:, :, None, None]))) + x
    qkv = block.qkv(block.norm2(h)).reshape(2, 2, 4, 3, 9)  # [N, head, C/heads, (q, k, v), H*W]
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    w = torch.einsum('nhci,nhcj->nhij', q, k / 2).softmax(-1)
    a = torch.einsum('nhij,nhcj->nhci', w, v).reshape(2, 8, 3, 3)
    assert torch.allclose(block(x, emb), block.proj(a) + h, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Architecture options.

SMALL_SONG = dict(model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)


@pytest.mark.parametrize('options', [
    dict(encoder_type='skip'),
    dict(decoder_type='skip'),
    dict(encoder_type='skip', decoder_type='skip', embedding_type='fourier', channel_mult_noise=2),
    dict(encoder_type='residual', decoder_type='skip', resample_filter=[1, 3, 3, 1]),
    dict(label_dim=5, augment_dim=9, channel_mult_emb=2),
])
def test_song_unet_options(options):
    torch.manual_seed(0)
    model = SongUNet(img_resolution=16, in_channels=3, out_channels=2, **SMALL_SONG, **options).eval()
    keys = list(model.state_dict())
    if options.get('encoder_type') == 'skip':
        assert {'enc.8x8_aux_down.resample_filter', 'enc.8x8_aux_skip.weight', 'enc.4x4_aux_skip.bias'} <= set(keys)
    if options.get('decoder_type') == 'skip':
        assert {'dec.4x4_aux_conv.weight', 'dec.8x8_aux_up.resample_filter', 'dec.16x16_aux_up.resample_filter',
                'dec.16x16_aux_norm.weight'} <= set(keys)
        assert 'dec.4x4_aux_up.resample_filter' not in keys
    label_dim = options.get('label_dim', 0)
    labels = torch.eye(5)[[1, 3]] if label_dim else None
    aug = torch.randn(2, 9) if options.get('augment_dim') else None
    out = model(torch.randn(2, 3, 16, 16), torch.tensor([0.1, -0.4]), labels, augment_labels=aug)
    assert out.shape == (2, 2, 16, 16) and out.dtype == torch.float32 and out.isfinite().all()


def test_dhariwal_unet_options():
    torch.manual_seed(0)
    model = DhariwalUNet(img_resolution=8, in_channels=3, out_channels=3, label_dim=4, augment_dim=9,
                         model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
    assert list(model.state_dict())[:4] == ['map_augment.weight', 'map_layer0.weight', 'map_layer0.bias',
                                            'map_layer1.weight']
    assert torch.equal(model.map_augment.weight, torch.zeros(64, 9))  # init_zero
    assert model.dec['4x4_block0'].num_heads == 2 and model.dec['4x4_block1'].num_heads == 2  # every decoder block
    out = model.eval()(torch.randn(2, 3, 8, 8), torch.tensor([10.0, 500.0]), torch.eye(4)[[0, 2]],
                       augment_labels=torch.randn(2, 9))
    assert out.shape == (2, 3, 8, 8)


@pytest.mark.parametrize('model_type', ['SongUNet', 'DhariwalUNet'])
def test_label_dropout_zeroes_labels_in_training_only(model_type):
    torch.manual_seed(0)
    kwargs = SMALL_SONG if model_type == 'SongUNet' else dict(model_channels=64, channel_mult=[1], num_blocks=1,
                                                              attn_resolutions=[], dropout=0.0)
    model = randomize_(getattr(networks, model_type)(img_resolution=8, in_channels=3, out_channels=3, label_dim=4,
                                                     label_dropout=1.0, **kwargs))
    x, noise, labels = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 1.0]), torch.eye(4)[[0, 2]]
    with torch.no_grad():
        dropped = model.train()(x, noise, labels)
        assert torch.allclose(dropped, model(x, noise, torch.zeros(2, 4)), atol=1e-6)
        model.eval()
        assert torch.equal(model(x, noise, torch.zeros(2, 4)), dropped)
        assert not torch.allclose(model(x, noise, labels), dropped, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Derivatives: forward mode through attention, against finite differences and reverse mode.


def test_attention_op_derivatives():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 6, dtype=torch.float64), torch.randn(2, 4, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(AttentionOp.apply, (q.requires_grad_(), k.requires_grad_()),
                                    check_forward_ad=True, check_backward_ad=True)

    def reference(q, k):
        return torch.einsum('ncq,nck->nqk', q, k).div(2).softmax(dim=2)

    dq, dk = torch.randn_like(q), torch.randn_like(k)
    w, dw = torch.func.jvp(AttentionOp.apply, (q.detach(), k.detach()), (dq, dk))
    w_ref, dw_ref = torch.func.jvp(reference, (q.detach(), k.detach()), (dq, dk))
    assert torch.allclose(w, w_ref) and torch.allclose(dw, dw_ref)

    def jvp_norm(fn, p):  # reverse over forward, as a learner that trains through a JVP would do
        return torch.func.jvp(lambda q: fn(p @ q, k.detach()), (q.detach(),), (dq,))[1].square().sum()

    p = torch.eye(4, dtype=torch.float64) + 0.1 * torch.randn(4, 4, dtype=torch.float64)
    assert torch.allclose(torch.func.grad(jvp_norm, argnums=1)(AttentionOp.apply, p),
                          torch.func.grad(jvp_norm, argnums=1)(reference, p))


def test_attention_op_computes_in_float32_for_half_inputs():
    torch.manual_seed(0)
    q, k = (30 * torch.randn(2, 64, 16)).half(), (30 * torch.randn(2, 64, 16)).half()
    w = AttentionOp.apply(q, k)
    assert w.dtype == torch.float16
    assert torch.equal(w, AttentionOp.apply(q.float(), k.float()).half())


JVP_MODELS = {
    'songunet_positional': lambda: SongUNet(img_resolution=8, in_channels=3, out_channels=3, label_dim=4, augment_dim=2,
                                            model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                                            dropout=0.0),
    'songunet_fourier_residual': lambda: SongUNet(img_resolution=8, in_channels=3, out_channels=3, model_channels=16,
                                                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
                                                  dropout=0.0, embedding_type='fourier', encoder_type='residual',
                                                  decoder_type='skip', resample_filter=[1, 3, 3, 1]),
    'dhariwal': lambda: DhariwalUNet(img_resolution=8, in_channels=3, out_channels=3, label_dim=4, model_channels=64,
                                     channel_mult=[1], num_blocks=1, attn_resolutions=[8], dropout=0.0),
}


@pytest.mark.parametrize('name', list(JVP_MODELS))
def test_model_jvp_matches_finite_differences(name):
    torch.manual_seed(0)
    model = randomize_(JVP_MODELS[name]()).double().eval()
    assert any(isinstance(m, UNetBlock) and m.num_heads for m in model.modules())
    x0, noise0 = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0.3, -0.5], dtype=torch.float64)
    labels = torch.eye(4, dtype=torch.float64)[[1, 2]] if name != 'songunet_fourier_residual' else None
    kwargs = dict(augment_labels=torch.randn(2, 2, dtype=torch.float64)) if name == 'songunet_positional' else {}
    # Fourier features oscillate fast in the noise label: a smaller noise tangent keeps the difference quotient
    # below in its O(eps^2) regime.
    dx, dnoise = torch.randn_like(x0), torch.randn_like(noise0) * (0.05 if 'fourier' in name else 1)

    def f(x, noise):
        return model(x, noise, labels, **kwargs)

    _, jvp = torch.func.jvp(f, (x0, noise0), (dx, dnoise))
    _, jvp_noise = torch.func.jvp(f, (x0, noise0), (torch.zeros_like(dx), dnoise))
    eps = 1e-5
    fd = (f(x0 + eps * dx, noise0 + eps * dnoise) - f(x0 - eps * dx, noise0 - eps * dnoise)) / (2 * eps)
    assert jvp.dtype == torch.float64 and jvp_noise.abs().max() > 1e-2 * jvp.abs().max()
    torch.testing.assert_close(jvp, fd, rtol=0, atol=1e-6 * jvp.abs().max().item())


@pytest.mark.parametrize('case', CASES)
def test_preconditioned_jvp_agrees_with_reverse_mode(fixtures_dir, case):
    _, arrays, net = load_case(fixtures_dir, case)
    x0, sigma0, labels, _ = case_inputs(arrays)
    torch.manual_seed(0)
    dx, dsigma = torch.randn_like(x0), torch.randn_like(sigma0) * sigma0
    u = torch.randn_like(x0)

    def f(x, sigma):
        return net(x, sigma, labels)

    out, jvp = torch.func.jvp(f, (x0, sigma0), (dx, dsigma))
    _, vjp_fn = torch.func.vjp(f, x0, sigma0)
    ux, usigma = vjp_fn(u)
    forward, reverse = (u * jvp).sum(), (ux * dx).sum() + (usigma * dsigma).sum()
    torch.testing.assert_close(out, f(x0, sigma0), rtol=0, atol=1e-5 * out.abs().max().item())
    assert forward.item() == pytest.approx(reverse.item(), rel=1e-4)
    assert usigma.abs().min() > 0  # the network depends on sigma through c_skip, c_out, c_in (and c_noise)


# ----------------------------------------------------------------------------------------------------------------------
# Preconditioners.

TINY = dict(img_resolution=8, img_channels=3, model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[],
            dropout=0.0)


def test_vp_sigma_round_trip_and_range():
    net = VPPrecond(**TINY)
    t = torch.linspace(1e-5, 1, 101, dtype=torch.float64)
    assert torch.allclose(net.sigma_inv(net.sigma(t)), t, rtol=1e-10, atol=1e-12)
    # In float32 (as upstream) sigma(1e-5) = 2^-10, against 0.0010000 exactly.
    assert net.sigma_min == 0.0009765625 and net.sigma_max == pytest.approx(152.167, rel=1e-5)
    assert (net.beta_d, net.beta_min, net.M, net.epsilon_t) == (19.9, 0.1, 1000, 1e-5)


def test_vp_preconditioning_formula():
    torch.manual_seed(0)
    net = randomize_(VPPrecond(**TINY)).eval()
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.05, 20.0])
    s = sigma.reshape(-1, 1, 1, 1)
    with torch.no_grad():
        F_x = net.model(x / (s ** 2 + 1).sqrt(), 999 * net.sigma_inv(sigma), None)
        assert torch.allclose(net(x, sigma), x - s * F_x, rtol=1e-5, atol=1e-5)


def test_ve_and_edm_attributes():
    ve = VEPrecond(**TINY)
    assert (ve.sigma_min, ve.sigma_max, ve.label_dim, ve.use_fp16) == (0.02, 100, 0, False)
    edm = EDMPrecond(**TINY, model_type='SongUNet')
    assert (edm.sigma_min, edm.sigma_max, edm.sigma_data) == (0, float('inf'), 0.5)
    assert isinstance(EDMPrecond(**TINY).model, DhariwalUNet) and isinstance(ve.model, SongUNet)
    for net in [ve, edm, VPPrecond(**TINY)]:
        r = net.round_sigma(torch.tensor([0.1234567, 3.0]))
        assert torch.equal(r, torch.tensor([0.1234567, 3.0]))
        assert torch.is_tensor(net.round_sigma(0.5))


def test_iddpm_round_sigma_snaps_to_u():
    net = iDDPMPrecond(**TINY)
    u = net.u.double()
    sigma = torch.exp(torch.linspace(np.log(0.007), np.log(2e4), 200, dtype=torch.float64))
    rounded = net.round_sigma(sigma)
    index = net.round_sigma(sigma, return_index=True)
    assert rounded.dtype == torch.float64 and index.dtype == torch.int64
    assert torch.equal(rounded, u[index])
    nearest = (sigma[:, None] - u[None]).abs().min(dim=1).values
    assert torch.allclose((rounded - sigma).abs(), nearest, rtol=1e-5)
    assert net.round_sigma(torch.tensor(2.5)).shape == ()
    assert net.round_sigma(torch.full([4, 1, 1, 1], 2.5), return_index=True).shape == (4, 1, 1, 1)
    assert int(net.round_sigma(net.sigma_max, return_index=True)) == 0
    assert int(net.round_sigma(net.sigma_min, return_index=True)) == net.M - 1


# ----------------------------------------------------------------------------------------------------------------------
# The module's source is embedded in pickles and must run inside upstream EDM.


def test_module_imports_and_persistence_decorators():
    tree = ast.parse(Path(networks.__file__).read_text())
    allowed = {'numpy', 'torch', 'torch.nn.functional.silu', 'torch_utils.persistence'}
    assert imported_names(networks.__file__) <= allowed
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            decorators = [ast.unparse(d) for d in node.decorator_list]
            assert decorators == ([] if node.name == 'AttentionOp' else ['persistence.persistent_class']), node.name
