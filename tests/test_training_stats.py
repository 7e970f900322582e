"""torch_utils.training_stats in one process (the multi-process reduction is tested in test_distributed.py)."""
import math

import numpy as np
import pytest
import torch

import dnnlib
from torch_utils import training_stats as ts


def test_report_returns_value_and_collector_gives_num_mean_std():
    values = [1.0, 2.0, 4.0, 7.5]
    t = torch.tensor([[3.0, -1.0]], requires_grad=True)
    assert ts.report('T1/a', values[:2]) == values[:2]
    assert ts.report('T1/a', np.array(values[2:])) is not None
    assert ts.report('T1/b', t) is t
    ts.report('T1/b', 10)
    c = ts.Collector(regex='T1/.*')
    assert c.num('T1/a') == 0 and math.isnan(c.mean('T1/a'))  # the constructor's update is discarded
    ts.report('T1/a', 100.0)
    c.update()
    assert c.num('T1/a') == 1 and c['T1/a'] == 100.0 and c.std('T1/a') == 0.0


def test_collector_interval_statistics():
    c = ts.Collector(regex='T2/.*')
    vals = np.array([0.5, 1.5, 2.25, -4.0, 8.0])
    ts.report('T2/x', torch.tensor(vals[:3], dtype=torch.float32))
    ts.report('T2/x', vals[3:].tolist())
    ts.report('T2/y', 3)
    ts.report('T2/empty', [])
    c.update()
    assert c.names() == ['T2/x', 'T2/y', 'T2/empty']
    assert c.num('T2/x') == 5
    assert c.mean('T2/x') == pytest.approx(vals.mean(), rel=1e-12)
    assert c.std('T2/x') == pytest.approx(vals.std(), rel=1e-12)  # population std
    assert c['T2/y'] == 3.0 and c.std('T2/y') == 0.0
    d = c.as_dict()
    assert set(d) == {'T2/x', 'T2/y'}  # names without values are left out
    assert isinstance(d['T2/x'], dnnlib.EasyDict)
    assert d['T2/x'].num == 5 and d['T2/x'].mean == pytest.approx(vals.mean())

    # The next interval sees only what was reported after the update.
    ts.report('T2/x', [10.0, 20.0])
    c.update()
    assert c.num('T2/x') == 2 and c.mean('T2/x') == 15.0 and c.std('T2/x') == 5.0
    # keep_previous=True: a name with no new values keeps its last interval.
    assert c.num('T2/y') == 1 and c['T2/y'] == 3.0


def test_keep_previous_false_clears_idle_names():
    c = ts.Collector(regex='T3/.*', keep_previous=False)
    ts.report('T3/a', [1.0, 3.0])
    c.update()
    assert c.num('T3/a') == 2 and c['T3/a'] == 2.0
    c.update()
    assert c.num('T3/a') == 0 and math.isnan(c['T3/a']) and math.isnan(c.std('T3/a')) and c.as_dict() == {}


def test_regex_filters_and_collectors_are_independent():
    fast = ts.Collector(regex='T4/.*')
    only_loss = ts.Collector(regex='T4/loss')
    ts.report('T4/loss', [1.0, 2.0])
    ts.report('T4/other', 5.0)
    fast.update()
    assert fast.num('T4/loss') == 2 and fast['T4/other'] == 5.0
    ts.report('T4/loss', 3.0)
    only_loss.update()  # sees everything since its own last update, though `fast` already synced part of it
    assert only_loss.names() == ['T4/loss']
    assert only_loss.num('T4/loss') == 3 and only_loss['T4/loss'] == 2.0
    assert only_loss.num('T4/other') == 0
    fast.update()
    assert fast.num('T4/loss') == 1 and fast['T4/loss'] == 3.0


def test_float64_accumulation():
    c = ts.Collector(regex='T5/.*')
    big = 1e4  # float32 values whose squares need float64 to keep the small spread
    ts.report('T5/x', torch.tensor([big + 1, big + 2, big + 3], dtype=torch.float32))
    c.update()
    assert c['T5/x'] == big + 2 and c.std('T5/x') == pytest.approx(math.sqrt(2 / 3), rel=1e-6)


def test_report0_on_rank0_and_elsewhere(monkeypatch):
    c = ts.Collector(regex='T6/.*')
    assert ts.report0('T6/r0', 4.0) == 4.0
    monkeypatch.setattr(ts, '_rank', 1)
    ts.report0('T6/r0', 8.0)  # ignored: not rank 0
    ts.report0('T6/r1only', 8.0)
    c.update()
    assert c.num('T6/r0') == 1 and c['T6/r0'] == 4.0
    assert 'T6/r1only' in c.names() and c.num('T6/r1only') == 0


def test_default_collector_exists():
    assert isinstance(ts.default_collector, ts.Collector)
    ts.report('T7/z', 1.0)
    ts.default_collector.update()
    assert ts.default_collector.num('T7/z') == 1


def test_init_multiprocessing_after_sync_is_refused():
    ts.report('T8/x', 1.0)
    ts.Collector(regex='T8/.*').update()
    with pytest.raises(RuntimeError):
        ts.init_multiprocessing(rank=0, sync_device=None)
