"""edm/diffusers_net.py: a diffusers UNet2DModel trained as a discrete VP model, seen as EDM's D(x; sigma).

The conversion is checked against diffusers' own arithmetic (DDPMScheduler.add_noise and step's x0 estimate, the
same UNet), the timestep mapping against EulerDiscreteScheduler's log-sigma interpolation; the loader's layouts and
refusals go through art.networks.load_network_spec('diffusers:...'). Everything is offline: sockets are closed and
pickle loading is refused for the whole module.
"""

import json
import os
import shutil
import socket

import numpy as np
import pytest
import torch

from art.networks import load_network_spec, network_name
from conftest import save_tiny_diffusers, tiny_unet2d
from dnnlib.util import UserError
from edm.diffusers_net import load_diffusers
from edm.guidance import guided_spec

EPS32 = float(torch.finfo(torch.float32).eps)
PREDICTIONS = ('epsilon', 'sample', 'v_prediction')
BETA_SCHEDULES = ('linear', 'scaled_linear', 'squaredcos_cap_v2')
TIMESTEPS = (0, 1, 10, 250, 500, 900, 999)   # the table's ends, its steep start and its middle


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network and no pickle while a test runs: a download or torch.load attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError('network access or pickle loading attempted')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(torch, 'load', refuse)


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    """EDM's class labels (one-hot rows) of class indices, for the 3-class tiny UNet."""
    return torch.nn.functional.one_hot(labels, 3).float()


@pytest.mark.parametrize('beta_schedule', BETA_SCHEDULES)
@pytest.mark.parametrize('prediction_type', PREDICTIONS)
def test_denoiser_is_diffusers_x0_estimate(tmp_path, prediction_type, beta_schedule):
    from diffusers import DDPMScheduler
    net = load_diffusers(save_tiny_diffusers(tmp_path / 'm', prediction_type=prediction_type,
                                             beta_schedule=beta_schedule))
    scheduler = DDPMScheduler(prediction_type=prediction_type, beta_schedule=beta_schedule, clip_sample=False)
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, len(TIMESTEPS), 1, 8, 8, generator=generator)
    t = torch.tensor(TIMESTEPS)
    labels = torch.arange(len(TIMESTEPS)) % 3
    x_t = scheduler.add_noise(x0, noise, t)
    alpha_bar = scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    output = net.unet(x_t, t, class_labels=labels).sample
    expected = torch.cat([scheduler.step(output[i:i + 1], int(t[i]), x_t[i:i + 1]).pred_original_sample
                          for i in range(len(t))])
    x, sigma = x_t / alpha_bar.sqrt(), ((1 - alpha_bar) / alpha_bar).sqrt()
    denoised = net(x, sigma.flatten(), one_hot(labels))
    # Both sides compute x0 in float32 from the same UNet output with a few roundings each (scale, subtract, divide),
    # on terms as large as x = x_t / sqrt(alpha_bar) (~sigma for large sigma, where epsilon's x0 is a difference of
    # two such terms): allow 16 ulp of the largest term of each image. Measured: at most ~6 ulp; a wrong conversion,
    # timestep or input scale is off by orders of magnitude more.
    scale = torch.maximum(x.abs().amax(dim=(1, 2, 3)), expected.abs().amax(dim=(1, 2, 3))).clamp(min=1)
    error = (denoised - expected).abs().amax(dim=(1, 2, 3))
    assert (error <= 16 * EPS32 * scale).all(), (error / (EPS32 * scale)).tolist()


def test_sigma_to_t_interpolates_log_sigma_like_diffusers(tiny_diffusers):
    from diffusers import EulerDiscreteScheduler
    net = load_diffusers(tiny_diffusers)
    log_sigmas = net.log_sigmas.numpy()
    between = np.exp(log_sigmas[:-1] + np.random.default_rng(0).uniform(0, 1, len(log_sigmas) - 1)
                     * np.diff(log_sigmas))   # one sigma strictly inside each interval of the table
    sigma = np.concatenate([between, np.exp(log_sigmas[[0, 500, -1]])])
    expected = EulerDiscreteScheduler._sigma_to_t(None, sigma, log_sigmas)   # pylint: disable=protected-access
    t = net.sigma_to_t(torch.from_numpy(sigma)).double().numpy()
    np.testing.assert_allclose(t, expected, rtol=2 * EPS32, atol=1e-6)   # float32 timesteps up to 999
    assert (np.diff(t[:-3]) > 0).all() and not np.array_equal(t[:-3], np.round(t[:-3]))
    outside = net.sigma_to_t(torch.tensor([0.0, net.sigma_min / 2, net.sigma_max * 2, float('inf')]))
    assert outside.tolist() == [0, 0, len(log_sigmas) - 1, len(log_sigmas) - 1]


def test_sigma_range_is_the_table_ends(tiny_diffusers):
    from diffusers import DDPMScheduler
    net = load_diffusers(tiny_diffusers)
    alpha_bar = DDPMScheduler().alphas_cumprod.double()
    sigmas = ((1 - alpha_bar) / alpha_bar).sqrt()
    # diffusers' schedulers take sigma from the float32 table in float32 (EulerDiscreteScheduler): within an ulp or two
    assert net.sigma_min == pytest.approx(float(sigmas[0]), rel=2 * EPS32)
    assert net.sigma_max == pytest.approx(float(sigmas[-1]), rel=2 * EPS32)
    assert (net.img_resolution, net.img_channels, net.label_dim) == (8, 1, 3)


def test_one_hot_labels_select_the_class_embedding(tiny_diffusers):
    net = load_diffusers(tiny_diffusers)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2
    sigma = torch.full((3,), 1.5)
    labels = torch.tensor([0, 1, 2])
    denoised = net(x, sigma, one_hot(labels))
    output = net.unet(x / (1 + 1.5 ** 2) ** 0.5, net.sigma_to_t(sigma), class_labels=labels).sample
    torch.testing.assert_close(denoised, x - 1.5 * output, rtol=0, atol=8 * EPS32 * float(x.abs().max()))
    same_x = net(x[:1].expand(3, -1, -1, -1), sigma, one_hot(labels))
    assert (same_x[0] - same_x[1]).abs().max() > 1e-3 and (same_x[1] - same_x[2]).abs().max() > 1e-3


def test_forward_mode_derivative_matches_a_central_difference(tiny_diffusers):
    # The closed form's Q is a JVP through D; the tiny UNet's mid block has attention and GroupNorms, as real ones do.
    net = load_diffusers(tiny_diffusers)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sigma, labels = torch.tensor([0.7, 3.0], dtype=torch.float64), one_hot(torch.tensor([0, 2]))
    def denoise(x, sigma):
        return net(x, sigma, labels)
    jvp = torch.func.jvp(denoise, (x, sigma), (x, torch.ones_like(sigma)))[1]
    step = 3e-4
    central = (denoise(x + step * x, sigma + step) - denoise(x - step * x, sigma - step)) / (2 * step)
    # float32 D: round-off ~eps32 |D| / step ~ 1e-5 relative, truncation O(step^2): measured 5e-4 of max |JVP|
    assert (jvp - central).abs().max() <= 1e-2 * jvp.abs().max()


@pytest.mark.parametrize('layout', ['parts', 'flat'])
def test_folder_layouts_load_the_same_model(tmp_path, tiny_diffusers, layout):
    folder = save_tiny_diffusers(tmp_path / 'm', layout=layout)
    assert not os.path.exists(os.path.join(folder, 'model_index.json'))
    net, reference = load_network_spec(f'diffusers:{folder}'), load_network_spec(f'diffusers:{tiny_diffusers}')
    x, sigma, labels = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 20.0]), one_hot(torch.tensor([1, 2]))
    assert torch.equal(net(x, sigma, labels), reference(x, sigma, labels))
    assert network_name(f'diffusers:{folder}/') == 'm'


def test_weights_are_read_exactly(tiny_diffusers):
    net = load_network_spec(f'diffusers:{tiny_diffusers}')
    reference = tiny_unet2d().state_dict()
    state = net.unet.state_dict()
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training


def refusal(spec: str, match: str) -> str:
    """The one-line UserError of load_network_spec(spec), checked to contain `match`."""
    with pytest.raises(UserError, match=match) as info:
        load_network_spec(spec)
    assert '\n' not in str(info.value)
    return str(info.value)


def edit_json(path, **changes) -> None:
    """Set keys of a JSON config file."""
    with open(path, encoding='utf-8') as f:
        data = json.load(f)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(dict(data, **changes), f)


@pytest.fixture
def model(tmp_path, tiny_diffusers) -> str:
    """A copy of the tiny pipeline folder that a test may break."""
    return shutil.copytree(tiny_diffusers, tmp_path / 'model')


def test_refuses_what_is_not_a_folder(tmp_path, model):
    refusal(f'diffusers:{tmp_path / "missing"}', 'is not a folder; --network=diffusers:FOLDER takes a folder')
    refusal(f'diffusers:{model / "model_index.json"}', 'is not a folder')


@pytest.mark.parametrize('path, match', [('unet/config.json', 'unet/config.json is missing'),
                                         ('scheduler/scheduler_config.json', 'scheduler_config.json is missing')])
def test_refuses_a_missing_file(model, path, match):
    os.remove(model / path)
    refusal(f'diffusers:{model}', match)


def test_refuses_pickled_weights(tmp_path):
    from diffusers import DDPMScheduler
    tiny_unet2d().save_pretrained(tmp_path / 'm', safe_serialization=False)
    DDPMScheduler().save_pretrained(tmp_path / 'm')
    assert os.path.isfile(tmp_path / 'm' / 'diffusion_pytorch_model.bin')
    refusal(f'diffusers:{tmp_path / "m"}', r'safetensors is missing \(only safetensors weights are read')


@pytest.mark.parametrize('path', ['unet/config.json', 'scheduler/scheduler_config.json'])
@pytest.mark.parametrize('text, match', [('{"_class_name": ', 'is not valid JSON'), ('[1, 2]', 'is not a JSON object')])
def test_refuses_bad_json(model, path, text, match):
    (model / path).write_text(text)
    refusal(f'diffusers:{model}', match)


def test_refuses_another_model_class(model):
    edit_json(model / 'unet' / 'config.json', _class_name='UNet2DConditionModel', cross_attention_dim=8)
    refusal(f'diffusers:{model}', "'UNet2DConditionModel' is not supported; diffusers:FOLDER takes a UNet2DModel")


def test_refuses_weights_that_do_not_fit_the_config(model):
    edit_json(model / 'unet' / 'config.json', block_out_channels=[8, 24])
    refusal(f'diffusers:{model}', r'its tensors do not fit the UNet of config.json \(.* is \[16, .*the config needs')
    edit_json(model / 'unet' / 'config.json', block_out_channels=[8, 16], num_class_embeds=None)
    refusal(f'diffusers:{model}', r'do not fit .*\(1 unexpected, e\.g\. class_embedding\.weight\)')


def test_refuses_unreadable_weights(model):
    (model / 'unet' / 'diffusion_pytorch_model.safetensors').write_bytes(b'\x00' * 64)
    refusal(f'diffusers:{model}', 'is not a readable safetensors file')


def test_refuses_an_edm_scheduler(model):
    from diffusers import EDMEulerScheduler
    EDMEulerScheduler().save_pretrained(model / 'scheduler')
    refusal(f'diffusers:{model}', 'EDMEulerScheduler is for EDM-parameterised models')


def test_refuses_an_unknown_prediction_type(model):
    edit_json(model / 'scheduler' / 'scheduler_config.json', prediction_type='flow')
    refusal(f'diffusers:{model}', "prediction_type 'flow' is not one of epsilon, sample, v_prediction")


def test_refuses_a_guided_diffusers_spec(tiny_diffusers, tiny_pkl):
    refusal(guided_spec(f'diffusers:{tiny_diffusers}', tiny_pkl, 2.0), 'a diffusers model takes no guiding network')
