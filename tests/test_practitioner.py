"""art.practitioner: the practitioner's table on the tiny diffusers UNet (rows, same latents, measured NFE, the
reference solve, the missing-folder line), run once at toy size and shared by the tests."""
import dataclasses

import numpy as np
import pytest
import torch

from art import practitioner
from art.diffusers_sched import build_scheduler, sample_with_scheduler
from art.networks import load_network_spec
from art.practitioner import (DEFAULT_ROWS, DiffusersOptions, check_options, default_scheduler, practitioner_table,
                              reference_solve, sample_cell, scheduler_config, scheduler_levels)
from art.metrics import rms_error
from art.schedules import Schedule, clock_from_grid, save_schedule
from dnnlib.util import UserError
from edm import fid, grids
from edm.rng import seed_latents
from tests.conftest import cli_error, save_tiny_diffusers, tiny_unet2d

STEPS = (2, 3)
CF_COST = {'evals': 46, 'forward_evals': 30, 'jvp_evals': 16, 'cpu_seconds': 0.5}


class _Projection(torch.nn.Module):
    """A fixed random projection of 8x8 pixels to 16 features, standing in for the LeNet (which takes 28x28)."""
    feature_dim = 16

    def __init__(self):
        super().__init__()
        self.weight = torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def forward(self, images, return_features=True):
        return images.to(torch.float64).flatten(1) @ self.weight / 255


@pytest.fixture(scope='module')
def setup(tiny_diffusers, tmp_path_factory):
    """The table at toy size: K = 2, 3; 3 latents for the rms, 4 images for the FID, batches of 2; a closed-form
    clock file (EDM's grid standing in), an art-rl file whose two lowest levels share a timestep of the table."""
    folder = tmp_path_factory.mktemp('practitioner')
    clock = grids.make_sigmas('edm', 4, sigma_max=80.0, sigma_min=0.02)
    save_schedule(Schedule('closed-form', clock, clock=clock_from_grid(clock),
                           provenance={'cost': CF_COST}), folder / 'cf.json')
    save_schedule(Schedule('art-rl', [80.0, 0.0105, 0.0101, 0.0]), folder / 'rl.json')
    detector = _Projection()
    images = torch.randint(0, 256, (64, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    fid.save_reference(str(folder / 'ref.npz'), *fid.images_stats(detector, [images]))
    opts = DiffusersOptions(network=tiny_diffusers, steps=STEPS, num=3, fid_num=4, batch=2, reference_steps=4,
                            reference_check=2, closed_form_file=str(folder / 'cf.json'),
                            art_rl_file=str(folder / 'rl.json'), gits_latents=2, gits_levels=5, direct_steps=(3,),
                            direct_latents=2, direct_iters=1)
    table = practitioner_table(opts, detector=detector, fid_ref=str(folder / 'ref.npz'), log=lambda line: None)
    return opts, table


def _cells(table):
    return {(cell['row'], cell['steps']): cell for cell in table['cells']}


def test_every_row_runs_with_finite_scores(setup):
    _, table = setup
    cells = _cells(table)
    defaults = [row.name for row in DEFAULT_ROWS]
    grids_ = [f'{s} + {m}' for s in ('Euler', 'DPM++(2M)') for m in ('closed-form', 'art-rl', 'gits', 'direct')]
    assert list(dict.fromkeys(cell['row'] for cell in table['cells'])) == defaults + grids_
    assert ('Euler + direct', 2) not in cells and ('Euler + direct', 3) in cells      # direct only at direct_steps
    assert 'round to the same one' in cells['DPM++(2M) + art-rl', 3]['skipped']      # integer timesteps collide
    for cell in table['cells']:
        if 'skipped' not in cell:
            assert np.isfinite(cell['rms']) and np.isfinite(cell['fid']) and cell['rms'] > 0
    assert cells['Euler + closed-form', 3]['cost'] == CF_COST
    assert cells['Euler', 2]['cost'] is None


def test_defaults_are_built_as_a_user_gets_them(setup, tiny_diffusers):
    from diffusers import DDPMPipeline, EulerDiscreteScheduler
    user = DDPMPipeline.from_pretrained(tiny_diffusers).scheduler.config
    config = scheduler_config(tiny_diffusers)
    assert dict(EulerDiscreteScheduler.from_config(config).config) == \
        dict(EulerDiscreteScheduler.from_config(user).config)
    cells = _cells(setup[1])
    # the saved DDPM config names 'leading' spacing: DDIM and Euler (with Karras sigmas too) start at t = T - T/K,
    # DPM-Solver's Karras sigmas at the table's top (diffusers 0.42.1)
    ddim = default_scheduler(DEFAULT_ROWS[0], config, 2)
    assert ddim.timesteps.tolist() == [500, 0]
    assert cells['DDIM', 2]['levels'][0] == pytest.approx(float(scheduler_levels(ddim)[0]))
    assert cells['DDIM', 2]['levels'][-1] == 0                                        # set_alpha_to_one: ends at x_0
    net = load_network_spec(f'diffusers:{tiny_diffusers}')
    assert cells['DDIM', 2]['levels'][0] < cells['DDIM', 3]['levels'][0] < net.sigma_max
    assert cells['Euler Karras', 3]['levels'][0] == cells['Euler', 3]['levels'][0] == \
        pytest.approx(cells['DDIM', 3]['levels'][0], rel=1e-6)
    assert cells['DPM++(2M) Karras', 3]['levels'][0] == pytest.approx(net.sigma_max, rel=1e-6)


def test_nfe_is_measured_and_equals_the_scheduler_calls(setup, tiny_diffusers):
    opts, table = setup
    config = scheduler_config(tiny_diffusers)
    for cell in table['cells']:
        if 'skipped' not in cell and cell['grid'] == 'diffusers':
            row = next(row for row in DEFAULT_ROWS if row.name == cell['row'])
            assert cell['nfe'] == len(default_scheduler(row, config, cell['steps']).timesteps) == cell['steps']
        elif 'skipped' not in cell:
            assert cell['nfe'] == cell['steps']
    net = load_network_spec(f'diffusers:{tiny_diffusers}')
    latents, labels, _ = seed_latents(net, range(3))
    grid = grids.make_sigmas('edm', 3, net=net)                                   # Heun: two calls a step, Euler last
    _, nfe = sample_cell(net.unet, lambda: build_scheduler('HeunDiscreteScheduler', config, grid), latents,
                         labels.argmax(dim=1), 2)
    assert nfe == 5


def test_every_row_samples_the_same_latents(setup, tiny_diffusers):
    opts, table = setup
    cells = _cells(table)
    net = load_network_spec(f'diffusers:{tiny_diffusers}')
    latents, labels, _ = seed_latents(net, range(opts.num))
    reference = reference_solve(net, latents, labels, opts.reference_steps)
    for name, steps in (('DDIM', 3), ('Euler + gits', 2)):                       # one pipeline loop, all latents
        row = next(r for r in practitioner.table_rows(['gits']) if r.name == name)
        sigmas = None if row.grid is None else cells[name, steps]['levels']
        scheduler = default_scheduler(row, scheduler_config(tiny_diffusers), steps) if sigmas is None else \
            build_scheduler(row.scheduler, scheduler_config(tiny_diffusers), sigmas)
        x = sample_with_scheduler(net.unet, scheduler, latents, labels.argmax(dim=1))
        assert rms_error(x, reference) == pytest.approx(cells[name, steps]['rms'], rel=1e-5)
    assert cells['DDIM', 2]['rms'] != cells['Euler', 2]['rms']


def test_the_reference_converges(tiny_diffusers, tmp_path):
    """RK4 on EDM's grid over the whole range: doubling the steps shrinks the change at least fourfold on a field
    that is smooth in sigma (the tiny UNet with its time embedding silenced; the random one is rough in t)."""
    unet = tiny_unet2d()
    unet.time_embedding.linear_2.weight.zero_()
    net = load_network_spec(f'diffusers:{save_tiny_diffusers(tmp_path / "smooth", unet=unet)}')
    latents, labels, _ = seed_latents(net, range(2))
    x4, x8, x16 = (reference_solve(net, latents, labels, steps) for steps in (4, 8, 16))
    assert rms_error(x8, x16) < rms_error(x4, x8) / 4


def test_the_reference_check_is_reported(setup):
    reference = setup[1]['reference']
    assert (reference['solver'], reference['steps'], reference['check_latents']) == ('rk4', 4, 2)
    assert 0 < reference['check_rms'] < float('inf')


def test_a_missing_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(practitioner, 'SHIPPED_MODEL', tmp_path / 'ddpm-fmnist28-cond')
    with pytest.raises(UserError, match='no such folder .the shipped model is made by scripts/train_ddpm_fmnist.py'):
        check_options(DiffusersOptions(network=str(tmp_path / 'ddpm-fmnist28-cond')))
    line = cli_error(['-m', 'art.report', f'--outdir={tmp_path / "r"}', '--settings=diffusers',
                      f'--diffusers-network={tmp_path / "none"}'])
    assert line.startswith('error: --diffusers-network=') and 'no such folder' in line
    assert not (tmp_path / 'r').exists()


def test_the_report_setting_writes_the_table(setup, monkeypatch, tmp_path):
    import art.settings
    opts, table = setup
    monkeypatch.setattr(art.settings, 'practitioner_table', lambda options: table if options is opts else None)
    text = art.settings.run_report(str(tmp_path / 'r'), ['diffusers'], art.settings.MixtureOptions(),
                                   art.settings.TrainedOptions(), opts)
    assert '## Your diffusers model: LeNet-FID and rms, diffusers schedulers' in text
    assert '| closed-form | 46 | 0.5 |' in text and '| Euler + gits | 2 |' in text
    assert 'Not run: DPM++(2M) + art-rl at K=3' in text
    assert (tmp_path / 'r' / 'diffusers-practitioner.png').is_file()


def test_sigma_max_sets_where_the_project_grids_start(tiny_diffusers, tmp_path):
    # --diffusers-sigma-max: the closed form (estimated over the range, not the cached default clock), gits and
    # direct all start there; ART-RL's file reads its clock's part below it.
    net = load_network_spec('diffusers:' + tiny_diffusers)
    clock = grids.make_sigmas('edm', 4, sigma_max=80.0, sigma_min=0.02)
    save_schedule(Schedule('art-rl', clock, clock=clock_from_grid(clock)), tmp_path / 'rl.json')
    opts = DiffusersOptions(network=tiny_diffusers, gits_latents=2, gits_levels=5, direct_steps=(2,),
                            direct_latents=2, direct_iters=1, reference_steps=4, sigma_max=5.0,
                            art_rl_file=str(tmp_path / 'rl.json'))
    check_options(opts)
    makers = practitioner.grid_makers(net, 'diffusers:' + tiny_diffusers, opts, log=lambda line: None)
    for method in ('closed-form', 'art-rl', 'gits', 'direct'):
        sigmas = makers[method](2).sigmas
        assert sigmas[0] == 5.0 and sigmas[-1] == 0.0, method
    save_schedule(Schedule('art-rl', clock), tmp_path / 'grid.json')          # no clock: cannot start lower
    with pytest.raises(UserError, match='grid.json: cannot resample to 4 steps: it has no clock to start at sigma 5'):
        check_options(dataclasses.replace(opts, art_rl_file=str(tmp_path / 'grid.json')))
