"""art/compare.py: the paper's Table 1 baseline rows, the training-free optimum, rms against exact references,
schedule files checked against the network, FID with repeats."""

import pytest
import torch

from art.analytic import load_analytic, write_random_gmm
from art.compare import ScheduleSource, format_table, run_bench
from art.schedules import Schedule, ScheduleError, save_schedule
from edm.images import to_uint8

STEPS = [2, 5, 10, 20, 50, 100]
PAPER_UNIFORM = [.465, .212, .110, .057, .023, .012]   # P1 Table 1, computed exactly (docs/method.md §9)
PAPER_EDM = [.662, .316, .174, .091, .037, .019]
CLOSED_FORM = [.349, .149, .077, .039, .016, .008]


def test_gauss1d_w2_reproduces_paper_rows():
    net = load_analytic('analytic:gauss1d')
    rows = run_bench('analytic:gauss1d', net, STEPS, ['uniform', 'edm', 'closed-form'], 'euler', 'w2', 1, 0,
                     torch.device('cpu'), method_options={'closed-form': dict(num_samples=16)})
    table = {(r['schedule'], r['steps']): r['value'] for r in rows}
    for k, uniform, edm, closed in zip(STEPS, PAPER_UNIFORM, PAPER_EDM, CLOSED_FORM):
        assert round(table[('uniform', k)], 3) == uniform
        assert round(table[('edm', k)], 3) == edm
        assert abs(table[('closed-form', k)] - closed) <= 0.002
    assert 'K=100 (NFE 100)' in format_table(rows)


def _row(schedule, solver, steps, value, values=None):
    return dict(schedule=schedule, solver=solver, steps=steps, metric='fid', value=value, spread=0.5,
                values=values or [value])


def test_format_table_columns_per_solver_and_k_with_the_best_in_bold():
    rows = [_row('edm', 'heun', 3, 9.0), _row('edm', 'euler', 5, 4.0), _row('art', 'euler', 5, 3.0, [2.5, 3.5]),
            _row('art', 'heun', 3, 10.0), _row('gits', 'euler', 3, 1.0)]
    lines = format_table(rows).splitlines()
    assert lines[0] == '| fid | euler K=3 (NFE 3) | euler K=5 (NFE 5) | heun K=3 (NFE 5) |'
    assert lines[2:] == ['| edm | - | 4 | **9** |', '| art | - | **3 ± 0.5** | 10 |', '| gits | **1** | - | - |']
    assert format_table(rows[1:3]).splitlines()[0] == '| fid (euler) | K=5 (NFE 5) |'


def test_rms_on_gmm_ranks_schedules_and_reads_files(tmp_path):
    gmm = write_random_gmm(tmp_path / 'mix.npz', k=8, shape=(1, 4, 4), seed=3)
    spec = f'analytic:gmm:{gmm}'
    net = load_analytic(spec)
    # A schedule file for K=4 is resampled to K=5; at K=4 it must give exactly its own grid's error.
    save_schedule(Schedule('test', [80.0, 10.0, 1.0, 0.1, 0.0]), tmp_path / 's.json')
    rows = run_bench(spec, net, [4, 5], ['edm', 'closed-form', str(tmp_path / 's.json')], 'euler', 'rms', 32, 0,
                     torch.device('cpu'), method_options={'closed-form': dict(num_samples=32, fine_steps=128)})
    table = {(r['schedule'], r['steps']): r for r in rows}
    assert table[('s.json', 4)]['sigmas'] == [80.0, 10.0, 1.0, 0.1, 0.0]
    assert len(table[('s.json', 5)]['sigmas']) == 6
    for k in (4, 5):
        assert table[('closed-form', k)]['value'] < table[('edm', k)]['value']
        assert all(table[(name, k)]['value'] > 0 for name in ('edm', 'closed-form', 's.json'))


def test_schedule_files_must_fit_the_network(tmp_path):
    net = load_analytic('analytic:gauss1d')                                    # T = 3
    save_schedule(Schedule('test', [80.0, 1.0, 0.0]), tmp_path / 'edm80.json')
    with pytest.raises(ScheduleError, match='starts at sigma = 80, above the network'):
        ScheduleSource(str(tmp_path / 'edm80.json'), net, 'analytic:gauss1d', 'euler')
    save_schedule(Schedule('test', [3.0, 1.0, 0.0], provenance={'network': 'analytic:gauss:std=2,shape=1x1x1'}),
                  tmp_path / 'other.json')
    source = ScheduleSource(str(tmp_path / 'other.json'), net, 'analytic:gauss1d', 'euler')
    assert 'made for analytic:gauss:std=2,shape=1x1x1, not analytic:gauss1d' in source.note
    assert ScheduleSource('edm', net, 'analytic:gauss1d', 'euler').note is None


class _ProjectionDetector(torch.nn.Module):
    """A fixed random projection of the pixels to 64 features (stands in for Inception; fewer features than its 2048
    keep each FID's eigendecomposition cheap)."""
    feature_dim = 64

    def __init__(self, pixels):
        super().__init__()
        self.weight = torch.randn(pixels, self.feature_dim, generator=torch.Generator().manual_seed(0),
                                  dtype=torch.float64)

    def forward(self, images, return_features=True):
        return images.to(torch.float64).flatten(1) @ self.weight / 255


def test_fid_metric_with_repeats_orders_budgets(tmp_path):
    from art.compare import SeedSet
    from edm import fid
    net = load_analytic('analytic:gauss:std=0.5,shape=1x4x4')
    detector = _ProjectionDetector(16)
    # Reference statistics: exact ODE endpoints of other seeds, through the same quantisation and detector.
    reference = SeedSet(net, list(range(1000, 1400)), torch.device('cpu')).reference(80.0)
    stats = fid.FeatureStats(dim=detector.feature_dim)
    stats.update(detector(torch.from_numpy(to_uint8(reference)).permute(0, 3, 1, 2)))
    mu, sigma = stats.mean_cov()
    ref_path = str(tmp_path / 'ref.npz')
    fid.save_reference(ref_path, mu, sigma)
    rows = run_bench('g', net, [1, 20], ['edm'], 'euler', 'fid', 200, 0, torch.device('cpu'), repeats=2,
                     fid_options=dict(ref=ref_path, detector=detector, batch=64))
    by_k = {r['steps']: r for r in rows}
    assert all(len(r['values']) == 2 and r['spread'] >= 0 for r in rows)
    assert by_k[20]['value'] < by_k[1]['value'] / 5      # 20 steps are far closer to the data than 1 step
    assert '±' in format_table(rows)
