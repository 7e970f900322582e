"""python -m edm.generate: output files, seed splitting, torchrun equivalence and one-line errors."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from edm.generation import rank_batches


def _run(args, tmp_path, torchrun=False):
    """Run the CLI (optionally under torchrun with 2 CPU processes); returns the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    if torchrun:
        cmd = [os.path.join(os.path.dirname(sys.executable), 'torchrun'), '--standalone', '--nproc_per_node=2',
               '-m', 'edm.generate']
    else:
        cmd = [sys.executable, '-m', 'edm.generate']
    return subprocess.run(cmd + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_rank_batches_split_as_upstream():
    seeds = list(range(10))
    # One process, batch 4: ceil(10/4) = 3 chunks of sizes 4, 3, 3.
    assert [b.tolist() for b in rank_batches(seeds, 4, 0, 1)] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    # Two processes, batch 4: ceil(10/8)*2 = 4 chunks (3, 3, 2, 2); rank 1 takes chunks 1 and 3.
    assert [b.tolist() for b in rank_batches(seeds, 4, 1, 2)] == [[3, 4, 5], [8, 9]]
    assert sum(len(b) for r in range(3) for b in rank_batches(seeds, 64, r, 3)) == 10


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
    out = _run(args + ['--device=cpu'], tmp_path)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: ') and pattern in lines[0], out.stderr
    assert not outdir.exists() or not any(outdir.rglob('*.png'))
