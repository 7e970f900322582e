"""Non-leaking augmentation in the style of ADA, conditioned via 9 labels (docs/edm-compat.md §7.3).

Labels, float32 [N, 9], in upstream order: xflip, yflip, scale, cos(theta)-1, sin(theta), w*cos(r), w*sin(r),
translate x, translate y. A sample where a transform does not fire gets a zero in its labels.
x/y flips and the integer transforms (rotate_int, translate_int) move whole pixels exactly; the fractional
geometric transforms resample: reflect padding, 2x upsampling with the sym6 wavelet low-pass filter, a bilinear
grid_sample, and filtered 2x downsampling. Colour transforms act through a 4x4 matrix; they and the integer
transforms have no labels of their own (train.py leaves them off).
"""
import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import persistence

# Decomposition low-pass filter of the Symlet-6 wavelet (published constant; sums to sqrt(2)).
SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]


def _matrix(rows, device: torch.device) -> torch.Tensor:
    """Stack rows of scalars / [N] tensors into an [N, R, C] batch of matrices."""
    elems = [torch.as_tensor(x, dtype=torch.float32, device=device) for row in rows for x in row]
    n = max(e.numel() if e.ndim > 0 else 1 for e in elems)
    elems = [e.expand(n) if e.ndim == 0 else e.reshape(n) for e in elems]
    return torch.stack(elems, dim=-1).reshape(n, len(rows), len(rows[0]))


def _translate2d(tx, ty, device):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], device)


def _scale2d(sx, sy, device):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], device)


def _rotate2d(theta, device):
    return _matrix([[torch.cos(theta), -torch.sin(theta), 0], [torch.sin(theta), torch.cos(theta), 0], [0, 0, 1]],
                   device)


def _translate3d(t, device):
    return _matrix([[1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1]], device)


def _scale3d(s, device):
    return _matrix([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]], device)


def _rotate3d(v: torch.Tensor, theta: torch.Tensor, device) -> torch.Tensor:
    vx, vy, vz = v[0], v[1], v[2]
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    return _matrix([[vx * vx * cc + c, vy * vx * cc - vz * s, vz * vx * cc + vy * s, 0],
                    [vx * vy * cc + vz * s, vy * vy * cc + c, vz * vy * cc - vx * s, 0],
                    [vx * vz * cc - vy * s, vy * vz * cc + vx * s, vz * vz * cc + c, 0],
                    [0, 0, 0, 1]], device)


@persistence.persistent_class
class AugmentPipe:
    """Geometric and colour augmentation; __call__(images) returns (images, labels [N, 9])."""

    def __init__(self, p: float = 1,
                 xflip: float = 0, yflip: float = 0, rotate_int: float = 0, translate_int: float = 0,
                 translate_int_max: float = 0.125,
                 scale: float = 0, rotate_frac: float = 0, aniso: float = 0, translate_frac: float = 0,
                 scale_std: float = 0.2, rotate_frac_max: float = 1, aniso_std: float = 0.2,
                 aniso_rotate_prob: float = 0.5, translate_frac_std: float = 0.125,
                 brightness: float = 0, contrast: float = 0, lumaflip: float = 0, hue: float = 0,
                 saturation: float = 0, brightness_std: float = 0.2, contrast_std: float = 0.5, hue_max: float = 1,
                 saturation_std: float = 1):
        super().__init__()
        self.p = float(p)  # overall multiplier for augmentation probability
        # Pixel blitting.
        self.xflip = float(xflip)
        self.yflip = float(yflip)
        self.rotate_int = float(rotate_int)
        self.translate_int = float(translate_int)
        self.translate_int_max = float(translate_int_max)
        # General geometric transformations.
        self.scale = float(scale)
        self.rotate_frac = float(rotate_frac)
        self.aniso = float(aniso)
        self.translate_frac = float(translate_frac)
        self.scale_std = float(scale_std)
        self.rotate_frac_max = float(rotate_frac_max)
        self.aniso_std = float(aniso_std)
        self.aniso_rotate_prob = float(aniso_rotate_prob)
        self.translate_frac_std = float(translate_frac_std)
        # Colour transformations.
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.lumaflip = float(lumaflip)
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.brightness_std = float(brightness_std)
        self.contrast_std = float(contrast_std)
        self.hue_max = float(hue_max)
        self.saturation_std = float(saturation_std)

    def _fires(self, multiplier: float, n: int, device: torch.device) -> torch.Tensor:
        """Per-sample Bernoulli(min(multiplier * p, 1)) as a bool [N]."""
        return torch.rand([n], device=device) < multiplier * self.p

    def __call__(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Augment a float [N, C, H, W] batch; returns (images, labels float32 [N, 9])."""
        N, C, H, W = images.shape
        device = images.device
        labels = torch.zeros([N, 9], dtype=torch.float32, device=device)
        if self.p <= 0:
            return images, labels

        # Pixel blitting: exact x-flip and y-flip (labels 0, 1).
        if self.xflip > 0:
            w = torch.randint(2, [N], device=device) * self._fires(self.xflip, N, device)
            images = torch.where(w.view(N, 1, 1, 1) > 0, images.flip(3), images)
            labels[:, 0] = w.float()
        if self.yflip > 0:
            w = torch.randint(2, [N], device=device) * self._fires(self.yflip, N, device)
            images = torch.where(w.view(N, 1, 1, 1) > 0, images.flip(2), images)
            labels[:, 1] = w.float()
        # Integer rotation by multiples of 90 degrees (square images) and integer translation (no labels).
        if self.rotate_int > 0 and H == W:
            k = torch.randint(4, [N], device=device) * self._fires(self.rotate_int, N, device)
            images = torch.stack([torch.rot90(img, int(kk), dims=(1, 2)) for img, kk in zip(images, k)])
        if self.translate_int > 0:
            t = (torch.rand([N, 2], device=device) * 2 - 1) * self.translate_int_max
            t = t * self._fires(self.translate_int, N, device).unsqueeze(1)
            tx = torch.round(t[:, 0] * W).long()
            ty = torch.round(t[:, 1] * H).long()
            ys = torch.arange(H, device=device).view(1, H, 1) - ty.view(N, 1, 1)
            xs = torch.arange(W, device=device).view(1, 1, W) - tx.view(N, 1, 1)
            ys = (H - 1) - ((H - 1) - ys.abs() % (2 * H - 2 if H > 1 else 1)).abs()  # reflect
            xs = (W - 1) - ((W - 1) - xs.abs() % (2 * W - 2 if W > 1 else 1)).abs()
            idx = (ys * W + xs).view(N, 1, H * W).expand(N, C, H * W)
            images = images.reshape(N, C, H * W).gather(2, idx).reshape(N, C, H, W)

        # General geometric transformations: accumulate the inverse matrix G_inv (centred pixel coordinates).
        I3 = torch.eye(3, device=device)
        G_inv = I3.expand(N, 3, 3)
        if self.scale > 0:
            s = torch.randn([N], device=device) * self.scale_std
            s = torch.where(self._fires(self.scale, N, device), s, torch.zeros_like(s))
            G_inv = G_inv @ _scale2d(2 ** -s, 2 ** -s, device)
            labels[:, 2] = s
        if self.rotate_frac > 0:
            theta = (torch.rand([N], device=device) * 2 - 1) * math.pi * self.rotate_frac_max
            theta = torch.where(self._fires(self.rotate_frac, N, device), theta, torch.zeros_like(theta))
            G_inv = G_inv @ _rotate2d(-theta, device)
            labels[:, 3] = torch.cos(theta) - 1
            labels[:, 4] = torch.sin(theta)
        if self.aniso > 0:
            w = torch.randn([N], device=device) * self.aniso_std
            r = (torch.rand([N], device=device) * 2 - 1) * math.pi
            fires = self._fires(self.aniso, N, device)
            w = torch.where(fires, w, torch.zeros_like(w))
            r = torch.where(torch.rand([N], device=device) < self.aniso_rotate_prob, r, torch.zeros_like(r))
            r = torch.where(fires, r, torch.zeros_like(r))
            G_inv = G_inv @ _rotate2d(r, device) @ _scale2d(2 ** -w, 2 ** w, device) @ _rotate2d(-r, device)
            labels[:, 5] = w * torch.cos(r)
            labels[:, 6] = w * torch.sin(r)
        if self.translate_frac > 0:
            t = torch.randn([N, 2], device=device) * self.translate_frac_std
            t = t * self._fires(self.translate_frac, N, device).unsqueeze(1)
            G_inv = G_inv @ _translate2d(-t[:, 0] * W, -t[:, 1] * H, device)
            labels[:, 7] = t[:, 0]
            labels[:, 8] = t[:, 1]
        if self.scale > 0 or self.rotate_frac > 0 or self.aniso > 0 or self.translate_frac > 0:
            images = self._resample(images, G_inv)

        # Colour transformations through a 4x4 matrix (no labels).
        if self.brightness > 0 or self.contrast > 0 or self.lumaflip > 0 or self.hue > 0 or self.saturation > 0:
            images = self._color(images)
        return images, labels

    def _resample(self, images: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
        """out(p) = in(G_inv p): reflect pad, 2x sym6 upsampling, bilinear grid_sample, filtered 2x downsampling."""
        N, C, H, W = images.shape
        device, dtype = images.device, images.dtype
        f = torch.as_tensor(np.asarray(SYM6) / np.sum(SYM6), dtype=dtype, device=device)  # gain 1
        L = f.numel()  # 12 taps, centre 5.5

        # Upsampled output positions j in [-5, 2H+4] represent output pixel coordinate (j - 0.5) / 2.
        jy = torch.arange(-(L // 2 - 1), 2 * H + L // 2 - 1, device=device, dtype=torch.float32)
        jx = torch.arange(-(L // 2 - 1), 2 * W + L // 2 - 1, device=device, dtype=torch.float32)
        cy = (jy - 0.5) / 2 - (H - 1) / 2
        cx = (jx - 0.5) / 2 - (W - 1) / 2
        gy, gx = torch.meshgrid(cy, cx, indexing='ij')
        pts = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.ones_like(gx).reshape(-1)])  # [3, P]
        src = G_inv.to(torch.float32) @ pts  # [N, 3, P] centred source coordinates

        # Reflect padding large enough for the source footprint (reflect needs pad < size).
        need_x = float((src[:, 0].abs().max() - (W - 1) / 2).clamp(min=0)) + 3
        need_y = float((src[:, 1].abs().max() - (H - 1) / 2).clamp(min=0)) + 3
        mx = int(min(math.ceil(need_x), W - 1))
        my = int(min(math.ceil(need_y), H - 1))
        x = F.pad(images, [mx, mx, my, my], mode='reflect') if (mx > 0 or my > 0) else images
        Hp, Wp = H + 2 * my, W + 2 * mx

        # 2x upsampling: zero insertion, then the reversed (synthesis) filter with gain 2 per axis, so that the
        # up/down pair has a symmetric total delay; y[j] represents (j - 0.5) / 2.
        fu = f.flip(0) * 2
        up = torch.zeros([N, C, 2 * Hp, 2 * Wp], device=device, dtype=dtype)
        up[:, :, ::2, ::2] = x
        up = F.pad(up, [L // 2, L // 2 - 1, L // 2, L // 2 - 1])
        up = F.conv2d(up.reshape(N * C, 1, *up.shape[2:]), fu.view(1, 1, 1, L)).reshape(N, C, up.shape[2], -1)
        up = F.conv2d(up.reshape(N * C, 1, *up.shape[2:]), fu.view(1, 1, L, 1)).reshape(N, C, 2 * Hp, 2 * Wp)

        # Bilinear sampling at the source positions (align_corners=False: index i -> (2i + 1) / S - 1).
        ix = 2 * (src[:, 0] + (W - 1) / 2 + mx) + 0.5
        iy = 2 * (src[:, 1] + (H - 1) / 2 + my) + 0.5
        grid = torch.stack([(2 * ix + 1) / (2 * Wp) - 1, (2 * iy + 1) / (2 * Hp) - 1], dim=-1)
        grid = grid.view(N, jy.numel(), jx.numel(), 2).to(dtype)
        z = F.grid_sample(up, grid, mode='bilinear', padding_mode='zeros', align_corners=False)

        # Filtered 2x downsampling: out[i] = sum_t f[t] z[2i + t] (valid), which is ~ z at position 2i + 0.5.
        z = F.conv2d(z.reshape(N * C, 1, *z.shape[2:]), f.view(1, 1, 1, L), stride=(1, 2))
        z = F.conv2d(z, f.view(1, 1, L, 1), stride=(2, 1))
        return z.reshape(N, C, H, W)

    def _color(self, images: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, luma flip, hue rotation and saturation via a per-sample 4x4 colour matrix."""
        N, C, H, W = images.shape
        device = images.device
        I4 = torch.eye(4, device=device)
        M = I4.expand(N, 4, 4)
        luma_axis = torch.as_tensor(np.asarray([1, 1, 1, 0]) / np.sqrt(3), dtype=torch.float32, device=device)
        if self.brightness > 0:
            b = torch.randn([N], device=device) * self.brightness_std
            b = torch.where(self._fires(self.brightness, N, device), b, torch.zeros_like(b))
            M = _translate3d(b, device) @ M
        if self.contrast > 0:
            c = torch.exp2(torch.randn([N], device=device) * self.contrast_std)
            c = torch.where(self._fires(self.contrast, N, device), c, torch.ones_like(c))
            M = _scale3d(c, device) @ M
        if self.lumaflip > 0:
            i = torch.randint(2, [N], device=device) * self._fires(self.lumaflip, N, device)
            M = (I4 - 2 * torch.outer(luma_axis, luma_axis) * i.view(N, 1, 1)) @ M
        if self.hue > 0 and C > 1:
            theta = (torch.rand([N], device=device) * 2 - 1) * math.pi * self.hue_max
            theta = torch.where(self._fires(self.hue, N, device), theta, torch.zeros_like(theta))
            M = _rotate3d(luma_axis, theta, device) @ M
        if self.saturation > 0 and C > 1:
            s = torch.exp2(torch.randn([N], device=device) * self.saturation_std)
            s = torch.where(self._fires(self.saturation, N, device), s, torch.ones_like(s))
            P = torch.outer(luma_axis, luma_axis)
            M = (P + (I4 - P) * s.view(N, 1, 1)) @ M
        x = images.reshape(N, C, H * W)
        if C == 3:
            x = M[:, :3, :3].to(x.dtype) @ x + M[:, :3, 3:].to(x.dtype)
        elif C == 1:
            Mg = M[:, :3, :].mean(dim=(1, 2), keepdim=True) * 0 + M[:, :3, :3].mean(dim=1).sum(dim=1).view(N, 1, 1)
            x = x * Mg.to(x.dtype) + M[:, :3, 3].mean(dim=1).view(N, 1, 1).to(x.dtype)
        else:
            raise ValueError('colour augmentation needs 1 or 3 channels')
        return x.reshape(N, C, H, W)
