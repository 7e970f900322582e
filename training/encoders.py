"""Encoders between dataset pixels and the space a diffusion network works in (EDM2's interface).

`StandardRGBEncoder` maps uint8 RGB pixels to [-1, 1] and back. `StabilityVAEEncoder` works in the latent space of
a Stable Diffusion VAE: its raw latents (the VAE's 4-channel mean and std) are sampled, then standardised per channel
with fixed `scale` and `bias`. The VAE itself is never pickled: it is loaded at first use from a folder given by the
user or from the local diffusers cache, and never downloaded here. Class names, constructor arguments and pickled
attributes are those of upstream EDM2, so release pickles load into these classes. This module's source is embedded
in network pickles, so it imports only os, numpy, torch, dnnlib and torch_utils.persistence.
"""

import os

import numpy as np
import torch

import dnnlib
from torch_utils import persistence

# Where upstream EDM2 caches the VAE (a Hugging Face hub cache); searched offline.
_DIFFUSERS_CACHE = ('diffusers',)

# dnnlib.util.UserError here; upstream's dnnlib (when this source runs inside upstream EDM2) has none.
_UserError = getattr(dnnlib.util, 'UserError', RuntimeError)


class Encoder:
    """Base class: pixels -> raw latents (`encode_pixels`, deterministic), raw -> final latents (`encode_latents`),
    final latents -> uint8 pixels (`decode`)."""

    def init(self, device: torch.device) -> None:
        """Prepare for use on `device` (load lazily held models); a no-op by default."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> final latents."""
        return self.encode_latents(self.encode_pixels(x))

    def encode_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> raw latents (what a dataset stores)."""
        raise NotImplementedError

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Raw latents -> final latents (what the network sees)."""
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Final latents -> uint8 pixels."""
        raise NotImplementedError


@persistence.persistent_class
class StandardRGBEncoder(Encoder):
    """RGB pixels as they are: raw latents are the uint8 pixels, final latents x / 127.5 - 1 in [-1, 1]."""

    def __init__(self):
        super().__init__()

    def encode_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32) / 127.5 - 1

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        # +128 instead of +127.5: the uint8 cast truncates, so this rounds to the nearest level.
        return (x.to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)


@persistence.persistent_class
class StabilityVAEEncoder(Encoder):
    """Latents of a Stable Diffusion VAE (diffusers AutoencoderKL), standardised per channel.

    Final latents are (mean + N(0,1) std) * scale + bias with scale = final_std / raw_std and
    bias = final_mean - raw_mean * scale (float32), where mean and std are the VAE's raw latent distribution.
    """

    def __init__(self, vae_name: str = 'stabilityai/sd-vae-ft-mse', raw_mean: list = [5.81, 3.25, 0.12, -2.15],
                 raw_std: list = [4.17, 4.62, 3.71, 3.28], final_mean: float = 0, final_std: float = 0.5,
                 batch_size: int = 8):
        super().__init__()
        self.vae_name = vae_name
        self.scale = np.float32(final_std) / np.float32(raw_std)
        self.bias = np.float32(final_mean) - np.float32(raw_mean) * self.scale
        self.batch_size = int(batch_size)
        self._vae = None

    def init(self, device: torch.device, vae_path: str = None) -> None:
        """Load the VAE (once) from `vae_path`, or `vae_name` if that is a folder, or else the local diffusers
        cache, and move it to `device`; a UserError says what to do when it is not available."""
        if self._vae is None:
            self._vae = _load_vae(self.vae_name, vae_path)
        self._vae.to(device)

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _vae=None)   # the VAE is never pickled

    def _channel_constant(self, x: torch.Tensor, value: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)

    def encode_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> the VAE's raw latent mean and std, concatenated (8 channels)."""
        self.init(x.device)
        x = x.to(torch.float32) / 255
        return torch.cat([self._run_encoder(batch) for batch in x.split(self.batch_size)])

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Sample the raw latent distribution and standardise it."""
        mean, std = x.to(torch.float32).chunk(2, dim=1)
        x = mean + torch.randn_like(mean) * std
        return x * self._channel_constant(x, self.scale) + self._channel_constant(x, self.bias)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the standardisation, run the VAE decoder in batches of `batch_size`, quantise to uint8."""
        self.init(x.device)
        x = x.to(torch.float32)
        x = (x - self._channel_constant(x, self.bias)) / self._channel_constant(x, self.scale)
        x = torch.cat([self._run_decoder(batch) for batch in x.split(self.batch_size)])
        return x.clamp(0, 1).mul(255).to(torch.uint8)

    def _run_encoder(self, x: torch.Tensor) -> torch.Tensor:
        dist = self._vae.encode(x)['latent_dist']
        return torch.cat([dist.mean, dist.std], dim=1)

    def _run_decoder(self, x: torch.Tensor) -> torch.Tensor:
        return self._vae.decode(x)['sample']


def _load_vae(vae_name: str, vae_path: str = None) -> torch.nn.Module:
    """The diffusers AutoencoderKL from a local folder or the local cache, in eval mode; never downloads."""
    try:
        import diffusers   # pylint: disable=import-outside-toplevel
    except ImportError:
        raise _UserError(f'decoding latents needs the VAE {vae_name!r} and the package diffusers, which is not '
                         f'installed: pip install diffusers') from None
    if vae_path is None and os.path.isdir(vae_name):
        vae_path = vae_name
    if vae_path is not None:
        if not os.path.isdir(vae_path):
            raise _UserError(f'the VAE folder {vae_path!r} does not exist')
        sources = [dict(pretrained_model_name_or_path=vae_path)]
    else:
        sources = [dict(pretrained_model_name_or_path=vae_name, local_files_only=True, cache_dir=cache)
                   for cache in (dnnlib.make_cache_dir_path(*_DIFFUSERS_CACHE), None)]   # upstream's, then HF's
    for source in sources:
        try:
            vae = diffusers.models.AutoencoderKL.from_pretrained(**source)
        except (OSError, ValueError):   # not in this place
            continue
        return vae.eval().requires_grad_(False)
    where = vae_path if vae_path is not None else 'the local diffusers cache'
    raise _UserError(f'the VAE {vae_name!r} was not found in {where}; download it once (for example '
                     f'`huggingface-cli download {vae_name} --local-dir DIR`) and pass that folder as the VAE path')
