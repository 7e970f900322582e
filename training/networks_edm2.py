"""The magnitude-preserving network of EDM2 (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models") and its preconditioner, compatible with the network pickles of the official EDM2 code.

Every layer keeps the expected magnitude of its activations at one: weights are normalised per output row on every
call (and, in training mode, also overwritten with their normalised copy), there are no biases, and sums,
concatenations and the SiLU are rescaled to preserve unit variance. Class names, constructor arguments, defaults,
plain attributes and state_dict keys are those of upstream, so release pickles load into these classes.
This module's source is embedded in network pickles and must also run inside upstream EDM2, so it imports only
numpy, torch and torch_utils.persistence.
"""

import numpy as np
import torch

from torch_utils import persistence

# ----------------------------------------------------------------------------------------------------------------------
# Magnitude-preserving operations.


def normalize(x: torch.Tensor, dim: list = None, eps: float = 1e-4) -> torch.Tensor:
    """x divided by eps + its RMS over `dim` (default: all but the first), the norm taken in float32."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    rms_factor = np.sqrt(norm.numel() / x.numel())   # ||v|| / sqrt(n/m) is the RMS of each of the m slices
    return x / torch.add(eps, norm, alpha=rms_factor).to(x.dtype)


def resample(x: torch.Tensor, f: list = [1, 1], mode: str = 'keep') -> torch.Tensor:
    """Depthwise 2x down- or upsampling with the separable filter f f^T / (sum f)^2; 'keep' is the identity."""
    if mode == 'keep':
        return x
    f = np.float32(f)
    assert f.ndim == 1 and len(f) % 2 == 0
    pad = (len(f) - 1) // 2
    f = f / f.sum()
    kernel = torch.as_tensor(np.outer(f, f)[np.newaxis, np.newaxis], dtype=x.dtype, device=x.device)
    c = x.shape[1]
    if mode == 'down':
        return torch.nn.functional.conv2d(x, kernel.tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))
    assert mode == 'up'
    # Each output pixel receives one tap per dimension of the stride-2 transposed filter: x4 keeps the mean.
    return torch.nn.functional.conv_transpose2d(x, (kernel * 4).tile([c, 1, 1, 1]), groups=c, stride=2,
                                                padding=(pad,))


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU divided by its output RMS under unit-normal input (0.596)."""
    return torch.nn.functional.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """(1-t) a + t b rescaled to unit magnitude for independent unit inputs (torch.lerp's rounding)."""
    return a.lerp(b, t) / np.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenate a and b along `dim`, weighted (1-t) : t per tensor and rescaled to unit total magnitude."""
    n_a = a.shape[dim]
    n_b = b.shape[dim]
    c = np.sqrt((n_a + n_b) / ((1 - t) ** 2 + t ** 2))
    return torch.cat([a * (c / np.sqrt(n_a) * (1 - t)), b * (c / np.sqrt(n_b) * t)], dim=dim)


# ----------------------------------------------------------------------------------------------------------------------
# Layers.


@persistence.persistent_class
class MPFourier(torch.nn.Module):
    """Random Fourier features sqrt(2) cos(x freqs + phases) of a scalar per sample (unit RMS)."""

    def __init__(self, num_channels: int, bandwidth: float = 1):
        super().__init__()
        self.register_buffer('freqs', 2 * np.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer('phases', 2 * np.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.outer(x.to(torch.float32), self.freqs.to(torch.float32))
        y = (y + self.phases.to(torch.float32)).cos() * np.sqrt(2)
        return y.to(x.dtype)


@persistence.persistent_class
class MPConv(torch.nn.Module):
    """Bias-free linear layer (kernel []) or 'same' convolution (kernel [k, k]) with weights normalised per row.

    In training mode every call first overwrites the stored weight with its normalised copy (forced weight
    normalisation), so the weights never grow; the layer then uses normalise(stored weight) * gain / sqrt(fan_in).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: list):
        super().__init__()
        self.out_channels = out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = self.weight.to(torch.float32)   # the parameter itself when it is float32, a copy otherwise
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))   # a float32 w sees the update: it is normalised twice, as upstream
        w = normalize(w)
        w = (w * (gain / np.sqrt(w[0].numel()))).to(x.dtype)   # a 0-dim float16 gain is divided in float16
        if w.ndim == 2:
            return x @ w.t()
        assert w.ndim == 4
        return torch.nn.functional.conv2d(x, w, padding=(w.shape[-1] // 2,))


@persistence.persistent_class
class Block(torch.nn.Module):
    """Residual block: optional resampling, embedding-modulated residual branch, optional self-attention.

    Encoder blocks ('enc') resample, project and pixel-normalise the main path before the residual branch; decoder
    blocks ('dec') compute the branch from the resampled input and project the main path afterwards.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: str = 'enc',
                 resample_mode: str = 'keep', resample_filter: list = [1, 1], attention: bool = False,
                 channels_per_head: int = 64, dropout: float = 0, res_balance: float = 0.3, attn_balance: float = 0.3,
                 clip_act: float = 256):
        super().__init__()
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = resample_filter
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == 'enc' else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        # Absent optional layers are plain None attributes, as in upstream's pickles.
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads != 0 else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads != 0 else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == 'enc':
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)   # pixel norm over channels

        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * scale.unsqueeze(2).unsqueeze(3).to(y.dtype))
        if self.training and self.dropout != 0:
            y = torch.nn.functional.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == 'dec' and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        if self.num_heads != 0:
            # qkv channels of a head interleave q, k, v: channel = head * 3c + 3j + {0: q, 1: k, 2: v}.
            y = self.attn_qkv(x)
            y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])
            q, k, v = normalize(y, dim=2).unbind(3)
            w = torch.einsum('nhcq,nhck->nhqk', q, k / np.sqrt(q.shape[2])).softmax(dim=3)
            y = torch.einsum('nhqk,nhck->nhcq', w, v)
            y = self.attn_proj(y.reshape(*x.shape))
            x = mp_sum(x, y, t=self.attn_balance)

        if self.clip_act is not None:
            x = x.clip(-self.clip_act, self.clip_act)
        return x


# ----------------------------------------------------------------------------------------------------------------------
# The UNet and its preconditioner.


@persistence.persistent_class
class UNet(torch.nn.Module):
    """EDM2's UNet: `num_blocks` blocks per level, attention at `attn_resolutions`, magnitude-preserving skips.

    Block arguments not named here (channels_per_head, dropout, res_balance, attn_balance, clip_act,
    resample_filter) are passed on to every Block.
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, model_channels: int = 192,
                 channel_mult: list = [1, 2, 3, 4], channel_mult_noise: int = None, channel_mult_emb: int = None,
                 num_blocks: int = 3, attn_resolutions: list = [16, 8], label_balance: float = 0.5,
                 concat_balance: float = 0.5, **block_kwargs):
        super().__init__()
        widths = [model_channels * m for m in channel_mult]
        noise_channels = model_channels * channel_mult_noise if channel_mult_noise is not None else widths[0]
        emb_channels = model_channels * channel_mult_emb if channel_mult_emb is not None else max(widths)
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))

        self.emb_fourier = MPFourier(noise_channels)
        self.emb_noise = MPConv(noise_channels, emb_channels, kernel=[])
        self.emb_label = MPConv(label_dim, emb_channels, kernel=[]) if label_dim != 0 else None

        # Encoder: a 3x3 conv on the input plus a constant channel, then per level an optional downsampling block
        # and `num_blocks` blocks.
        self.enc = torch.nn.ModuleDict()
        out = img_channels + 1
        for level, width in enumerate(widths):
            res = img_resolution >> level
            if level == 0:
                self.enc[f'{res}x{res}_conv'] = MPConv(out, width, kernel=[3, 3])
                out = width
            else:
                self.enc[f'{res}x{res}_down'] = Block(out, out, emb_channels, flavor='enc', resample_mode='down',
                                                      **block_kwargs)
            for i in range(num_blocks):
                self.enc[f'{res}x{res}_block{i}'] = Block(out, width, emb_channels, flavor='enc',
                                                          attention=res in attn_resolutions, **block_kwargs)
                out = width

        # Decoder: two blocks at the lowest level (the first with attention) or an upsampling block, then
        # `num_blocks` + 1 blocks per level, each taking one skip connection.
        self.dec = torch.nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values()]
        for level, width in reversed(list(enumerate(widths))):
            res = img_resolution >> level
            if level == len(widths) - 1:
                self.dec[f'{res}x{res}_in0'] = Block(out, out, emb_channels, flavor='dec', attention=True,
                                                     **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = Block(out, out, emb_channels, flavor='dec', **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = Block(out, out, emb_channels, flavor='dec', resample_mode='up',
                                                    **block_kwargs)
            for i in range(num_blocks + 1):
                self.dec[f'{res}x{res}_block{i}'] = Block(out + skips.pop(), width, emb_channels, flavor='dec',
                                                          attention=res in attn_resolutions, **block_kwargs)
                out = width
        self.out_conv = MPConv(out, img_channels, kernel=[3, 3])

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            labels = class_labels * np.sqrt(class_labels.shape[1])   # one-hot rows at unit RMS
            emb = mp_sum(emb, self.emb_label(labels), t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if 'conv' in name else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if 'block' in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


@persistence.persistent_class
class Precond(torch.nn.Module):
    """EDM preconditioning of the UNet plus a log-variance head (the loss weight's uncertainty, a function of sigma).

    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) with c_noise = ln(sigma) / 4 (EDM paper, Table 1).
    Arguments not named here go to the UNet, and from there to its Blocks.
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool = True,
                 sigma_data: float = 0.5, logvar_channels: int = 128, **unet_kwargs):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_data = sigma_data
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor = None,
                force_fp32: bool = False, return_logvar: bool = False, **unet_kwargs):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)   # contributes nothing
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        # float16 only for CUDA inputs: on the CPU use_fp16 and force_fp32 change nothing.
        dtype = torch.float16 if self.use_fp16 and not force_fp32 and x.device.type == 'cuda' else torch.float32

        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.flatten().log() / 4
        F_x = self.unet((c_in * x).to(dtype), c_noise, class_labels, **unet_kwargs)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        if not return_logvar:
            return D_x
        logvar = self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
        return D_x, logvar
