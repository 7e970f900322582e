"""torch_utils.misc: constant cache, shape checks, InfiniteSampler, parameter copying, module summary."""
import itertools
import warnings

import numpy as np
import pytest
import torch

from torch_utils import misc


def test_constant_is_cached_and_correct():
    a = misc.constant(0.5, shape=[2, 3])
    b = misc.constant(0.5, shape=[2, 3])
    assert a is b
    assert a.shape == (2, 3) and a.dtype == torch.get_default_dtype() and (a == 0.5).all()
    assert misc.constant(0.5, shape=[2, 3], dtype=torch.float64) is not a
    assert misc.constant(0.5) is not a
    c = misc.constant([1, 2, 3], dtype=torch.int64)
    assert c is misc.constant(np.array([1, 2, 3]), dtype=torch.int64)
    assert c.tolist() == [1, 2, 3] and c.dtype == torch.int64
    assert misc.constant([1, 2, 4], dtype=torch.int64).tolist() == [1, 2, 4]  # values are part of the key
    d = misc.constant(np.eye(2), device='cpu')
    assert d is misc.constant(np.eye(2), device=torch.device('cpu'))


def test_constant_memory_format():
    t = misc.constant(1.0, shape=[1, 3, 4, 4], memory_format=torch.channels_last)
    assert t.is_contiguous(memory_format=torch.channels_last) and t.shape == (1, 3, 4, 4)
    assert t is not misc.constant(1.0, shape=[1, 3, 4, 4])


def test_nan_to_num():
    x = torch.tensor([float('nan'), float('inf'), -float('inf'), 1.0])
    assert misc.nan_to_num(x, nan=0, posinf=1e5, neginf=-1e5).tolist() == [0, 1e5, -1e5, 1]
    misc.nan_to_num(x, out=x)
    assert torch.isfinite(x).all()


def test_assert_shape():
    x = torch.zeros(2, 3, 4)
    misc.assert_shape(x, [2, 3, 4])
    misc.assert_shape(x, [None, 3, None])
    misc.assert_shape(x, [torch.tensor(2), 3, 4])
    with pytest.raises(AssertionError, match='number of dimensions'):
        misc.assert_shape(x, [2, 3])
    with pytest.raises(AssertionError, match='dimension 1'):
        misc.assert_shape(x, [2, 5, 4])
    with pytest.raises(AssertionError, match='dimension 0'):
        misc.assert_shape(x, [torch.tensor(3), None, None])


def test_suppress_tracer_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with misc.suppress_tracer_warnings():
            warnings.warn('hidden', torch.jit.TracerWarning)
        warnings.warn('visible', torch.jit.TracerWarning)
    assert [str(w.message) for w in caught] == ['visible']


# ----------------------------------------------------------------------------------------------------------------------
# InfiniteSampler.

def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_infinite_sampler_deterministic_and_seeded():
    data = range(50)
    a = _take(misc.InfiniteSampler(data, seed=3), 300)
    assert a == _take(misc.InfiniteSampler(data, seed=3), 300)
    assert a != _take(misc.InfiniteSampler(data, seed=4), 300)
    assert all(isinstance(i, int) and 0 <= i < 50 for i in a)
    assert len(set(a[:50])) > 40 and a[:50] != sorted(a[:50])  # shuffled, nearly a permutation


def test_infinite_sampler_without_window_repeats_the_seeded_permutation():
    a = _take(misc.InfiniteSampler(range(20), seed=5, window_size=0), 60)
    perm = np.random.RandomState(5).permutation(20).tolist()
    assert a == perm * 3


def test_infinite_sampler_covers_dataset_each_epoch_roughly():
    a = _take(misc.InfiniteSampler(range(40), seed=0), 40 * 10)
    counts = np.bincount(a, minlength=40)
    assert counts.min() >= 5 and counts.max() <= 15  # swaps keep every index in circulation
    assert a[40:80] != a[:40]  # the order keeps changing across epochs


def test_infinite_sampler_no_shuffle():
    assert _take(misc.InfiniteSampler(range(5), shuffle=False), 12) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert _take(misc.InfiniteSampler(range(5), rank=1, num_replicas=2, shuffle=False), 5) == [1, 3, 0, 2, 4]


def test_infinite_sampler_rank_partitioning():
    data = range(37)
    full = _take(misc.InfiniteSampler(data, seed=1), 3 * 200)
    per_rank = [_take(misc.InfiniteSampler(data, rank=r, num_replicas=3, seed=1), 200) for r in range(3)]
    interleaved = [per_rank[k % 3][k // 3] for k in range(3 * 200)]
    assert interleaved == full
    # Without swaps, each pass is split into disjoint per-rank parts that together cover the dataset.
    parts = [set(_take(misc.InfiniteSampler(range(30), rank=r, num_replicas=3, seed=1, window_size=0), 10))
             for r in range(3)]
    assert set().union(*parts) == set(range(30)) and sum(len(p) for p in parts) == 30


def test_infinite_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError):
        misc.InfiniteSampler([], seed=0)
    with pytest.raises(ValueError):
        misc.InfiniteSampler(range(4), rank=2, num_replicas=2)
    with pytest.raises(ValueError):
        misc.InfiniteSampler(range(4), window_size=1.5)


def test_infinite_sampler_with_dataloader():
    data = torch.arange(10, dtype=torch.float32) * 10
    ds = torch.utils.data.TensorDataset(data)
    loader = torch.utils.data.DataLoader(ds, sampler=misc.InfiniteSampler(ds, seed=0), batch_size=4)
    batch = next(iter(loader))[0]
    expected = data[_take(misc.InfiniteSampler(ds, seed=0), 4)]
    assert torch.equal(batch, expected)


# ----------------------------------------------------------------------------------------------------------------------
# Parameters and buffers.

def _net(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_params_and_buffers():
    net = _net(0)
    names = [n for n, _ in misc.named_params_and_buffers(net)]
    assert names == ['0.weight', '0.bias', '1.weight', '1.bias', '1.running_mean', '1.running_var',
                     '1.num_batches_tracked']
    assert [t.data_ptr() for t in misc.params_and_buffers(net)] == \
        [t.data_ptr() for _, t in misc.named_params_and_buffers(net)]


def test_copy_params_and_buffers():
    src, dst = _net(0), _net(1)
    src[1].running_mean.fill_(0.25)
    assert not torch.equal(src[0].weight, dst[0].weight)
    misc.copy_params_and_buffers(src, dst, require_all=True)
    for (n, a), (_, b) in zip(misc.named_params_and_buffers(src), misc.named_params_and_buffers(dst)):
        assert torch.equal(a, b), n
    assert dst[0].weight.requires_grad and dst[0].weight is not src[0].weight


def test_copy_params_and_buffers_partial_and_mismatch():
    src = torch.nn.Sequential(torch.nn.Linear(3, 4))
    dst = _net(1)
    before = dst[1].weight.clone()
    misc.copy_params_and_buffers(src, dst)  # only "0.*" exists in src
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(dst[1].weight, before)
    with pytest.raises(KeyError, match='1.weight'):
        misc.copy_params_and_buffers(src, _net(2), require_all=True)
    with pytest.raises(ValueError, match='shape'):
        misc.copy_params_and_buffers(torch.nn.Sequential(torch.nn.Linear(3, 5)), _net(3))


def test_ddp_sync_and_consistency_without_process_group():
    net = _net(0)
    with misc.ddp_sync(net, sync=False):  # plain module: nothing to switch off
        net(torch.zeros(2, 3)).sum().backward()
    assert net[0].weight.grad is not None
    misc.check_ddp_consistency(net)  # no process group: a no-op
    with pytest.raises(TypeError):
        with misc.ddp_sync(object(), sync=True):
            pass


# ----------------------------------------------------------------------------------------------------------------------
# print_module_summary.

class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.register_buffer('scale', torch.ones(8))

    def forward(self, x):
        return self.act(self.conv(x)) * self.scale.reshape(1, -1, 1, 1)


class _TwoOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = _Block()
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        y = self.block(x)
        return y, self.head(y.mean(dim=(2, 3))).to(torch.float64)


def _rows(text):
    return {line.split()[0]: line.split()[1:] for line in text.strip().splitlines() if not line.startswith('-')}


def test_print_module_summary(capsys):
    net = _TwoOut()
    x = torch.randn(5, 3, 6, 6)
    out = misc.print_module_summary(net, [x])
    ref = net(x)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    text = capsys.readouterr().out
    assert text.strip().splitlines()[0].split() == ['_TwoOut', 'Parameters', 'Buffers', 'Output', 'shape', 'Datatype']
    rows = _rows(text)
    assert list(rows) == ['_TwoOut', 'block.conv', 'block.act', 'block', 'head', '<top-level>', 'Total']
    assert rows['block.conv'] == ['224', '-', '[5,', '8,', '6,', '6]', 'float32']
    assert rows['block'] == ['-', '8', '[5,', '8,', '6,', '6]', 'float32']  # conv parameters counted at the conv
    assert rows['head'] == ['18', '-', '[5,', '2]', 'float32']
    assert rows['<top-level>'] == ['-', '-', '[5,', '2]', 'float64']  # only the new (float64) output
    assert rows['Total'] == ['242', '8']


def test_print_module_summary_nesting(capsys):
    misc.print_module_summary(_TwoOut(), [torch.zeros(1, 3, 4, 4)], max_nesting=1)
    rows = _rows(capsys.readouterr().out)
    assert rows['block'][:2] == ['224', '8'] and 'block.conv' not in rows and rows['Total'] == ['242', '8']


def test_print_module_summary_skip_redundant(capsys):
    net = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(3, 4)))  # "0" returns the tensor "0.0" made
    misc.print_module_summary(net, [torch.zeros(2, 3)])
    assert list(_rows(capsys.readouterr().out))[1:] == ['0.0', 'Total']
    misc.print_module_summary(net, [torch.zeros(2, 3)], skip_redundant=False)
    rows = _rows(capsys.readouterr().out)
    assert list(rows)[1:4] == ['0.0', '0', '<top-level>']
    assert rows['0'] == ['-', '-', '[2,', '4]', 'float32']


def test_print_module_summary_removes_hooks():
    net = _TwoOut()
    misc.print_module_summary(net, [torch.zeros(1, 3, 4, 4)])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_shape_mismatch_names_missing_extra_and_reshaped_tensors():
    expected = {'a': (2, 3), 'b': (4,), 'c': (1,)}
    found = {'b': [4], 'c': (2,), 'd': (5,)}
    assert misc.shape_mismatch(expected, found) == (['a'], ['d'], ['c'])
    assert misc.shape_mismatch(expected, dict(expected)) == ([], [], [])
