"""Training loop and train CLI (docs/edm-compat.md §7.1, §7.5): EMA/lr, learning, snapshots, resume, dry run."""
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from conftest import cli_error
from edm.loading import load_network_pkl
from training.training_loop import (construct_network, ema_beta, learning_rate, load_training_state, network_interface,
                                    network_mismatch, resolution_multiple, training_loop)

ROOT = Path(__file__).resolve().parents[1]
STAT_NAMES = {'Loss/loss', 'Progress/tick', 'Progress/kimg', 'Timing/total_sec', 'Timing/sec_per_tick',
              'Timing/sec_per_kimg', 'Timing/maintenance_sec', 'Resources/cpu_mem_gb'}


def test_ema_beta_formula():
    # beta = 0.5 ** (batch / max(halflife, 1e-8)), halflife = min(kimg*1000, cur_nimg*ratio).
    assert ema_beta(512, 0, 500, 0.05) == 0.0
    assert ema_beta(512, 10 ** 6, 500, 0.05) == pytest.approx(0.5 ** (512 / 50000))
    assert ema_beta(512, 10 ** 8, 500, 0.05) == pytest.approx(0.5 ** (512 / 500000))
    assert ema_beta(512, 0, 500, None) == pytest.approx(0.5 ** (512 / 500000))
    assert ema_beta(100, 0, 0, None) == 0.0


def test_learning_rate_rampup():
    assert learning_rate(1e-3, 0, 10000) == 0
    assert learning_rate(1e-3, 5_000_000, 10000) == pytest.approx(5e-4)
    assert learning_rate(1e-3, 20_000_000, 10000) == pytest.approx(1e-3)


def _write_dataset(root: Path, n: int = 32, size: int = 4) -> str:
    """Tiny size x size (4x4) RGB dataset of 3 coloured classes with dataset.json labels."""
    (root / '00000').mkdir(parents=True)
    colours = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230]], np.uint8)
    rng = np.random.RandomState(0)
    labels = []
    for k in range(n):
        img = np.clip(colours[k % 3][None, None] + rng.randint(-10, 10, (size, size, 3)), 0, 255).astype(np.uint8)
        name = f'00000/img{k:08d}.png'
        PIL.Image.fromarray(img).save(root / name)
        labels.append([name, k % 3])
    (root / 'dataset.json').write_text(json.dumps({'labels': labels}))
    return str(root)


def _kwargs(data: str, run_dir: str, **overrides) -> dict:
    kw = dict(
        run_dir=run_dir,
        dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=data, use_labels=True,
                            xflip=False, cache=True, resolution=4, max_size=32),
        data_loader_kwargs=dict(pin_memory=True, num_workers=0, prefetch_factor=2),
        network_kwargs=dict(class_name='training.networks.EDMPrecond', model_type='SongUNet', model_channels=8,
                            channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0, augment_dim=9),
        loss_kwargs=dict(class_name='training.loss.EDMLoss'),
        optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-2, betas=[0.9, 0.999], eps=1e-8),
        augment_kwargs=dict(class_name='training.augment.AugmentPipe', p=0.1, xflip=1e8, yflip=1, scale=1,
                            rotate_frac=1, aniso=1, translate_frac=1),
        seed=0, batch_size=1000, batch_gpu=500, total_kimg=6, ema_halflife_kimg=1e-9, lr_rampup_kimg=0,
        kimg_per_tick=1, snapshot_ticks=1, state_dump_ticks=3, device='cpu')
    kw.update(overrides)
    return kw


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """One 6-step run (batch 1000 = 1 kimg per step, 2 accumulation rounds); returns (data, run_dir)."""
    root = tmp_path_factory.mktemp('train')
    data = _write_dataset(root / 'data')
    run_dir = root / 'run'
    run_dir.mkdir()
    training_loop(**_kwargs(data, str(run_dir)))
    return data, run_dir


def _fixed_loss(net, data: str) -> float:
    from training.dataset import ImageFolderDataset
    from training.loss import EDMLoss
    ds = ImageFolderDataset(data, use_labels=True)
    images = torch.tensor(np.stack([ds[i][0] for i in range(len(ds))])).float() / 127.5 - 1
    labels = torch.tensor(np.stack([ds[i][1] for i in range(len(ds))]))
    torch.manual_seed(123)
    with torch.no_grad():
        return float(torch.stack([EDMLoss()(net, images, labels).mean() for _ in range(8)]).mean())


def test_files_and_learning(run):
    data, run_dir = run
    names = sorted(os.listdir(run_dir))
    assert [n for n in names if n.startswith('network-snapshot')] == \
        [f'network-snapshot-{k:06d}.pkl' for k in range(1, 7)]  # tick 0 (after step 1) ... end
    assert [n for n in names if n.startswith('training-state')] == ['training-state-000004.pt',
                                                                     'training-state-000006.pt']
    assert not [n for n in names if '.tmp' in n]  # atomic writes leave no temporaries
    first = load_network_pkl(str(run_dir / 'network-snapshot-000001.pkl'))['ema']
    last = load_network_pkl(str(run_dir / 'network-snapshot-000006.pkl'))['ema']
    assert _fixed_loss(last, data) < 0.9 * _fixed_loss(first, data)


def test_stats_jsonl(run):
    _, run_dir = run
    lines = [json.loads(line) for line in (run_dir / 'stats.jsonl').read_text().splitlines()]
    assert len(lines) == 6
    for tick, entry in enumerate(lines):
        assert STAT_NAMES <= set(entry) and 'timestamp' in entry
        assert set(entry['Loss/loss']) == {'num', 'mean', 'std'}
        assert entry['Progress/tick']['mean'] == tick
        assert entry['Progress/kimg']['mean'] == pytest.approx(tick + 1)
        assert entry['Loss/loss']['num'] == 1000 * 3 * 16  # per-element losses of one step


def test_snapshot_layout_and_safe_load(run):
    data, run_dir = run
    path = run_dir / 'network-snapshot-000006.pkl'
    with open(path, 'rb') as f:
        raw = pickle.load(f)  # trusted load of our own file: the upstream layout
    assert list(raw) == ['ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs']
    assert type(raw['dataset_kwargs']) is dict and raw['dataset_kwargs']['path'] == data
    ema = raw['ema']
    assert not ema.training and all(not p.requires_grad for p in ema.parameters())
    assert all(t.device.type == 'cpu' for t in list(ema.parameters()) + list(ema.buffers()))
    assert type(raw['loss_fn']).__name__ == 'EDMLoss' and type(raw['augment_pipe']).__name__ == 'AugmentPipe'

    safe = load_network_pkl(str(path))  # safe mode: no embedded code runs
    assert set(safe) == {'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs'}
    assert type(safe['ema']).__name__ == 'EDMPrecond' and safe['ema'].label_dim == 3
    for (name, a), (_, b) in zip(safe['ema'].named_parameters(), ema.named_parameters()):
        assert torch.equal(a, b), name
    # loss_fn / augment_pipe come back as placeholders until training.loss / training.augment are registered.
    assert type(safe['loss_fn']).__name__ in ('EDMLoss', 'PersistentPlaceholder')


def test_resume_continues_weights_and_kimg(run, tmp_path):
    data, run_dir = run
    state = load_training_state(str(run_dir / 'training-state-000006.pt'))
    steps = {int(s['step']) for s in state['optimizer_state']['state'].values()}
    assert steps == {6}
    w6 = {k: v.detach().clone() for k, v in state['net'].named_parameters()}

    out = tmp_path / 'resumed'
    out.mkdir()
    # Tiny lr: the resumed weights must equal the dump; the optimizer state must continue (step 6 -> 8).
    training_loop(**_kwargs(data, str(out), total_kimg=8, resume_kimg=6,
                            resume_pkl=str(run_dir / 'network-snapshot-000006.pkl'),
                            resume_state_dump=str(run_dir / 'training-state-000006.pt'),
                            load_pkl=load_network_pkl,
                            optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-9, betas=[0.9, 0.999],
                                                  eps=1e-8)))
    assert sorted(n for n in os.listdir(out) if n.endswith('.pkl')) == ['network-snapshot-000007.pkl',
                                                                        'network-snapshot-000008.pkl']
    stats = [json.loads(line) for line in (out / 'stats.jsonl').read_text().splitlines()]
    # kimg goes through training_stats' float64 moment sums (sum / count), which may round the last bit
    assert [s['Progress/kimg']['mean'] for s in stats] == pytest.approx([7.0, 8.0], rel=1e-12)
    state8 = load_training_state(str(out / 'training-state-000008.pt'))
    assert {int(s['step']) for s in state8['optimizer_state']['state'].values()} == {8}
    w1 = dict(load_network_pkl(str(run_dir / 'network-snapshot-000001.pkl'))['ema'].named_parameters())
    moved = max(float((w6[k] - w1[k]).abs().max()) for k in w6)
    assert moved > 1e-3  # training moved the weights ...
    for k, v in state8['net'].named_parameters():
        assert torch.allclose(v.detach(), w6[k], atol=1e-6), k  # ... and the resumed run started from them


# ----------------------------------------------------------------------------------------------------------------------
# CLI (subprocesses, so that process groups and start methods stay out of the test process).


def _cli(*args, cwd=ROOT):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, '-m', 'edm.train', *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def _parse(*args):
    """Parse train.py options in-process (no process group is created)."""
    from edm.train import main
    import dnnlib
    return dnnlib.EasyDict(main.make_context('train', list(args)).params)


def test_cli_dry_run_writes_nothing_and_transfer_disables_rampup(run, tmp_path, capsys):
    from edm.train import run as train_run
    data, run_dir = run
    outdir = tmp_path / 'out'
    train_run(_parse(f'--outdir={outdir}', f'--data={data}', '--cond=1', '--dry-run', '--device=cpu', '--seed=5',
                     f'--transfer={run_dir / "network-snapshot-000006.pkl"}', '--duration=0.0001', '--cbase=8',
                     '--cres=1'))
    out = capsys.readouterr().out
    assert not outdir.exists()
    assert '"ema_rampup_ratio": null' in out and '"total_kimg": 1' in out
    assert '00000-data-cond-ddpmpp-edm-gpus1-batch512-fp32' in out
    assert '"augment_dim": 9' in out and '"seed": 5' in out and '"ema_halflife_kimg": 500' in out


def test_cli_option_errors(run, tmp_path):
    from dnnlib.util import UserError
    from edm.train import build_config
    data, run_dir = run
    snap = run_dir / 'network-snapshot-000006.pkl'
    with pytest.raises(UserError, match='--transfer and --resume'):
        build_config(_parse(f'--outdir={tmp_path}', f'--data={data}', '--device=cpu', f'--transfer={snap}',
                            f'--resume={run_dir / "training-state-000006.pt"}'))
    with pytest.raises(UserError, match='training-state'):
        build_config(_parse(f'--outdir={tmp_path}', f'--data={data}', '--device=cpu', f'--resume={snap}'))
    with pytest.raises(UserError, match='not found'):
        build_config(_parse(f'--outdir={tmp_path}', f'--data={tmp_path / "nothing"}', '--device=cpu'))
    (tmp_path / 'nolabels').mkdir()
    PIL.Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'nolabels' / 'a.png')
    with pytest.raises(UserError, match='labels'):
        build_config(_parse(f'--outdir={tmp_path}', f'--data={tmp_path / "nolabels"}', '--cond=1', '--device=cpu'))
    assert list(tmp_path.glob('0*')) == []


@pytest.mark.parametrize('seed', ['-1', str(2 ** 32)])
def test_cli_seed_out_of_range_is_one_line(tmp_path, seed):
    # The data sampler's RandomState takes seeds in [0, 2^32): others are refused before anything is made.
    line = cli_error(['-m', 'edm.train', f'--outdir={tmp_path}', f'--data={tmp_path / "none"}', f'--seed={seed}',
                      '--device=cpu'])
    assert '--seed' in line and '0<=x<=4294967295' in line
    assert list(tmp_path.iterdir()) == []


def test_cli_outdir_under_a_file_is_one_line_before_reading_data(tmp_path):
    (tmp_path / 'file').write_text('x')
    line = cli_error(['-m', 'edm.train', f'--outdir={tmp_path / "file" / "runs"}', f'--data={tmp_path / "none"}',
                      '--device=cpu'], in_process=False)   # the real entry point
    assert f'{tmp_path / "file"} is a file, not a folder' in line     # not the missing dataset: checked first
    assert sorted(tmp_path.iterdir()) == [tmp_path / 'file']


@pytest.mark.parametrize('model_type, channel_mult, resolution', [
    ('SongUNet', [1, 1, 1], 2), ('SongUNet', [1, 1, 1], 4), ('SongUNet', [1, 1, 1], 6), ('SongUNet', [1, 1], 6),
    ('DhariwalUNet', [1, 1, 1], 6), ('DhariwalUNet', [1, 1], 6),
])
def test_resolution_multiple_is_what_the_networks_take(model_type, channel_mult, resolution):
    from training.networks import EDMPrecond
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=resolution, img_channels=1, model_type=model_type, model_channels=4,
                     channel_mult=channel_mult, num_blocks=1, attn_resolutions=[])
    try:
        net(torch.zeros([1, 1, resolution, resolution]), torch.ones([1]))
        runs = True
    except RuntimeError:
        runs = False
    assert runs == (resolution % resolution_multiple(channel_mult) == 0)


def _tiny_kwargs(**overrides) -> dict:
    kwargs = dict(class_name='training.networks.EDMPrecond', model_type='SongUNet', model_channels=8,
                  channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0)
    return dict(kwargs, **overrides)


def test_network_mismatch_says_what_differs():
    interface = dict(img_resolution=4, img_channels=3, label_dim=3)
    torch.manual_seed(0)
    src = construct_network(_tiny_kwargs(), interface)
    for exact in (True, False):
        assert network_mismatch(src, _tiny_kwargs(), interface, exact) is None                  # the same call
        assert network_mismatch(src, _tiny_kwargs(dropout=0.2), interface, exact) is None       # the same tensors
    # Unconditional: the label layer is only in the snapshot, which a resume refuses and a transfer leaves out.
    uncond = dict(interface, label_dim=0)
    assert 'label_dim=3 there, 0 here' in network_mismatch(src, _tiny_kwargs(), uncond, exact=True)
    assert '2 (model.map_label.weight, model.map_label.bias) only there' in \
        network_mismatch(src, _tiny_kwargs(), uncond, exact=True)
    assert network_mismatch(src, _tiny_kwargs(), uncond, exact=False) is None
    # Other channels: shapes that cannot be copied. Building the network to compare with draws no random numbers.
    rng_state = torch.random.get_rng_state()
    problem = network_mismatch(src, _tiny_kwargs(model_channels=16), interface, exact=False)
    assert torch.equal(rng_state, torch.random.get_rng_state())
    assert 'model_channels=8 there, 16 here' in problem and 'model.map_label.weight [8, 3] there, [16, 3] here' in \
        problem and 'of other shapes' in problem
    # Another preconditioning: the same tensors, but not the same network to resume.
    vp = _tiny_kwargs(class_name='training.networks.VPPrecond')
    assert network_mismatch(src, vp, interface, exact=True).startswith(
        'training.networks.EDMPrecond there, training.networks.VPPrecond here')
    assert network_mismatch(src, vp, interface, exact=False) is None


def test_network_mismatch_of_a_large_network_builds_vp_on_the_cpu(monkeypatch):
    # Large networks are compared on the meta device; VPPrecond's constructor reads a tensor value, which meta
    # tensors lack, so it is built on the CPU instead of raising.
    monkeypatch.setattr('training.training_loop._META_BUILD_MIN_ELEMENTS', 0)
    interface = dict(img_resolution=8, img_channels=1, label_dim=3)
    src = construct_network(_tiny_kwargs(), interface)
    vp = _tiny_kwargs(class_name='training.networks.VPPrecond')
    assert network_mismatch(src, vp, interface, exact=True).startswith(
        'training.networks.EDMPrecond there, training.networks.VPPrecond here')
    assert construct_network(_tiny_kwargs(), interface, on_meta=True).model.map_label.weight.is_meta


def _snapshot(folder: Path, data: str, *options: str) -> Path:
    """A run folder holding (random weights of) the network edm.train builds for these options, as kimg 2."""
    from edm.train import build_config
    from training.dataset import ImageFolderDataset
    c = build_config(_parse(f'--outdir={folder}', f'--data={data}', '--device=cpu', '--seed=0', *options))
    dataset = ImageFolderDataset(data, use_labels=c.dataset_kwargs.use_labels)
    folder.mkdir()
    pickle.dump(dict(ema=construct_network(c.network_kwargs, network_interface(dataset))),
                open(folder / 'network-snapshot-000002.pkl', 'wb'))
    (folder / 'training-state-000002.pt').write_bytes(b'')
    return folder / 'training-state-000002.pt'


def test_cli_refuses_a_network_that_does_not_fit_before_any_work(run, tmp_path):
    from dnnlib.util import UserError
    from edm.train import build_config, run as train_run
    from tiny_edm2 import TOY, tiny_edm2_net, write_edm2_pkl
    data, _ = run
    data8 = _write_dataset(tmp_path / 'data8', n=4, size=8)
    options = ['--cbase=4', '--cres=1', '--blocks=1', '--augment=0']
    state = _snapshot(tmp_path / 'run', data, '--cond=1', *options)
    outdir = tmp_path / 'out'
    common = [f'--outdir={outdir}', '--device=cpu', '--seed=0', '--dry-run', *options]
    assert build_config(_parse(f'--data={data}', *common, '--cond=1', f'--resume={state}')).resume_kimg == 2
    for args, words in [
        ([f'--data={data}', '--cond=0'], 'label_dim=3 there, 0 here'),
        ([f'--data={data}', '--cond=1', '--cbase=8'], 'model_channels=4 there, 8 here'),
        ([f'--data={data8}', '--cond=1'], 'img_resolution=4 there, 8 here'),
    ]:
        with pytest.raises(UserError, match=re.escape(f'--resume: the network in {state.parent}')) as info:
            train_run(_parse(*common, *args, f'--resume={state}'))
        assert words in str(info.value) and 'training_options.json' in str(info.value)

    text = tmp_path / 'notes.pkl'
    text.write_text('not a pickle\n')
    edm2 = write_edm2_pkl(tmp_path / 'edm2.pkl', tiny_edm2_net(**TOY))
    for pkl, words in [(text, 'not a network pickle'), (edm2, 'training.networks_edm2.Precond there'),
                       (state.parent / 'network-snapshot-000002.pkl', 'of other shapes')]:
        with pytest.raises(UserError, match=re.escape('--transfer: ')) as info:
            train_run(_parse(f'--data={data}', *common, '--cond=1', '--cbase=8', f'--transfer={pkl}'))
        assert words in str(info.value) and '\n' not in str(info.value)
    assert not outdir.exists()


@pytest.mark.parametrize('size, options, words', [
    (6, [], 'size must be a multiple of 4'),                          # ddpmpp's 3 levels halve it twice: 6 -> 3 -> 2
    (2, [], 'size must be a multiple of 4'),                          # too small for them
    (4, ['--arch=adm'], '4 levels (--cres=1,2,3,4)'),                # too small for adm's
    (6, ['--cres=1,1'], None),                                        # two levels take 6 -> 3
])
def test_cli_dry_run_refuses_image_sizes_the_network_cannot_take(tmp_path, capsys, size, options, words):
    from dnnlib.util import UserError
    from edm.train import run as train_run
    data = _write_dataset(tmp_path / 'data', n=2, size=size)
    args = _parse(f'--outdir={tmp_path / "out"}', f'--data={data}', '--device=cpu', '--dry-run', *options)
    if words is None:
        train_run(args)
        assert 'Dry run; exiting.' in capsys.readouterr().out
    else:
        with pytest.raises(UserError, match=re.escape(words)):
            train_run(args)
    assert not (tmp_path / 'out').exists()


def test_cli_refuses_images_that_are_not_square(tmp_path):
    from dnnlib.util import UserError
    from edm.train import build_config
    (tmp_path / 'data').mkdir()
    PIL.Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(tmp_path / 'data' / 'a.png')
    with pytest.raises(UserError, match='holds 8x4 images, but the networks take square ones'):
        build_config(_parse(f'--outdir={tmp_path / "out"}', f'--data={tmp_path / "data"}', '--device=cpu'))


@pytest.mark.slow
def test_cli_train_and_resume(run, tmp_path):
    data, _ = run
    outdir = tmp_path / 'runs'
    common = [f'--outdir={outdir}', f'--data={data}', '--cond=1', '--cbase=8', '--cres=1', '--batch=1000',
              '--augment=0.1', '--tick=1', '--workers=0', '--device=cpu', '--seed=0', '--desc=t']
    res = _cli(*common, '--duration=0.002')  # 2 steps = 2 ticks (no state dump at tick 0)
    assert res.returncode == 0, res.stderr[-2000:]
    run0 = outdir / '00000-data-cond-ddpmpp-edm-gpus1-batch1000-fp32-t'
    assert sorted(os.listdir(run0)) == ['log.txt', 'network-snapshot-000001.pkl', 'network-snapshot-000002.pkl',
                                        'stats.jsonl', 'training-state-000002.pt', 'training_options.json']
    opts = json.loads((run0 / 'training_options.json').read_text())
    assert opts['network_kwargs']['augment_dim'] == 9 and opts['network_kwargs']['model_channels'] == 8
    assert opts['dataset_kwargs']['max_size'] == 32 and opts['dataset_kwargs']['resolution'] == 4
    assert opts['ema_halflife_kimg'] == 500 and opts['total_kimg'] == 2
    assert 'Exiting...' in (run0 / 'log.txt').read_text()

    res = _cli(*common, '--duration=0.004', f'--resume={run0 / "training-state-000002.pt"}')
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'kimg 3.0' in res.stdout  # the first tick of the resumed run
    run1 = outdir / '00001-data-cond-ddpmpp-edm-gpus1-batch1000-fp32-t'
    assert json.loads((run1 / 'training_options.json').read_text())['resume_kimg'] == 2
    assert sorted(n for n in os.listdir(run1) if n.endswith(('.pkl', '.pt'))) == \
        ['network-snapshot-000003.pkl', 'network-snapshot-000004.pkl', 'training-state-000004.pt']
