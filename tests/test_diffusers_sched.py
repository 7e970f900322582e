"""art/diffusers_sched.py: an ART grid run through diffusers' real schedulers equals our sampler on the same latents.

Each supported scheduler is built from the tiny model's scheduler config for a grid inside its range, run by the
pipeline loop (sample_with_scheduler), and compared with edm.sampler.sample on the levels the scheduler steps through,
from the same start. The exported snippet is executed against a stand-in `pipe` and must set up the same scheduler.
"""

import json
import os
import types

import numpy as np
import pytest
import torch

from art import diffusers_sched as ds
from conftest import tiny_unet2d
from dnnlib.util import UserError
from edm.diffusers_net import DiffusersDenoiser, load_diffusers
from edm.sampler import sample

# Both sides run the same float32 UNet on inputs equal to a few ulp; the step arithmetic differs in order (diffusers
# in float32 on its float32 levels, ours in float32 from the same levels), so results agree to a few float32 ulp of
# the samples' size per step: 16 ulp of max |x| over K <= 5 steps (measured: 0-3).
TOL = 16 * float(torch.finfo(torch.float32).eps)
VP_SCHEDULERS = ('EulerDiscreteScheduler', 'HeunDiscreteScheduler', 'DPMSolverMultistepScheduler')
LABELS = torch.tensor([0, 1, 2])


@pytest.fixture(scope='module')
def model(tiny_diffusers):
    """(our denoiser of the tiny DDPM pipeline, its scheduler config)."""
    with open(os.path.join(tiny_diffusers, 'scheduler', 'scheduler_config.json'), encoding='utf-8') as f:
        return load_diffusers(tiny_diffusers), json.load(f)


def art_grid(net) -> list:
    """An ART-like K = 5 grid: from the table's top (its float64 value) down to 0.05, then 0."""
    return [net.sigma_max, 20.0, 3.0, 0.5, 0.05, 0.0]


def latents() -> torch.Tensor:
    return torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def assert_same_run(unet, net, scheduler, class_labels=LABELS):
    """The pipeline loop with `scheduler` and our sampler with its solver on its levels, from the same start."""
    noise = latents()
    theirs = ds.sample_with_scheduler(unet, scheduler, noise, class_labels)
    sigmas = ds.scheduler_sigmas(scheduler)
    start = noise * (ds.start_scale(scheduler) / sigmas[0])
    with torch.no_grad():
        ours = sample(net, start, sigmas, torch.nn.functional.one_hot(class_labels, 3).float(),
                      solver=ds.SCHEDULERS[type(scheduler).__name__], dtype=torch.float32)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=TOL * float(ours.abs().max()))


@pytest.mark.parametrize('name', ['EulerDiscreteScheduler', 'DPMSolverMultistepScheduler'])
def test_scheduler_equals_our_solver(model, name):
    net, config = model
    assert_same_run(net.unet, net, ds.build_scheduler(name, config, art_grid(net)))


def test_euler_and_heun_step_through_the_grid_itself_from_latents_times_sigma_0(model):
    net, config = model
    grid = np.array(art_grid(net), dtype=np.float32).astype(np.float64)
    for name in ('EulerDiscreteScheduler', 'HeunDiscreteScheduler'):
        scheduler = ds.build_scheduler(name, config, grid)
        np.testing.assert_allclose(ds.scheduler_sigmas(scheduler), grid, rtol=4e-7)   # Heun: t in float32
        assert ds.start_scale(scheduler) == pytest.approx(grid[0], rel=1e-7)


def test_dpm_solver_rounds_to_the_nearest_table_entries(model):
    net, config = model
    scheduler = ds.build_scheduler('DPMSolverMultistepScheduler', config, art_grid(net))
    table = torch.exp(net.log_sigmas)
    nearest = [int(torch.argmin((table.log() - np.log(s)).abs())) for s in art_grid(net)[:-1]]
    assert scheduler.timesteps.tolist() == nearest


def test_heun_equals_ours_on_table_levels(model):
    net, config = model
    grid = torch.exp(net.log_sigmas)[[999, 700, 150, 30, 3]].tolist() + [0.0]
    assert_same_run(net.unet, net, ds.build_scheduler('HeunDiscreteScheduler', config, grid))


class LinearTimestepDenoiser(DiffusersDenoiser):
    """Our denoiser with the UNet's timestep interpolated linearly in sigma, as HeunDiscreteScheduler reads it."""

    def sigma_to_t(self, sigma):
        table = torch.exp(self.log_sigmas).numpy()
        return torch.as_tensor(np.interp(sigma.double().numpy(), table, np.arange(len(table))), dtype=torch.float32)


def test_heun_between_table_levels_differs_only_by_the_timestep_interpolation(model):
    net, config = model
    linear = LinearTimestepDenoiser(net.unet, torch.ones(2), net.prediction_type)
    linear.log_sigmas, linear.sigma_min, linear.sigma_max = net.log_sigmas, net.sigma_min, net.sigma_max
    assert_same_run(net.unet, linear, ds.build_scheduler('HeunDiscreteScheduler', config, art_grid(net)))


class EDMParameterised(torch.nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) of a UNet F, EDM's preconditioning as EDMEulerScheduler
    applies it (sigma_data 0.5, c_noise = log(sigma) / 4)."""

    def __init__(self, unet, sigma_min=0.002, sigma_max=80.0, sigma_data=0.5):
        super().__init__()
        self.unet, self.sigma_min, self.sigma_max, self.sigma_data = unet, sigma_min, sigma_max, sigma_data

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None, **_unused):
        x = x.float()
        sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
        c_in = 1 / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        labels = class_labels.argmax(dim=1)
        return c_skip * x + c_out * self.unet(c_in * x, sigma.log() / 4, class_labels=labels).sample


def test_edm_euler_reads_the_ramp_and_equals_ours():
    from diffusers import EDMEulerScheduler
    unet = tiny_unet2d()
    config = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0).config
    grid = [80.0, 12.0, 1.5, 0.2, 0.002, 0.0]
    scheduler = ds.build_scheduler('EDMEulerScheduler', config, grid)
    np.testing.assert_allclose(ds.scheduler_sigmas(scheduler), grid, rtol=1e-7)
    assert_same_run(unet, EDMParameterised(unet), scheduler)


@pytest.mark.parametrize('name', ds.SCHEDULERS)
def test_export_snippet_sets_up_the_same_scheduler(model, name):
    net, config = model
    if name == 'EDMEulerScheduler':
        from diffusers import EDMEulerScheduler
        config = EDMEulerScheduler().config
    grid = art_grid(net) if name != 'EDMEulerScheduler' else [80.0, 12.0, 0.2, 0.0]
    pipe = types.SimpleNamespace(scheduler=types.SimpleNamespace(config=config))
    namespace = {'pipe': pipe}
    exec(ds.export_snippet(name, grid, comment='a comment'), namespace)  # pylint: disable=exec-used
    built = ds.build_scheduler(name, config, grid)
    assert type(namespace['scheduler']) is type(built)
    torch.testing.assert_close(namespace['scheduler'].sigmas, built.sigmas, rtol=0, atol=0)
    torch.testing.assert_close(namespace['scheduler'].timesteps, built.timesteps, rtol=0, atol=0)


@pytest.mark.parametrize('name, message', [
    ('EDMDPMSolverMultistepScheduler', 'takes a step count only'),
    ('UniPCMultistepScheduler', 'use_flow_sigmas'),
    ('LMSDiscreteScheduler', 'unknown scheduler'),
])
def test_unsupported_schedulers_are_refused(model, name, message):
    net, config = model
    with pytest.raises(UserError, match=message):
        ds.build_scheduler(name, config, art_grid(net))
    with pytest.raises(UserError, match=message):
        ds.export_snippet(name, art_grid(net))


def test_a_config_of_another_prediction_type_is_refused(model):
    net, config = model
    with pytest.raises(UserError, match="scheduler config: prediction_type 'flow' is not one of epsilon"):
        ds.build_scheduler('EulerDiscreteScheduler', dict(config, prediction_type='flow'), art_grid(net))


@pytest.mark.parametrize('name, grid, message', [
    ('HeunDiscreteScheduler', [500.0, 1.0, 0.0], "outside the model's noise table"),
    ('DPMSolverMultistepScheduler', [1.0, 0.5, 0.001, 0.0], "outside the model's noise table"),
    ('DPMSolverMultistepScheduler', [1.0, 0.999, 0.0], 'round to the same'),
    ('EulerDiscreteScheduler', [1.0, 2.0, 0.0], 'strictly descending'),
])
def test_grids_a_scheduler_cannot_take_are_refused(model, name, grid, message):
    with pytest.raises(UserError, match=message):
        ds.build_scheduler(name, model[1], grid)


@pytest.mark.parametrize('name', ['HeunDiscreteScheduler', 'DPMSolverMultistepScheduler'])
def test_export_snippet_stops_on_a_grid_outside_the_table(model, name):
    pipe = types.SimpleNamespace(scheduler=types.SimpleNamespace(config=model[1]))
    with pytest.raises(AssertionError, match='outside the noise table'):
        exec(ds.export_snippet(name, [500.0, 1.0, 0.0]), {'pipe': pipe})  # pylint: disable=exec-used
