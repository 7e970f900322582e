"""python -m edm.generate: output files, seed splitting, torchrun equivalence and one-line errors."""
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from art.analytic import load_analytic
from conftest import ROOT, cli_error, run_cli_in_process
from edm.imagegen import generate_images
from edm.denoiser import Denoiser, load_denoiser
from edm.rng import seed_latents
from edm.sampler import edm_sampler
from tiny_edm2 import tiny_edm2_net, write_edm2_pkl
from training.encoders import StabilityVAEEncoder


def _run(args, tmp_path, torchrun=False):
    """Run the CLI under torchrun with 2 CPU processes, or else its click main in this process (no torch import per
    run; tests/test_loading.py spawns the real entry point); returns a CompletedProcess."""
    if not torchrun:
        return subprocess.CompletedProcess(args, *run_cli_in_process(['-m', 'edm.generate'] + args))
    cmd = [os.path.join(os.path.dirname(sys.executable), 'torchrun'), '--standalone', '--nproc_per_node=2',
           '-m', 'edm.generate']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run(cmd + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_generate_writes_pngs_and_torchrun_is_byte_identical(tmp_path, tiny_pkl):
    # Batches of 2 on both sides: one process and two ranks then sample the same batches ([0, 1], [2, 3], ...), so each
    # image comes from the same arithmetic; in a batch of another size the network may round a sample differently in
    # the last bit (docs/edm-compat.md §2.1), which could move a pixel by one level.
    common = [f'--network={tiny_pkl}', '--seeds=0-7', '--steps=5', '--device=cpu', '--batch=2']
    one = _run(common + [f'--outdir={tmp_path / "one"}'], tmp_path)
    assert one.returncode == 0, one.stderr
    names = sorted(os.listdir(tmp_path / 'one'))
    assert names == [f'{seed:06d}.png' for seed in range(8)]
    two = _run(common + [f'--outdir={tmp_path / "two"}'], tmp_path, torchrun=True)
    assert two.returncode == 0, two.stderr
    assert sorted(os.listdir(tmp_path / 'two')) == names
    for name in names:
        assert (tmp_path / 'one' / name).read_bytes() == (tmp_path / 'two' / name).read_bytes(), name


def test_subdirs_and_ablation_options(tmp_path, tiny_pkl):
    out = _run([f'--network={tiny_pkl}', '--seeds=999-1001', '--steps=3', '--device=cpu', '--subdirs',
                '--solver=euler', '--disc=vp', '--schedule=vp', '--scaling=vp', f'--outdir={tmp_path}'], tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / '000000' / '000999.png').is_file() and (tmp_path / '001000' / '001001.png').is_file()


@pytest.mark.parametrize('args, pattern', [
    (['--network=/nonexistent/net.pkl'], 'cannot open'),
    (['--network={garbage}'], 'truncated or not a network pickle'),
    (['--network={pkl}', '--seeds=a-b'], '--seeds'),
    (['--network={pkl}', '--steps=0'], '--steps'),
    (['--network={pkl}', '--disc=foo'], '--disc'),
    (['--network={pkl}', '--class=1'], 'unconditional'),
    (['--outdir=x'], '--network'),
    (['--network={pkl}', '--outdir={file}/out'], 'file is a file, not a folder'),  # before loading, not after a batch
    (['--network={pkl}', '--sigma_min=5', '--sigma_max=1'], 'leaves no noise levels'),
])
def test_bad_input_one_line_error_no_images(tmp_path, tiny_pkl, args, pattern):
    garbage = tmp_path / 'garbage.pkl'
    garbage.write_bytes(b'\x80\x04not a pickle')
    (tmp_path / 'file').write_text('x')
    args = [a.format(pkl=tiny_pkl, garbage=garbage, file=tmp_path / 'file') for a in args]
    outdir = tmp_path / 'out'
    if not any(a.startswith('--outdir') for a in args):
        args.append(f'--outdir={outdir}')
    assert pattern in cli_error(['-m', 'edm.generate'] + args + ['--device=cpu'])
    assert not outdir.exists() or not any(outdir.rglob('*.png'))


def test_full_disk_is_one_line_and_keeps_only_whole_images(tmp_path, tiny_pkl, monkeypatch, capsys):
    import errno
    from edm import generate
    real_save, saved = PIL.Image.Image.save, []

    def save(image, fp, *args, **kwargs):
        saved.append(image)
        if len(saved) == 3:                                                  # the disk fills up in the third image
            fp.write(b'half a png')
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_save(image, fp, *args, **kwargs)
    monkeypatch.setattr(PIL.Image.Image, 'save', save)
    monkeypatch.setattr(generate.dist, 'init', lambda *args, **kwargs: None)     # no process group in this process
    outdir = tmp_path / 'out'
    with pytest.raises(SystemExit) as info:
        generate.main.main([f'--network={tiny_pkl}', f'--outdir={outdir}', '--seeds=0-3', '--batch=2', '--steps=2',
                            '--device=cpu'])
    assert info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f'error: No space left on device writing {outdir / "000002.png"}; free some space or write elsewhere'
    assert sorted(os.listdir(outdir)) == ['000000.png', '000001.png']    # whole images; no half-written or temp file
    for name in ('000000.png', '000001.png'):
        assert PIL.Image.open(outdir / name).size == (8, 8)


# ----------------------------------------------------------------------------------------------------------------------
# EDM2 files: autoguidance and the encoder's decode.

def _edm2_pkls(tmp_path) -> dict:
    """A tiny conditional EDM2 network (float16, with its encoder), a smaller guide without one, guides that do not
    fit and a latent-space file whose VAE is not available."""
    return dict(net=write_edm2_pkl(tmp_path / 'net.pkl', tiny_edm2_net(seed=1)),
                guide=write_edm2_pkl(tmp_path / 'guide.pkl', tiny_edm2_net(seed=2, model_channels=8), encoder=False),
                big=write_edm2_pkl(tmp_path / 'big.pkl', tiny_edm2_net(seed=2, img_resolution=16)),
                classes=write_edm2_pkl(tmp_path / 'classes.pkl', tiny_edm2_net(seed=2, label_dim=5)),
                vae=write_edm2_pkl(tmp_path / 'vae.pkl', tiny_edm2_net(seed=1, img_channels=4),
                                   encoder=StabilityVAEEncoder(vae_name=str(tmp_path / 'no-vae'))))


def test_edm2_network_with_and_without_a_guide(tmp_path):
    pkls = _edm2_pkls(tmp_path)
    common = [f'--network={pkls["net"]}', '--seeds=0-2', '--steps=3', '--device=cpu']
    for name, extra in [('plain', []), ('guided', [f'--gnet={pkls["guide"]}', '--guidance=2'])]:
        out = _run(common + extra + [f'--outdir={tmp_path / name}'], tmp_path)
        assert out.returncode == 0, out.stderr
        assert sorted(os.listdir(tmp_path / name)) == ['000000.png', '000001.png', '000002.png']
    # Each PNG is the file encoder's decode of the sampler's output: the same computation in this process.
    for name, gnet, guidance in [('plain', None, 1.0), ('guided', pkls['guide'], 2.0)]:
        net = load_denoiser(pkls['net'], gnet, guidance)
        latents, labels, rnd = seed_latents(net, [0, 1, 2])
        with torch.no_grad():
            images = net.encoder.decode(edm_sampler(net, latents, labels, rnd.randn_like, num_steps=3))
        for seed, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
            assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / name / f'{seed:06d}.png')), image)
    assert not np.array_equal(np.asarray(PIL.Image.open(tmp_path / 'plain' / '000000.png')),
                              np.asarray(PIL.Image.open(tmp_path / 'guided' / '000000.png')))


class _Encoder:
    """An encoder that records how it is set up and used."""
    batch_size = 8

    def __init__(self):
        self.calls = []

    def init(self, device):
        self.calls.append(('init', str(device), self.batch_size))

    def decode(self, x):
        self.calls.append(('decode', tuple(x.shape), self.batch_size))
        return torch.zeros([x.shape[0], 3, 4, 4], dtype=torch.uint8)


def test_encoder_is_set_up_once_and_decodes_in_batches_of_four(tmp_path):
    encoder = _Encoder()
    net = Denoiser(load_analytic('analytic:gauss:std=0.5,shape=1x4x4'), encoder=encoder)
    generate_images(net, str(tmp_path), [0, 1, 2], lambda net, latents, labels, randn_like: latents, max_batch_size=2,
                    progress=False)
    assert encoder.calls == [('init', 'cpu', 8), ('decode', (2, 1, 4, 4), 4), ('decode', (1, 1, 4, 4), 4)]
    assert sorted(os.listdir(tmp_path)) == ['000000.png', '000001.png', '000002.png']


@pytest.mark.parametrize('args, pattern', [
    (['--gnet=/no/such/guide.pkl', '--guidance=2'], "cannot open network pickle '/no/such/guide.pkl'"),
    (['--gnet={guide}', '--guidance=0'], '--guidance must be a number > 0'),
    (['--gnet={guide}', '--guidance=-1.5'], '--guidance must be a number > 0'),
    (['--guidance=2'], '--guidance needs a guiding network: give --gnet'),
    (['--gnet={guide}'], '--gnet needs --guidance'),
    (['--gnet={big}', '--guidance=2'], 'the guiding network works on 3x16x16 images, the network on 3x8x8'),
    (['--gnet={classes}', '--guidance=2'], 'the guiding network has 5 classes, the network 10'),
    (['--network={vae}'], 'no-vae'),   # the VAE is set up before sampling: no download, nothing written
])
def test_edm2_bad_input_one_line_error_no_images(tmp_path, args, pattern):
    pkls = _edm2_pkls(tmp_path)
    args = [f'--network={pkls["net"]}'] + [a.format(**pkls) for a in args]   # the last --network counts
    outdir = tmp_path / 'out'
    assert pattern in cli_error(['-m', 'edm.generate', '--seeds=0', '--steps=2', '--device=cpu', f'--outdir={outdir}']
                                + args)
    assert not outdir.exists() or not any(outdir.rglob('*.png'))
