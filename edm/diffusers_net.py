"""A diffusers UNet trained as a discrete-time VP model, seen as EDM's denoiser D(x; sigma): `load_diffusers`.

A DDPM/DDIM-style model is trained on 1,000 (or `num_train_timesteps`) discrete steps with noise table alpha_bar[t]:
x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps. Dividing by sqrt(alpha_bar) gives EDM's x = x_0 + sigma eps with
    sigma[t] = sqrt((1 - alpha_bar[t]) / alpha_bar[t]),
so EDM's sampler runs the same ODE in x: the UNet sees x / sqrt(1 + sigma^2) (= x_t), at the timestep whose sigma is
the requested one (linear interpolation of t in log sigma between the table's entries, continuous t in between), and
its prediction becomes D:
    epsilon:       D = x - sigma eps
    sample:        D = x_0
    v_prediction:  D = x / (1 + sigma^2) - sigma v / sqrt(1 + sigma^2)      (v = sqrt(ab) eps - sqrt(1 - ab) x_0)
sigma_min and sigma_max are the table's ends. Class-conditional UNets (`num_class_embeds`) take EDM's one-hot labels.

The folder is what `save_pretrained` writes: a pipeline folder (`unet/` and `scheduler/`, with or without
model_index.json) or a UNet folder with `scheduler_config.json` beside its config. Only safetensors weights are read,
into a network built on the meta device from the config, after their names and shapes are checked: no pickle, no
remote code, nothing downloaded.
"""

import contextlib
import json
import math
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch.autograd import forward_ad
from torch.nn.attention import SDPBackend, sdpa_kernel

from dnnlib.util import UserError
from torch_utils.misc import shape_mismatch

PREFIX = 'diffusers:'
WEIGHTS = 'diffusion_pytorch_model.safetensors'
PREDICTIONS = ('epsilon', 'sample', 'v_prediction')


class DiffusersDenoiser(torch.nn.Module):
    """D(x; sigma) of a diffusers UNet2DModel trained as a discrete VP model, with EDM's network interface."""

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str):
        super().__init__()
        self.unet, self.prediction_type = unet, prediction_type
        for module in unet.modules():   # GroupNorm's forward-mode AD views its input: diffusers' attention passes it
            if isinstance(module, torch.nn.GroupNorm):   # transposed tensors, which the closed form's JVP then refuses
                module.register_forward_pre_hook(_contiguous_inputs)
        config = unet.config
        self.img_resolution, self.img_channels = int(config.sample_size), int(config.in_channels)
        self.label_dim = int(config.num_class_embeds or 0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().double()
        self.register_buffer('log_sigmas', sigmas.log())
        self.sigma_min, self.sigma_max = float(sigmas[0]), float(sigmas[-1])

    def round_sigma(self, sigma: Any) -> torch.Tensor:
        """Continuous noise levels: timesteps between the table's entries are interpolated, not rounded."""
        return torch.as_tensor(sigma)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model's (fractional) timestep of each sigma: t linear in log sigma between table entries, clamped to
        [0, T - 1]."""
        log_sigma = sigma.double().clamp(min=1e-10).log()
        i = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, len(self.log_sigmas) - 1)
        low, high = self.log_sigmas[i - 1], self.log_sigmas[i]
        w = ((log_sigma - low) / (high - low)).clamp(0, 1)
        return (i - 1 + w).float()

    def forward(self, x: torch.Tensor, sigma: Any, class_labels: Optional[torch.Tensor] = None,
                **_unused) -> torch.Tensor:
        """D(x; sigma) from the UNet's prediction at x / sqrt(1 + sigma^2) and the timestep of sigma, in float32 (as
        EDMPrecond computes)."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        x_t = x / (1 + s ** 2).sqrt()
        labels = None
        if self.label_dim:
            labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if class_labels is None \
                else class_labels.reshape(x.shape[0], -1).argmax(dim=1)
        dual = forward_ad.unpack_dual(x).tangent is not None or forward_ad.unpack_dual(sigma).tangent is not None
        kernels = sdpa_kernel(SDPBackend.MATH) if dual else contextlib.nullcontext()   # the fused attention kernels
        with kernels:                                                                  # have no forward-mode AD
            out = self.unet(x_t, self.sigma_to_t(sigma), class_labels=labels).sample[:, :x.shape[1]]
        if self.prediction_type == 'epsilon':
            return x - s * out
        if self.prediction_type == 'sample':
            return out
        return x / (1 + s ** 2) - s * out / (1 + s ** 2).sqrt()                # v_prediction


def _contiguous_inputs(_module: torch.nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the module's tensor arguments made contiguous."""
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def _read_json(path: str) -> Dict[str, Any]:
    """A JSON object from a file of the folder, or one UserError line."""
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except OSError as exc:
        raise UserError(f'cannot read {path}: {exc.strerror}') from None
    except ValueError as exc:
        raise UserError(f'{path} is not valid JSON ({exc}); re-save the model with save_pretrained') from None
    if not isinstance(data, dict):
        raise UserError(f'{path} is not a JSON object; re-save the model with save_pretrained')
    return data


def model_files(folder: str) -> Tuple[str, str, str]:
    """(UNet config, UNet weights, scheduler config) of a pipeline folder or a UNet folder."""
    if not os.path.isdir(folder):
        raise UserError(f'{folder!r} is not a folder; --network=diffusers:FOLDER takes a folder that '
                        f'save_pretrained wrote (a pipeline with unet/ and scheduler/, or a UNet folder)')
    unet_dir = os.path.join(folder, 'unet') if os.path.isdir(os.path.join(folder, 'unet')) else folder
    scheduler = os.path.join(folder, 'scheduler', 'scheduler_config.json')
    if not os.path.isfile(scheduler):
        scheduler = os.path.join(unet_dir, 'scheduler_config.json')
    files = (os.path.join(unet_dir, 'config.json'), os.path.join(unet_dir, WEIGHTS), scheduler)
    for path in files:
        if not os.path.isfile(path):
            hint = ' (only safetensors weights are read; re-save with safe_serialization=True)' \
                if path.endswith(WEIGHTS) else ''
            raise UserError(f'{folder}: {os.path.relpath(path, folder)} is missing{hint}')
    return files


def prediction_type(scheduler_config: Mapping[str, Any], where: str) -> str:
    """The config's prediction_type (diffusers' default 'epsilon'); one UserError line, naming `where`, unless it is
    one of PREDICTIONS."""
    prediction = scheduler_config.get('prediction_type', 'epsilon')
    if prediction not in PREDICTIONS:
        raise UserError(f'{where}: prediction_type {prediction!r} is not one of {", ".join(PREDICTIONS)}')
    return prediction


def noise_table(scheduler_config: Dict[str, Any], path: str) -> Tuple[torch.Tensor, str]:
    """alpha_bar[t] of the training schedule (diffusers' own table) and the prediction type."""
    from diffusers import DDPMScheduler   # pylint: disable=import-outside-toplevel
    prediction = prediction_type(scheduler_config, path)
    if str(scheduler_config.get('_class_name', '')).startswith('EDM'):
        raise UserError(f'{path}: {scheduler_config["_class_name"]} is for EDM-parameterised models; '
                        f'diffusers:FOLDER takes discrete-time VP (DDPM/DDIM) models')
    try:
        alphas_cumprod = DDPMScheduler.from_config(scheduler_config).alphas_cumprod.clone()
    except (NotImplementedError, ValueError, TypeError) as exc:
        raise UserError(f'{path}: cannot build its noise table ({exc})') from None
    if alphas_cumprod[-1] == 0:   # a zero-SNR table (rescale_betas_zero_snr): diffusers' own stand-in for 0
        alphas_cumprod[-1] = 2.0 ** -24
    return alphas_cumprod, prediction


def build_unet(config: Dict[str, Any], weights: str, path: str) -> torch.nn.Module:
    """The UNet2DModel of `config` with the safetensors `weights`, built on the meta device and checked before the
    tensors are read."""
    import diffusers   # pylint: disable=import-outside-toplevel
    from safetensors import SafetensorError, safe_open   # pylint: disable=import-outside-toplevel
    if config.get('_class_name') != 'UNet2DModel':
        raise UserError(f'{path}: a {config.get("_class_name")!r} is not supported; diffusers:FOLDER takes a '
                        f'UNet2DModel (class-conditional through num_class_embeds, or unconditional)')
    if config.get('class_embed_type') is not None:
        raise UserError(f'{path}: class_embed_type {config["class_embed_type"]!r} is not supported '
                        f'(class labels are taken through num_class_embeds)')
    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    try:
        with torch.device('meta'):
            unet = diffusers.UNet2DModel.from_config(config)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
        raise UserError(f'{path}: cannot build a UNet2DModel from it ({type(exc).__name__}: {exc})') from None
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)
    expected = {name: tuple(t.shape) for name, t in unet.state_dict().items()}
    try:
        with safe_open(weights, framework='pt') as f:
            found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
            if found != expected:
                raise UserError(f'{weights}: its tensors do not fit the UNet of config.json '
                                f'({_difference(expected, found)})')
            state = {name: f.get_tensor(name).float() for name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise UserError(f'{weights} is not a readable safetensors file ({exc})') from None
    unet.load_state_dict(state, assign=True)
    return unet


def _difference(expected: Dict[str, tuple], found: Dict[str, tuple]) -> str:
    """One phrase saying how the file's tensors differ from the network's."""
    missing, extra, reshaped = shape_mismatch(expected, found)
    if missing:
        return f'{len(missing)} missing, e.g. {missing[0]}'
    if extra:
        return f'{len(extra)} unexpected, e.g. {extra[0]}'
    name = reshaped[0]
    return f'{name} is {list(found[name])}, the config needs {list(expected[name])}'


def load_diffusers(folder: str) -> DiffusersDenoiser:
    """The diffusers model in `folder` as an EDM denoiser (eval mode, float32, CPU)."""
    config_path, weights, scheduler_path = model_files(folder)
    alphas_cumprod, prediction = noise_table(_read_json(scheduler_path), scheduler_path)
    unet = build_unet(_read_json(config_path), weights, config_path)
    if unet.config.out_channels not in (unet.config.in_channels, 2 * unet.config.in_channels):
        raise UserError(f'{config_path}: out_channels {unet.config.out_channels} is neither in_channels nor twice it')
    if not math.isfinite(float(alphas_cumprod.min())) or len(alphas_cumprod) < 2:
        raise UserError(f'{scheduler_path}: the noise table is empty or not finite')
    return DiffusersDenoiser(unet, alphas_cumprod, prediction).eval()
