"""Model architectures and preconditioning schemes of "Elucidating the Design Space of Diffusion-Based
Generative Models" (Karras et al. 2022), compatible with the network pickles of the official EDM code.

Specification: docs/edm-compat.md §4 (the pickle format: §5.2). This module's source is embedded in network
pickles and must also run inside upstream EDM, so it imports only numpy, torch and torch_utils.persistence.
"""

import numpy as np
import torch
from torch.nn.functional import silu

from torch_utils import persistence

# ----------------------------------------------------------------------------------------------------------------------
# Weight initialisation (§4.3).


def weight_init(shape: list, mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Draw an initial weight tensor of the given shape with a Xavier or Kaiming rule."""
    if mode == 'xavier_uniform':
        return np.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == 'xavier_normal':
        return np.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == 'kaiming_uniform':
        return np.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == 'kaiming_normal':
        return np.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f'Invalid init mode "{mode}"')


# ----------------------------------------------------------------------------------------------------------------------
# Building blocks (§4.4).


@persistence.persistent_class
class Linear(torch.nn.Module):
    """Fully connected layer whose weights are cast to the activation dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = 'kaiming_normal',
                 init_weight: float = 1, init_bias: float = 0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)
        return x


@persistence.persistent_class
class Conv2d(torch.nn.Module):
    """2-D convolution with optional FIR up- or downsampling; kernel=0 makes it a pure resampler."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: list = [1, 1], fused_resample: bool = False,
                 init_mode: str = 'kaiming_normal', init_weight: float = 1, init_bias: float = 0):
        assert not (up and down)
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = torch.nn.Parameter(
            weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight) if kernel else None
        self.bias = torch.nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        # The 2-D filter f f^T / (sum f)^2, shaped [1,1,K,K]; a buffer only when resampling.
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f).unsqueeze(0).unsqueeze(1) / f.sum().square()
        self.register_buffer('resample_filter', f if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        conv2d, conv_transpose2d = torch.nn.functional.conv2d, torch.nn.functional.conv_transpose2d

        if self.fused_resample and self.up and w is not None:
            # Fused up: the padding is split so that the output is exactly 2x the input (upstream issue #2).
            x = conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                                 padding=max(f_pad - w_pad, 0))
            x = conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = conv2d(x, w, padding=w_pad + f_pad)
            x = conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                     stride=2, padding=f_pad)
            if self.down:
                x = conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x + b.reshape(1, -1, 1, 1)
        return x


@persistence.persistent_class
class GroupNorm(torch.nn.Module):
    """Group normalisation with min(num_groups, C // min_channels_per_group) groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.group_norm(x, num_groups=self.num_groups, weight=self.weight.to(x.dtype),
                                              bias=self.bias.to(x.dtype), eps=self.eps)


class AttentionOp(torch.autograd.Function):
    """Attention weights w[n,i,j] = softmax_j(sum_c q[n,c,i] k[n,c,j] / sqrt(C)), computed in at least float32.

    Backward and forward-mode (jvp) derivatives are explicit and also computed in at least float32, so the op works
    under fp16 training, torch.autograd.forward_ad and torch.func.jvp / grad / vjp.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(q.dtype, torch.float32)
        s = torch.einsum('ncq,nck->nqk', q.to(dtype), k.to(dtype) / np.sqrt(k.shape[1]))
        return s.softmax(dim=2).to(q.dtype)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        q, k = inputs
        ctx.save_for_backward(q, k, output)
        ctx.save_for_forward(q, k, output)

    @staticmethod
    def backward(ctx, dw: torch.Tensor) -> tuple:
        q, k, w = ctx.saved_tensors
        dtype = torch.promote_types(q.dtype, torch.float32)
        w, dw = w.to(dtype), dw.to(dtype)
        ds = w * (dw - (dw * w).sum(dim=2, keepdim=True)) / np.sqrt(k.shape[1])  # softmax backward, then the 1/sqrt(C)
        dq = torch.einsum('nck,nqk->ncq', k.to(dtype), ds)
        dk = torch.einsum('ncq,nqk->nck', q.to(dtype), ds)
        return dq.to(q.dtype), dk.to(k.dtype)

    @staticmethod
    def jvp(ctx, dq: torch.Tensor, dk: torch.Tensor) -> torch.Tensor:
        q, k, w = ctx.saved_tensors
        dtype = torch.promote_types(q.dtype, torch.float32)
        w = w.to(dtype)
        ds = (torch.einsum('ncq,nck->nqk', dq.to(dtype), k.to(dtype))
              + torch.einsum('ncq,nck->nqk', q.to(dtype), dk.to(dtype))) / np.sqrt(k.shape[1])
        return (w * (ds - (w * ds).sum(dim=2, keepdim=True))).to(q.dtype)


@persistence.persistent_class
class UNetBlock(torch.nn.Module):
    """Residual block with noise-embedding modulation, optional up/downsampling and optional self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: int = None, channels_per_head: int = 64, dropout: float = 0,
                 skip_scale: float = 1, eps: float = 1e-5, resample_filter: list = [1, 1], resample_proj: bool = False,
                 adaptive_scale: bool = True, init: dict = dict(), init_zero: dict = dict(init_weight=0),
                 init_attn: dict = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter,
                            **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            init_qkv = init_attn if init_attn is not None else init
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **init_qkv)
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(silu(self.norm0(x)))
        params = self.affine(emb).unsqueeze(2).unsqueeze(3).to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)  # scale first, then shift
            h = silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = silu(self.norm1(h + params))
        h = self.conv1(torch.nn.functional.dropout(h, p=self.dropout, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * self.skip_scale

        if self.num_heads:
            # qkv channels are interleaved per channel: index (head * C/heads + c) * 3 + {0: q, 1: k, 2: v}.
            q, k, v = self.qkv(self.norm2(h)).reshape(h.shape[0] * self.num_heads, h.shape[1] // self.num_heads, 3,
                                                     -1).unbind(2)
            w = AttentionOp.apply(q, k)
            a = torch.einsum('nqk,nck->ncq', w, v)
            h = (self.proj(a.reshape(*h.shape)) + h) * self.skip_scale
        return h


@persistence.persistent_class
class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal embedding [cos(x freq), sin(x freq)] of a noise level (Transformer / DDPM style)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # freq_j = (1 / max_positions) ** (j / (C/2 - endpoint)), j = 0 .. C/2 - 1.
        freqs = torch.arange(start=0, end=self.num_channels // 2, dtype=torch.float32, device=x.device)
        freqs = freqs / (self.num_channels // 2 - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


@persistence.persistent_class
class FourierEmbedding(torch.nn.Module):
    """Random Fourier features [cos(2 pi x freqs), sin(2 pi x freqs)] of a noise level (NCSN++ style)."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer('freqs', torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


def _drop_labels(labels: torch.Tensor, p: float, batch_size: int) -> torch.Tensor:
    """Zero each sample's class labels with probability p (classifier-free guidance training)."""
    keep = torch.rand([batch_size, 1], device=labels.device) >= p
    return labels * keep.to(labels.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# SongUNet: DDPM++ and NCSN++ of Song et al. 2021 (§4.5).


@persistence.persistent_class
class SongUNet(torch.nn.Module):
    """The DDPM++ / NCSN++ U-Net of "Score-Based Generative Modeling through SDEs" (Song et al. 2021)."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: list = [1, 2, 2, 2],
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: list = [16], dropout: float = 0.10,
                 label_dropout: float = 0, embedding_type: str = 'positional', channel_mult_noise: int = 1,
                 encoder_type: str = 'standard', decoder_type: str = 'standard', resample_filter: list = [1, 1]):
        assert embedding_type in ['fourier', 'positional']
        assert encoder_type in ['standard', 'skip', 'residual']
        assert decoder_type in ['standard', 'skip']
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode='xavier_uniform')
        init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5)
        init_attn = dict(init_mode='xavier_uniform', init_weight=np.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=np.sqrt(0.5), eps=1e-6,
                            resample_filter=resample_filter, resample_proj=True, adaptive_scale=False, init=init,
                            init_zero=init_zero, init_attn=init_attn)

        # Mapping network: noise level (+ class label, augmentation labels) -> embedding.
        if embedding_type == 'positional':
            self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f'{res}x{res}_conv'] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == 'skip':
                    self.enc[f'{res}x{res}_aux_down'] = Conv2d(caux, caux, kernel=0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f'{res}x{res}_aux_skip'] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == 'residual':
                    self.enc[f'{res}x{res}_aux_residual'] = Conv2d(caux, cout, kernel=3, down=True,
                                                                   resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=(res in attn_resolutions),
                                                                **block_kwargs)
        skips = [block.out_channels for name, block in self.enc.items() if 'aux' not in name]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f'{res}x{res}_in0'] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attention = (idx == num_blocks and res in attn_resolutions)
                self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=attention, **block_kwargs)
            if decoder_type == 'skip' or level == 0:
                if decoder_type == 'skip' and level < len(channel_mult) - 1:
                    self.dec[f'{res}x{res}_aux_up'] = Conv2d(out_channels, out_channels, kernel=0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f'{res}x{res}_aux_norm'] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f'{res}x{res}_aux_conv'] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor,
                augment_labels: torch.Tensor = None) -> torch.Tensor:
        # Mapping; the two halves of the noise embedding are swapped so that sin comes first.
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                labels = _drop_labels(labels, self.label_dropout, x.shape[0])
            emb = emb + self.map_label(labels * np.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = silu(self.map_layer1(emb))

        # Encoder; aux carries the input image through the 'skip' and 'residual' side paths.
        skips = []
        aux = x
        for name, block in self.enc.items():
            if 'aux_down' in name:
                aux = block(aux)
            elif 'aux_skip' in name:
                x = skips[-1] = x + block(aux)
            elif 'aux_residual' in name:
                x = skips[-1] = aux = (x + block(aux)) / np.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        # Decoder; aux accumulates the output image.
        aux = None
        tmp = None
        for name, block in self.dec.items():
            if 'aux_up' in name:
                aux = block(aux)
            elif 'aux_norm' in name:
                tmp = block(x)
            elif 'aux_conv' in name:
                tmp = block(silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


# ----------------------------------------------------------------------------------------------------------------------
# DhariwalUNet: ADM of Dhariwal & Nichol 2021 (§4.6).


@persistence.persistent_class
class DhariwalUNet(torch.nn.Module):
    """The ADM U-Net of "Diffusion Models Beat GANs on Image Synthesis" (Dhariwal & Nichol 2021)."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: list = [1, 2, 3, 4],
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: list = [32, 16, 8],
                 dropout: float = 0.10, label_dropout: float = 0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode='kaiming_uniform', init_weight=np.sqrt(1 / 3), init_bias=np.sqrt(1 / 3))
        init_zero = dict(init_mode='kaiming_uniform', init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init,
                            init_zero=init_zero)

        # Mapping network.
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = Linear(label_dim, emb_channels, bias=False, init_mode='kaiming_normal',
                                init_weight=np.sqrt(label_dim)) if label_dim else None

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_conv'] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(cout, cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=(res in attn_resolutions),
                                                                **block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f'{res}x{res}_in0'] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=(res in attn_resolutions),
                                                                **block_kwargs)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor,
                augment_labels: torch.Tensor = None) -> torch.Tensor:
        # Mapping (no sin/cos swap here); the label embedding is added after map_layer1.
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = self.map_layer1(emb)
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                labels = _drop_labels(labels, self.label_dropout, x.shape[0])
            emb = emb + self.map_label(labels)
        emb = silu(emb)

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(silu(self.out_norm(x)))


# ----------------------------------------------------------------------------------------------------------------------
# Preconditioning (§4.1, Table 1 of the paper): D(x; sigma) = c_skip x + c_out F(c_in x; c_noise).


def _init_precond(net: torch.nn.Module, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool) -> None:
    """The attributes every preconditioner has (§4.1)."""
    net.img_resolution = img_resolution
    net.img_channels = img_channels
    net.label_dim = label_dim
    net.use_fp16 = use_fp16


def _inner_model(net: torch.nn.Module, model_type: str, out_channels: int, model_kwargs: dict) -> torch.nn.Module:
    """The wrapped network F, built by class name with the preconditioner's shape and labels."""
    return globals()[model_type](img_resolution=net.img_resolution, in_channels=net.img_channels,
                                 out_channels=out_channels, label_dim=net.label_dim, **model_kwargs)


def _precond_inputs(net: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor,
                    force_fp32: bool) -> tuple:
    """Cast and broadcast a preconditioner's inputs (§4.2); returns (x, sigma, class_labels, dtype)."""
    x = x.to(torch.float32)
    sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
    if net.label_dim == 0:
        class_labels = None
    elif class_labels is None:
        class_labels = torch.zeros([1, net.label_dim], device=x.device)
    else:
        class_labels = class_labels.to(torch.float32).reshape(-1, net.label_dim)
    use_fp16 = net.use_fp16 and not force_fp32 and x.device.type == 'cuda'
    return x, sigma, class_labels, (torch.float16 if use_fp16 else torch.float32)


def _run_model(net: torch.nn.Module, x_in: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor,
               dtype: torch.dtype, model_kwargs: dict) -> torch.Tensor:
    """Evaluate the inner network F in the given dtype and return its output in float32."""
    F_x = net.model(x_in.to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
    assert F_x.dtype == dtype
    return F_x.to(torch.float32)


@persistence.persistent_class
class VPPrecond(torch.nn.Module):
    """Preconditioning of the variance preserving (VP) formulation (Song et al. 2021, DDPM++)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5,
                 model_type: str = 'SongUNet', **model_kwargs):
        super().__init__()
        _init_precond(self, img_resolution, img_channels, label_dim, use_fp16)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))
        self.model = _inner_model(self, model_type, img_channels, model_kwargs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor = None, force_fp32: bool = False,
                **model_kwargs) -> torch.Tensor:
        x, sigma, class_labels, dtype = _precond_inputs(self, x, sigma, class_labels, force_fp32)
        c_skip = 1
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return c_skip * x + c_out * _run_model(self, c_in * x, c_noise, class_labels, dtype, model_kwargs)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        """t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(sigma^2 + 1)) - beta_min) / beta_d."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Identity: every sigma is representable."""
        return torch.as_tensor(sigma)


@persistence.persistent_class
class VEPrecond(torch.nn.Module):
    """Preconditioning of the variance exploding (VE) formulation (Song et al. 2021, NCSN++)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.02, sigma_max: float = 100, model_type: str = 'SongUNet', **model_kwargs):
        super().__init__()
        _init_precond(self, img_resolution, img_channels, label_dim, use_fp16)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.model = _inner_model(self, model_type, img_channels, model_kwargs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor = None, force_fp32: bool = False,
                **model_kwargs) -> torch.Tensor:
        x, sigma, class_labels, dtype = _precond_inputs(self, x, sigma, class_labels, force_fp32)
        c_skip = 1
        c_out = sigma
        c_in = 1
        c_noise = (0.5 * sigma).log()
        return c_skip * x + c_out * _run_model(self, c_in * x, c_noise, class_labels, dtype, model_kwargs)

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Identity: every sigma is representable."""
        return torch.as_tensor(sigma)


@persistence.persistent_class
class iDDPMPrecond(torch.nn.Module):
    """Preconditioning of "Improved DDPM" (Nichol & Dhariwal 2021): a discrete set of M noise levels u_j."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 C_1: float = 0.001, C_2: float = 0.008, M: int = 1000, model_type: str = 'DhariwalUNet',
                 **model_kwargs):
        super().__init__()
        _init_precond(self, img_resolution, img_channels, label_dim, use_fp16)
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        # The model predicts 2x channels (mean and variance in iDDPM); only the first img_channels are used.
        self.model = _inner_model(self, model_type, img_channels * 2, model_kwargs)
        # u_M = 0, u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar(j-1) / alpha_bar(j), C_1) - 1) (§3.3).
        u = torch.zeros(M + 1)
        for j in range(M, 0, -1):
            u[j - 1] = ((u[j] ** 2 + 1) / (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1) - 1).sqrt()
        self.register_buffer('u', u)
        self.sigma_min = float(u[M - 1])
        self.sigma_max = float(u[0])

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor = None, force_fp32: bool = False,
                **model_kwargs) -> torch.Tensor:
        x, sigma, class_labels, dtype = _precond_inputs(self, x, sigma, class_labels, force_fp32)
        c_skip = 1
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        F_x = _run_model(self, c_in * x, c_noise, class_labels, dtype, model_kwargs)
        return c_skip * x + c_out * F_x[:, :self.img_channels]

    def alpha_bar(self, j: torch.Tensor) -> torch.Tensor:
        """alpha_bar(j) = sin^2(pi j / (2 M (C_2 + 1)))."""
        j = torch.as_tensor(j)
        return (0.5 * np.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma: torch.Tensor, return_index: bool = False) -> torch.Tensor:
        """Snap sigma to the nearest u_j (or return j), keeping sigma's shape and device."""
        sigma = torch.as_tensor(sigma)
        # The index is piecewise constant in sigma, so it is computed on detached values (works under forward AD).
        points = sigma.detach().to(self.u.device).to(torch.float32).reshape(1, -1, 1)
        index = torch.cdist(points, self.u.reshape(1, -1, 1)).argmin(2)
        result = index if return_index else self.u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)


@persistence.persistent_class
class EDMPrecond(torch.nn.Module):
    """The preconditioning proposed in the EDM paper (Table 1, right column)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = float('inf'), sigma_data: float = 0.5,
                 model_type: str = 'DhariwalUNet', **model_kwargs):
        super().__init__()
        _init_precond(self, img_resolution, img_channels, label_dim, use_fp16)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = _inner_model(self, model_type, img_channels, model_kwargs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor = None, force_fp32: bool = False,
                **model_kwargs) -> torch.Tensor:
        x, sigma, class_labels, dtype = _precond_inputs(self, x, sigma, class_labels, force_fp32)
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip * x + c_out * _run_model(self, c_in * x, c_noise, class_labels, dtype, model_kwargs)

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Identity: every sigma is representable."""
        return torch.as_tensor(sigma)
