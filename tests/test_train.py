"""train_art.py / art.train: run directory, exact resume after kill -9, torchrun equivalence, pickles, bad input."""
import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from art.analytic import load_analytic
from art.networks import load_network_spec
from art.schedules import load_schedule
from art import train as art_train
from art.train import MAX_BATCH, MAX_CF_SAMPLES, MAX_ITERS, MAX_POOL, RunOptions, auto_preset, steps_name
from conftest import ROOT, cli_error, run_cli_in_process, tiny_edm_net, write_network_pkl
from dnnlib.util import UserError
from edm.denoiser import Denoiser
from edm.grids import MAX_STEPS
from edm.guidance import guided_spec
from tiny_edm2 import TOY, tiny_edm2_net, write_edm2_pkl

TORCHRUN = os.path.join(os.path.dirname(sys.executable), 'torchrun')
RL = ['--network=analytic:gauss1d', '--steps=5', '--lr=3e-4', '--gamma-lr=3e-4', '--device=cpu']
FLAT = dict(channel_mult=[1], attn_resolutions=[])   # tiny_edm_net with the fewest layers per forward-mode pass


def _train(args, torchrun=False, in_process=False, **kw):
    """Run train_art.py in a new process (two under torchrun), or in_process its click main (the same code without
    a torch import per run)."""
    if in_process:
        return subprocess.CompletedProcess(args, *run_cli_in_process(['train_art.py'] + args))
    cmd = [TORCHRUN, '--standalone', '--nproc_per_node=2'] if torchrun else [sys.executable]
    return subprocess.run(cmd + ['train_art.py'] + args, cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)


def _only_run_dir(outdir):
    (name,) = os.listdir(outdir)
    return os.path.join(outdir, name)


@pytest.mark.slow
def test_run_directory_and_schedule_file(tmp_path):
    out = _train(RL + [f'--outdir={tmp_path}', '--iters=30', '--batch=4', '--snap=10', '--desc=t'], in_process=True)
    assert out.returncode == 0, out.stderr
    run = _only_run_dir(tmp_path)
    assert os.path.basename(run) == '00000-t-k5'
    assert {'training_options.json', 'log.txt', 'stats.jsonl', 'snapshot-k5.pt', 'schedule-k5.json',
            'schedules.png'} <= set(os.listdir(run))
    rows = [json.loads(line) for line in open(os.path.join(run, 'stats.jsonl'))]
    assert [r['iteration'] for r in rows] == list(range(1, 31))
    assert {'gamma', 'psi_T_mean', 'td_error', 'reward', 'theta_mean', 'theta_std', 'sec_per_iter'} <= set(rows[0])
    schedule = load_schedule(os.path.join(run, 'schedule-k5.json'), num_steps=5)
    assert schedule.method == 'art-rl' and schedule.sigmas[0] == 3.0 and schedule.sigmas[-1] == 0.0
    prov = schedule.provenance
    assert prov['iterations'] == 30 and prov['config']['lam'] == 0.1 and prov['config']['batch'] == 4
    assert prov['seed'] == 0
    # --preset=auto (the default) chose the paper's learner for the 1-D model, and says so.
    assert prov['preset'] == 'paper' == json.load(open(os.path.join(run, 'training_options.json')))['preset']
    assert prov['cost']['forward_evals'] == 30 * 4 * 5 and 'w2_euler_exact' in schedule.metrics
    assert 'Run directory' in open(os.path.join(run, 'log.txt')).read()
    # A second run gets the next id.
    out = _train(['--network=analytic:gauss1d', '--steps=3', '--method=closed-form', '--cf-samples=8',
                  f'--outdir={tmp_path}', '--device=cpu'], in_process=True)
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(tmp_path))[1].startswith('00001-closed-form-gauss1d-k3')


def test_auto_preset_is_paper_only_for_one_dimensional_models():
    assert auto_preset(load_analytic('analytic:gauss1d')) == 'paper'
    assert auto_preset(load_analytic('analytic:gauss:std=1,shape=1x1x1')) == 'paper'
    assert auto_preset(load_analytic('analytic:gauss:std=1,shape=3x1x1')) == 'images'
    assert auto_preset(tiny_edm_net()) == 'images'


def test_auto_preset_of_an_image_shaped_model_is_images_and_recorded(tmp_path):
    out = _train(['--network=analytic:gauss:std=0.5,shape=1x2x2', '--steps=2', '--iters=1', '--batch=1',
                  f'--outdir={tmp_path}', '--device=cpu'], in_process=True)
    assert out.returncode == 0, out.stderr
    run = _only_run_dir(tmp_path)
    assert json.load(open(os.path.join(run, 'training_options.json')))['preset'] == 'images'
    prov = load_schedule(os.path.join(run, 'schedule-k2.json')).provenance
    assert prov['preset'] == 'images' and prov['num_steps_trained'] == 128 and 'progress' in prov['config']['form']
    assert 'snapshot-clock.pt' in os.listdir(run)
    # The replay pool: the closed form's adaptive estimate (2 trajectories doubled until the clock stops moving), all
    # the run's network evaluations.
    pool = prov['pool']
    assert pool['rule'] == 'adaptive' and pool['stop'] in ('converged', 'budget') and pool['settings']['budget'] == 1000
    assert pool['num_samples'] == pool['history'][-1]['num_samples'] >= 2
    assert prov['cost']['evals'] == prov['cost']['forward_evals'] == pool['evals'] <= 1000


def test_explicit_pool_fixes_the_replay_pool(tmp_path):
    out = _train(['--network=analytic:gauss:std=0.5,shape=1x2x2', '--steps=2', '--iters=2', '--batch=1', '--pool=2',
                  f'--outdir={tmp_path}', '--device=cpu'], in_process=True)
    assert out.returncode == 0, out.stderr
    prov = load_schedule(os.path.join(_only_run_dir(tmp_path), 'schedule-k2.json')).provenance
    assert prov['pool'] == dict(rule='fixed', num_samples=2, levels=128, q_mode='fd')
    assert prov['cost']['evals'] == 2 * (3 * 128 - 1)       # per level 2 forward passes (fd), Heun's corrector


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_schedule(tmp_path):
    args = RL + ['--iters=60', '--batch=4', '--snap=5', '--seed=7']
    ref = _train(args + [f'--outdir={tmp_path / "ref"}'], in_process=True)
    assert ref.returncode == 0, ref.stderr
    expected = load_schedule(os.path.join(_only_run_dir(tmp_path / 'ref'), 'schedule-k5.json')).sigmas

    outdir = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, 'train_art.py'] + args + [f'--outdir={outdir}'], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        runs = os.listdir(outdir) if outdir.exists() else []
        stats = outdir / runs[0] / 'stats.jsonl' if runs else None
        if stats and stats.exists() and sum(1 for _ in open(stats)) >= 22:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = _only_run_dir(outdir)
    assert not os.path.exists(os.path.join(run, 'schedule-k5.json')), 'the run finished before it was killed'
    snapshot = torch.load(os.path.join(run, 'snapshot-k5.pt'), weights_only=True)   # never half-written
    assert 20 <= snapshot['iteration'] < 60

    resumed = _train(['--resume', run, '--device=cpu'], in_process=True)
    assert resumed.returncode == 0, resumed.stderr
    assert 'Resuming k5 from iteration' in resumed.stdout
    got = load_schedule(os.path.join(run, 'schedule-k5.json')).sigmas
    np.testing.assert_array_equal(got, expected)
    rows = [json.loads(line) for line in open(os.path.join(run, 'stats.jsonl'))]
    assert [r['iteration'] for r in rows] == list(range(1, 61))
    assert not [name for name in os.listdir(run) if name.startswith('.')], 'temporary files left behind'


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_with_twice_the_batch(tmp_path):
    one = _train(RL + ['--iters=20', '--batch=4', f'--outdir={tmp_path / "one"}'], in_process=True)
    assert one.returncode == 0, one.stderr
    two = _train(RL + ['--iters=20', '--batch=2', f'--outdir={tmp_path / "two"}'], torchrun=True)
    assert two.returncode == 0, two.stderr
    a = load_schedule(os.path.join(_only_run_dir(tmp_path / 'one'), 'schedule-k5.json'))
    b = load_schedule(os.path.join(_only_run_dir(tmp_path / 'two'), 'schedule-k5.json'))
    # Same trajectories (seeded by global index), gradients averaged across ranks: equal up to summation order.
    np.testing.assert_allclose(a.sigmas, b.sigmas, rtol=1e-6, atol=1e-9)
    assert b.provenance['processes'] == 2 and b.provenance['trajectories_per_iteration'] == 4


@pytest.mark.slow
def test_pickle_end_to_end_then_generate(tmp_path):
    pkl = write_network_pkl(tmp_path / 'net.pkl', tiny_edm_net(label_dim=3, **FLAT))
    out = _train([f'--network={pkl}', '--steps=5,3', '--iters=1', '--batch=2', '--preset=images',
                  f'--outdir={tmp_path / "runs"}', '--device=cpu'], in_process=True)
    assert out.returncode == 0, out.stderr
    run = _only_run_dir(tmp_path / 'runs')
    # The images preset learns one clock (one learner, one snapshot) and reads every K's grid off it.
    assert 'snapshot-clock.pt' in os.listdir(run) and not [n for n in os.listdir(run) if n.startswith('snapshot-k')]
    assert [json.loads(line)['learner'] for line in open(os.path.join(run, 'stats.jsonl'))] == ['clock']
    path = os.path.join(run, 'schedule-k5.json')
    schedule = load_schedule(path, num_steps=5)
    assert schedule.sigmas[0] == 80.0 and np.all(np.diff(schedule.sigmas) < 0)
    k3 = load_schedule(os.path.join(run, 'schedule-k3.json'), num_steps=3)
    np.testing.assert_array_equal(k3.clock.u, schedule.clock.u)
    np.testing.assert_array_equal(k3.sigmas, schedule.clock.grid(3))
    code, _, err = run_cli_in_process(['generate_art.py', f'--network={pkl}', f'--schedule={path}', '--seeds=0-1',
                                       f'--outdir={tmp_path / "img"}', '--device=cpu'])
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / 'img')) == ['000000.png', '000001.png']


@pytest.mark.slow
def test_diffusers_folder_learns_a_schedule_in_a_run_named_after_it(tmp_path, tiny_diffusers):
    # One learner iteration on one replayed trajectory (~2 s: the UNet of diffusers costs ~6 ms a pass at any size).
    spec = f'diffusers:{tiny_diffusers}'
    out = _train([f'--network={spec}', '--steps=3', '--iters=1', '--batch=1', '--pool=1',
                  f'--outdir={tmp_path / "runs"}', '--device=cpu'], in_process=True)
    assert out.returncode == 0, out.stderr
    run = _only_run_dir(tmp_path / 'runs')
    assert os.path.basename(run) == '00000-art-rl-tiny-ddpm-k3'
    schedule = load_schedule(os.path.join(run, 'schedule-k3.json'), num_steps=3)
    assert schedule.provenance['network'] == spec
    assert schedule.sigmas[0] == 80.0 and np.all(np.diff(schedule.sigmas) < 0)


@pytest.mark.parametrize('args, pattern', [
    (['--network=analytic:bogus'], 'unknown analytic spec'),
    (['--network=diffusers:/no/such/folder'], 'is not a folder; --network=diffusers:FOLDER takes a folder'),
    (['--network=/no/such.pkl'], 'no such file'),
    (['--network=analytic:gauss1d', '--steps=0'], 'steps'),
    (['--network=analytic:gauss1d', '--method=magic'], 'method'),
    (['--resume=/no/such/run'], 'cannot read'),
    (['--network=analytic:gauss:std=0.5,shape=1x2x2', '--lambda=0.2'], '--lambda: not an option of the images'),
    (['--network=analytic:gauss1d', '--method=closed-form', '--solver=heun'], 'makes grids for --solver=euler'),
    (['--network=analytic:gauss1d', '--method=gits', '--solver=rk4'], 'makes grids for --solver=euler or heun'),
    (['--network=analytic:gauss1d', '--guidance=2'], '--guidance needs a guiding network: give --gnet'),
    (['--network=analytic:gauss1d', '--gnet=/no/g.pkl', '--guidance=2'], 'an analytic model takes no guiding network'),
    (['--resume=/no/such/run', '--gnet=/no/g.pkl', '--guidance=2'], 'give --network as well'),
    (['--network=analytic:gauss1d', '--steps=3,5,3'], '--steps gives K=3 more than once'),
    (['--network=analytic:gauss1d', f'--steps=1-{MAX_STEPS + 1}'], f'<= {MAX_STEPS:,}'),     # edm.cli's shared cap
    (['--network=analytic:gauss1d', '--method=closed-form', '--lr=0.1', '--batch=2'],
     '--lr, --batch: not options of --method=closed-form'),
    (['--network=analytic:gauss1d', '--method=gits', '--preset=paper'], '--preset: not an option of --method=gits'),
    (['--network=analytic:gauss1d', '--cf-samples=8'], '--cf-samples: not an option of --method=art-rl'),
    (['--network=analytic:gauss1d', '--method=closed-form', f'--cf-samples={10 ** 9}'], f'1<=x<={MAX_CF_SAMPLES}'),
    (['--network=analytic:gauss1d', f'--batch={10 ** 9}'], f'1<=x<={MAX_BATCH}'),
    (['--network=analytic:gauss1d', f'--iters={10 ** 9}'], f'1<=x<={MAX_ITERS}'),
    (['--network=analytic:gauss1d', f'--pool={10 ** 9}'], f'1<=x<={MAX_POOL}'),
    (['--network=analytic:gauss1d', '--desc=' + 'x' * 300], 'pass a shorter --desc'),
])
def test_bad_input(tmp_path, args, pattern):
    assert pattern in cli_error(['train_art.py'] + args + [f'--outdir={tmp_path / "runs"}', '--device=cpu'])
    assert not (tmp_path / 'runs').exists()


@pytest.mark.parametrize('args, words', [
    (['--outdir={file}/runs'], '{file} is a file, not a folder'),      # checked before loading or making a run dir
    (['--network=analytic:gmm:{trunc}'], 'truncated or corrupt'),
    (['--resume={listrun}'], 'does not hold the options of a train_art.py run'),   # training_options.json a list
])
def test_bad_paths_and_files_are_one_line_and_write_nothing(tmp_path, args, words):
    paths = dict(file=tmp_path / 'file', trunc=tmp_path / 'trunc.npz', listrun=tmp_path / 'listrun')
    paths['file'].write_text('x')
    np.savez(tmp_path / 'mix.npz', mu=np.zeros((2, 1, 4, 4)), std=np.ones(2), weight=np.ones(2))
    paths['trunc'].write_bytes((tmp_path / 'mix.npz').read_bytes()[:300])
    paths['listrun'].mkdir()
    (paths['listrun'] / 'training_options.json').write_text('[1, 2]')
    before = sorted(str(p) for p in tmp_path.rglob('*'))
    line = cli_error(['train_art.py', '--device=cpu', '--method=closed-form', '--network=analytic:gauss1d',
                      f'--outdir={tmp_path / "runs"}'] + [a.format(**paths) for a in args])   # the last value counts
    assert words.format(**paths) in line
    assert sorted(str(p) for p in tmp_path.rglob('*')) == before


@pytest.mark.slow
def test_nan_network_stops_with_one_line_and_no_schedule(tmp_path):
    net = tiny_edm_net(**FLAT)
    with torch.no_grad():
        net.model.map_layer0.weight.fill_(float('nan'))
    pkl = write_network_pkl(tmp_path / 'nan.pkl', net)
    out = _train([f'--network={pkl}', '--steps=3', '--iters=5', '--preset=images', f'--outdir={tmp_path / "runs"}',
                  '--device=cpu'])
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and lines[-1].startswith('error: ') and 'diverged' in lines[-1], out.stderr
    assert not any((tmp_path / 'runs').rglob('schedule-*.json'))


def test_peer_method_grid_is_made_for_the_given_solver(tmp_path):
    out = _train(['--network=analytic:gauss1d', '--method=gits', '--solver=heun', '--steps=3', f'--outdir={tmp_path}'],
                 in_process=True)
    assert out.returncode == 0, out.stderr
    schedule = load_schedule(os.path.join(_only_run_dir(tmp_path), 'schedule-k3.json'))
    assert schedule.method == 'gits' and schedule.solver == 'heun'
    assert schedule.provenance['run_options']['solver'] == 'heun'


# ----------------------------------------------------------------------------------------------------------------------
# EDM2 networks, with and without a guide: the schedule is learned on the field the sampler integrates.

def test_guided_spec_loads_as_one_guided_network(tmp_path):
    net = write_edm2_pkl(tmp_path / 'net.pkl', tiny_edm2_net(seed=1, **TOY))
    guide = write_edm2_pkl(tmp_path / 'guide.pkl', tiny_edm2_net(seed=2, **dict(TOY, model_channels=4)))
    guided = load_network_spec(guided_spec(net, guide, 2.5))
    assert isinstance(guided, Denoiser) and guided.guidance == 2.5 and guided.gnet is not None
    assert not guided.training and not any(p.requires_grad for p in guided.parameters())
    plain = load_network_spec(net)
    assert isinstance(plain, Denoiser) and plain.gnet is None               # EDM's interface for EDM2
    x, sigma, labels = torch.randn([2, 3, 4, 4]), torch.tensor(0.7), torch.eye(10)[[3, 4]]
    D, D_g = plain(x, sigma, labels), guided.gnet(x, sigma, labels)
    # float32 lerp against the formula: a few ulp of |D| ~ 1.
    torch.testing.assert_close(guided(x, sigma, labels), D_g + 2.5 * (D - D_g), rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="'/no/guide.pkl': no such file; the guiding network must be"):
        load_network_spec(guided_spec(net, '/no/guide.pkl', 2.0))
    with pytest.raises(UserError, match='an analytic model takes no guiding network'):
        load_network_spec(guided_spec('analytic:gauss1d', guide, 2.0))


@pytest.mark.parametrize('guided', [False, True])
@pytest.mark.slow
def test_edm2_closed_form_then_generate(tmp_path, guided):
    # The default closed form (the adaptive estimate: batched trajectories on 32 levels, Q by forward differences).
    net = write_edm2_pkl(tmp_path / 'net.pkl', tiny_edm2_net(seed=1, **TOY))
    guide = write_edm2_pkl(tmp_path / 'guide.pkl', tiny_edm2_net(seed=2, **dict(TOY, model_channels=4)),
                           encoder=False)
    guide_args = [f'--gnet={guide}', '--guidance=2'] if guided else []
    out = _train([f'--network={net}', '--method=closed-form', '--steps=4', f'--outdir={tmp_path / "runs"}',
                  '--device=cpu'] + guide_args, in_process=True)
    assert out.returncode == 0, out.stderr
    path = os.path.join(_only_run_dir(tmp_path / 'runs'), 'schedule-k4.json')
    schedule = load_schedule(path, num_steps=4)
    field = f'{net}?gnet={guide}&guidance=2.0' if guided else net
    assert schedule.provenance['network'] == field == schedule.provenance['run_options']['network']
    assert schedule.sigmas[0] == 80.0 and np.all(np.diff(schedule.sigmas) < 0)

    def generate(args, name):
        code, out, err = run_cli_in_process(['generate_art.py', f'--network={net}', f'--schedule={path}',
                                             '--seeds=0-1', f'--outdir={tmp_path / name}', '--device=cpu'] + args)
        assert code == 0, err
        assert sorted(os.listdir(tmp_path / name)) == ['000000.png', '000001.png']
        return out
    assert 'Note:' not in generate(guide_args, 'img')                          # the field it was learned on
    if guided:                                                                 # the unguided field is another one
        assert f'was made for {field}, not {net}' in generate([], 'unguided')


# ----------------------------------------------------------------------------------------------------------------------
# Run folders, resumed options, a full disk.

@pytest.mark.parametrize('steps, name', [
    ([10], 'k10'), ([5, 10, 18], 'k5_10_18'), ([2, 3, 5, 7, 10, 18], 'k2_3_5_7_10_18'),
    (list(range(1, 10_001)), 'k1-10000'), ([18, 1, 2, 3, 4], 'k18_1-4'),
    (list(range(2, 1000, 2)), 'k2-998_499values'),
])
def test_run_folder_name_stays_short(steps, name):
    assert steps_name(steps) == name and len(name) <= art_train.RUN_NAME_STEPS


def _resumable_run(tmp_path, **options):
    """A run folder whose training_options.json holds these options (nothing trained: the checks come first)."""
    run = tmp_path / '00000-run'
    run.mkdir(parents=True)
    opts = RunOptions(**dict(dict(network='analytic:gauss1d', steps=[3, 5], method='art-rl', preset='paper',
                                  rl=dict(seed=0, batch=2), snap=5, cf_samples=256, solver='euler', world_size=1),
                             **options))
    (run / 'training_options.json').write_text(json.dumps(dataclasses.asdict(opts)))
    return run


@pytest.mark.parametrize('args, words', [
    (['--steps=3'], '--steps=3 differs from the run being resumed (--steps=3,5); leave --steps out'),
    (['--steps=5,3'], '--steps=5,3 differs from the run being resumed (--steps=3,5)'),
    (['--method=closed-form', '--cf-samples=8'],
     '--method=closed-form differs from the run being resumed (--method=art-rl)'),
    (['--solver=heun'], '--solver=heun differs from the run being resumed (--solver=euler)'),
    (['--preset=images'], '--preset=images differs from the run being resumed (--preset=paper)'),
    (['--snap=7'], '--snap=7 differs from the run being resumed (--snap=5)'),
    (['--batch=3'], '--batch=3 differs from the run being resumed (--batch=2)'),
    (['--seed=1'], '--seed=1 differs from the run being resumed (--seed=0)'),
    (['--cf-samples=8'], '--cf-samples: not an option of --method=art-rl'),
    (['--pool=4'], '--pool: not an option of the paper preset of the run being resumed'),
    (['--desc=x'], '--desc: not an option of --resume'),
])
def test_resume_refuses_options_that_differ_from_the_run(tmp_path, args, words):
    run = _resumable_run(tmp_path)
    before = sorted(run.rglob('*'))
    assert words in cli_error(['train_art.py', f'--resume={run}', '--device=cpu'] + args)
    assert sorted(run.rglob('*')) == before


def test_resume_refuses_an_auto_preset_that_picks_another_learner(tmp_path):
    run = _resumable_run(tmp_path, preset='images')          # the 1-D model's auto preset is paper
    assert '--preset=auto picks paper for this network, but the run being resumed uses --preset=images' in cli_error(
        ['train_art.py', f'--resume={run}', '--device=cpu', '--preset=auto'])


def test_resume_takes_the_run_s_own_values_and_learner_options_only_for_art_rl(tmp_path):
    run = _resumable_run(tmp_path)
    opts = art_train.resume_options(str(run), dict(batch=2, seed=0), None,
                                    dict(steps=[3, 5], method='art-rl', preset='paper', snap=5, solver='euler'))
    assert opts.steps == [3, 5] and opts.rl == dict(seed=0, batch=2)
    cf_run = _resumable_run(tmp_path / 'cf', method='closed-form', rl=dict(seed=0))
    with pytest.raises(UserError, match='--lr: not an option of --method=closed-form'):
        art_train.resume_options(str(cf_run), dict(lr=0.1), None, {})


def _disk_full_at(monkeypatch, part):
    """Make atomic writes of files whose name contains `part` fail as on a full disk, after writing some bytes."""
    write = art_train.dnnlib.util.atomic_write

    def full(path, fn):
        if part not in os.path.basename(path):
            return write(path, fn)

        def partial(f):
            f.write(b'{"partial')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(path, partial)
    monkeypatch.setattr(art_train.dnnlib.util, 'atomic_write', full)


ONE_ITERATION = ['train_art.py', '--network=analytic:gauss1d', '--steps=2', '--iters=1', '--batch=1', '--device=cpu']


def test_disk_full_on_a_new_run_leaves_no_run_folder(tmp_path, monkeypatch):
    _disk_full_at(monkeypatch, 'training_options')
    line = cli_error(ONE_ITERATION + [f'--outdir={tmp_path / "runs"}'])
    assert 'no space left on device' in line and 'no run folder was made' in line
    assert os.listdir(tmp_path / 'runs') == []


def test_disk_full_mid_run_is_one_line_and_the_run_resumes(tmp_path, monkeypatch):
    _disk_full_at(monkeypatch, 'snapshot-k2')
    line = cli_error(ONE_ITERATION + [f'--outdir={tmp_path / "runs"}'])
    run = _only_run_dir(tmp_path / 'runs')
    assert 'snapshot-k2.pt: no space left on device' in line and f'--resume={run}' in line
    assert sorted(os.listdir(run)) == ['log.txt', 'stats.jsonl', 'training_options.json']   # no partial snapshot
    monkeypatch.undo()
    monkeypatch.setattr(art_train, 'plot_run', lambda *args: None)                  # not under test; 0.8 s
    code, _, err = run_cli_in_process(['train_art.py', f'--resume={run}', '--device=cpu'])
    assert code == 0, err
    assert load_schedule(os.path.join(run, 'schedule-k2.json'), num_steps=2).provenance['iterations'] == 1
    assert [json.loads(line)['iteration'] for line in open(os.path.join(run, 'stats.jsonl'))] == [1]


def test_stats_rows_torn_by_a_kill_or_a_full_disk_are_dropped_on_resume(tmp_path):
    rows = [dict(learner='k5', iteration=i) for i in (1, 2, 3)] + [dict(learner='k3', iteration=1)]
    (tmp_path / 'stats.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"learner": "k5", "it')
    art_train.StatsLog(str(tmp_path), enabled=True).truncate('k5', 2)
    kept = [json.loads(line) for line in (tmp_path / 'stats.jsonl').read_text().splitlines()]
    assert kept == rows[:2] + rows[3:]


def test_default_closed_form_and_direct_warm_start_reuse_the_cached_clock(tmp_path, monkeypatch):
    # The default closed form is the network's ART clock (art.auto_clock): made by the first run, read from the cache
    # by the next one and by direct's warm start, with no new estimate.
    monkeypatch.setenv('EDM_ART_CACHE', str(tmp_path / 'cache'))
    net = 'analytic:gauss:std=0.5,shape=1x2x2'
    first = _train([f'--network={net}', '--method=closed-form', '--steps=4', f'--outdir={tmp_path / "a"}',
                    '--device=cpu'], in_process=True)
    assert first.returncode == 0, first.stderr
    assert 'ART clock for' in first.stdout and 'made in' in first.stdout
    made = load_schedule(os.path.join(_only_run_dir(tmp_path / 'a'), 'schedule-k4.json'), num_steps=4)
    again = _train([f'--network={net}', '--method=direct', '--steps=4', f'--outdir={tmp_path / "b"}',
                    '--device=cpu'], in_process=True)
    assert again.returncode == 0, again.stderr
    assert 'from the cache' in again.stdout and 'made in' not in again.stdout
    assert made.provenance['cache_key']['seed'] == 0 and made.clock is not None
