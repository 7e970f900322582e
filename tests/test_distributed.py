"""torch_utils.distributed (and the cross-rank parts of training_stats and misc) in real subprocesses.

A plain `python script.py` must be a world of one on gloo without touching CUDA; under
`torchrun --standalone --nproc_per_node=2` both ranks must agree on collectives, statistics and DDP checks.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / 'torchrun'
_DIST_VARS = ('MASTER_ADDR', 'MASTER_PORT', 'RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'GROUP_RANK',
              'ROLE_RANK', 'ROLE_WORLD_SIZE', 'TORCHELASTIC_RUN_ID', 'TORCHELASTIC_RESTART_COUNT')


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    env['OMP_NUM_THREADS'] = '1'
    return env


# Run in a plain process: fail loudly on any CUDA call other than is_available().
PLAIN_SCRIPT = textwrap.dedent('''
    import json
    import torch
    def forbidden(*args, **kwargs):
        raise RuntimeError('CUDA was called')
    torch.cuda.is_available = lambda: False
    for fn in ('set_device', 'current_device', 'device_count', 'init', '_lazy_init', 'synchronize'):
        setattr(torch.cuda, fn, forbidden)

    from torch_utils import distributed as dist, training_stats
    import torch.distributed as tdist
    dist.init()
    dist.init()  # idempotent
    x = torch.ones(3)
    tdist.all_reduce(x)
    training_stats.report('s', [1.0, 3.0])
    c = training_stats.Collector()
    training_stats.report('s', [2.0, 6.0])
    c.update()
    dist.barrier()
    dist.print0('hello from rank', dist.get_rank())
    print(json.dumps(dict(rank=dist.get_rank(), world=dist.get_world_size(), backend=tdist.get_backend(),
                          device=str(dist.device()), reduced=x.tolist(), mean=c['s'], num=c.num('s'),
                          stop=dist.should_stop(), progress=dist.update_progress(1, 2))))
''')


def test_plain_process_is_world_of_one_without_cuda(tmp_path):
    script = tmp_path / 'plain.py'
    script.write_text(PLAIN_SCRIPT)
    # Occupy upstream's fixed port 29500: a plain process must pick a free port instead (two side by side work).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        try:
            blocker.bind(('', 29500))
            blocker.listen()
        except OSError:
            pass  # already taken by someone else, which serves the same purpose
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == 'hello from rank 0'
    res = json.loads(lines[-1])
    assert res == dict(rank=0, world=1, backend='gloo', device='cpu', reduced=[1.0, 1.0, 1.0], mean=4.0, num=2,
                       stop=False, progress=None)


def test_helpers_without_process_group(capsys):
    from torch_utils import distributed as dist
    import torch.distributed as tdist
    if tdist.is_initialized():
        pytest.skip('a process group exists in this test process')
    assert dist.get_rank() == 0 and dist.get_world_size() == 1
    dist.barrier()  # no-op
    dist.print0('only', 'rank0', sep='-')
    assert capsys.readouterr().out == 'only-rank0\n'


def test_rank_batches_split_as_upstream():
    from torch_utils.distributed import rank_batches
    # One process, batch 4: ceil(10/4) = 3 chunks of sizes 4, 3, 3.
    assert [b.tolist() for b in rank_batches(range(10), 4, 0, 1)] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    # Two processes, batch 4: ceil(10/8)*2 = 4 chunks (3, 3, 2, 2); rank 1 takes chunks 1 and 3.
    assert [b.tolist() for b in rank_batches(list(range(10)), 4, 1, 2)] == [[3, 4, 5], [8, 9]]
    # The items themselves, not their positions (seeds 5, 7, 100, ...); each once over all ranks, in order.
    seeds = [5, 7, 100, 2, 9, 11, 12]
    split = [b.tolist() for r in range(3) for b in rank_batches(seeds, 64, r, 3)]
    assert split == [[5, 7, 100], [2, 9], [11, 12]]


TORCHRUN_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    import torch.distributed as tdist
    from torch_utils import distributed as dist, training_stats, misc

    dist.init()
    rank, world = dist.get_rank(), dist.get_world_size()
    res = dict(rank=rank, world=world, backend=tdist.get_backend())

    x = torch.tensor([float(rank + 1)])
    tdist.all_reduce(x)
    res['all_reduce'] = x.item()

    # training_stats: a global mean/std over values reported on both ranks.
    c = training_stats.Collector(regex='ts/.*')
    values = [[1.0, 2.0, 3.0], [10.0, 20.0]][rank]
    training_stats.report('ts/both', values)
    training_stats.report0('ts/rank0', 5.0 + rank)
    if rank == 1:
        training_stats.report('ts/rank1only', [7.0, 9.0])  # a name the other rank never reported
    c.update()
    res['stats'] = {k: dict(v) for k, v in c.as_dict().items()}
    training_stats.report('ts/both', 100.0 * (rank + 1))
    c.update()
    res['second'] = [c.num('ts/both'), c['ts/both']]

    # check_ddp_consistency: identical weights pass; a difference on rank 1 fails there.
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2, bias=False)
    misc.check_ddp_consistency(lin)
    if rank == 1:
        with torch.no_grad():
            lin.weight[0, 0] += 1
    misc.check_ddp_consistency(lin, ignore_regex=r'Linear\\.weight')
    try:
        misc.check_ddp_consistency(lin)
        res['consistency'] = 'ok'
    except AssertionError as exc:
        res['consistency'] = str(exc)

    # ddp_sync: no all-reduce of gradients when sync=False, averaged gradients when sync=True.
    torch.manual_seed(0)
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1, 1, bias=False))
    inp = torch.tensor([[float(rank + 1)]])
    with misc.ddp_sync(ddp, sync=False):
        ddp(inp).sum().backward()
    res['grad_nosync'] = ddp.module.weight.grad.item()
    ddp.module.weight.grad = None
    with misc.ddp_sync(ddp, sync=True):
        ddp(inp).sum().backward()
    res['grad_sync'] = ddp.module.weight.grad.item()

    # rank0_first: rank 0's body ends before rank 1's begins (rank 1 sees rank 0's file), even when it raises.
    marker = os.path.join(sys.argv[1], 'rank0-first')
    try:
        with dist.rank0_first():
            if rank == 0:
                open(marker, 'w').close()
                raise RuntimeError('rank 0 failed')
            res['rank0_first'] = os.path.exists(marker)
    except RuntimeError:
        res['rank0_first'] = 'raised'

    dist.barrier()
    dist.print0('PRINT0-MARKER')
    with open(os.path.join(sys.argv[1], f'result{rank}.json'), 'w') as f:
        json.dump(res, f)
    tdist.destroy_process_group()
''')


@pytest.mark.slow
def test_torchrun_two_ranks(tmp_path):
    script = tmp_path / 'two_ranks.py'
    script.write_text(TORCHRUN_SCRIPT)
    cmd = [str(TORCHRUN), '--standalone', '--nproc_per_node=2', '--monitor-interval=0.2', str(script), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count('PRINT0-MARKER') == 1
    res = [json.loads((tmp_path / f'result{r}.json').read_text()) for r in range(2)]

    both = [1.0, 2.0, 3.0, 10.0, 20.0]
    mean = sum(both) / 5
    std = (sum((v - mean) ** 2 for v in both) / 5) ** 0.5
    for r, out in enumerate(res):
        assert out['rank'] == r and out['world'] == 2 and out['backend'] == 'gloo'
        assert out['all_reduce'] == 3.0
        stats = out['stats']
        assert stats['ts/both']['num'] == 5
        assert stats['ts/both']['mean'] == pytest.approx(mean) and stats['ts/both']['std'] == pytest.approx(std)
        assert stats['ts/rank0'] == dict(num=1, mean=5.0, std=0.0)
        assert stats['ts/rank1only'] == dict(num=2, mean=8.0, std=1.0)
        assert out['second'] == [2, 150.0]
        assert out['grad_nosync'] == float(r + 1)
        assert out['grad_sync'] == 1.5
    assert res[0]['consistency'] == 'ok'
    assert 'Linear.weight' in res[1]['consistency']
    assert res[0]['rank0_first'] == 'raised' and res[1]['rank0_first'] is True
