"""art.report: method costs from provenance, ART-RL's gap table, the Markdown report and its rows."""
import json

import numpy as np

from art.networks import DEFAULT_NETWORK
from art.report import gap_table, method_costs, write_report
from conftest import cli_error
from edm import fid


def _row(schedule, steps, value, cost=None):
    return dict(schedule=schedule, steps=steps, solver='euler', nfe=steps, metric='rms', value=value, spread=0.0,
                values=[value], cost=cost)


ROWS = [
    _row('edm', 5, 4.0), _row('edm', 10, 2.0),
    _row('closed-form', 5, 3.0, dict(forward_evals=100, jvp_evals=50, cpu_seconds=1.0)),
    _row('closed-form', 10, 1.5, dict(forward_evals=100, jvp_evals=50, cpu_seconds=1.0)),
    _row('direct', 5, 2.5, dict(forward_evals=30, backward_evals=20, reference_forward_evals=None, cpu_seconds=2.0)),
    _row('direct', 10, 1.2, dict(forward_evals=60, backward_evals=40, reference_forward_evals=None, cpu_seconds=3.0)),
    _row('art-rl', 5, 3.0, dict(forward_evals=700, jvp_evals=700, cpu_seconds_this_session_rank0=9.0)),
    _row('art-rl', 10, 1.8, dict(forward_evals=700, jvp_evals=700, cpu_seconds_this_session_rank0=9.0)),
]


def test_costs_sum_over_k_and_count_one_clock_methods_once():
    costs = method_costs(ROWS)
    assert costs['closed-form'] == dict(network_evals=150, cpu_seconds=1.0)      # one estimate serves every K
    assert costs['art-rl'] == dict(network_evals=1400, cpu_seconds=9.0)         # one learned clock serves every K
    assert costs['direct'] == dict(network_evals=150, cpu_seconds=5.0)          # one optimisation per K
    assert 'edm' not in costs


def test_gap_table_gives_art_rl_ratios():
    lines = gap_table(ROWS).splitlines()
    assert lines[0] == '| art-rl / | K=5 | K=10 |'
    assert lines[2] == '| direct | 1.200 | 1.500 |'
    assert lines[3] == '| closed-form | 1.000 | 1.200 |'
    assert lines[4] == '| edm | 0.750 | 0.900 |'
    assert gap_table([r for r in ROWS if r['schedule'] != 'art-rl']) == ''


def test_write_report(tmp_path):
    result = dict(title='mix', name='mix-rms-euler', solver='euler', metric='rms', rows=ROWS, table='| t |', note='n',
                  costs=method_costs(ROWS), gaps=gap_table(ROWS))
    text = write_report(str(tmp_path), [result], 'abc1234', dict(trained=3000.0, mixture=600.0))
    assert 'in 60 min wall time (trained 50, mixture 10 min).' in text
    assert 'at commit abc1234 on' in text and '## mix: rms, euler' in text and '![mix-rms-euler](mix-rms-euler.png)' in text
    assert '| art-rl | 1400 | 9.0 |' in text and '| direct | 1.200 | 1.500 |' in text
    assert (tmp_path / 'report.md').read_text() == text
    rows = json.loads((tmp_path / 'rows.json').read_text())
    assert len(rows) == len(ROWS) and rows[0]['setting'] == 'mix-rms-euler'
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith('.')]
    assert '## trained network' not in text                                     # no summary without its setting
    heun = [dict(row, solver='heun', nfe=2 * row['steps'] - 1, value=row['value'] / 2) for row in ROWS]
    summary = [dict(result, title='trained network', rows=rows) for rows in (ROWS, heun)]
    text = write_report(str(tmp_path), summary, 'abc1234')
    top = text.split('## trained network: rms, all solvers')[1].split('##')[0]
    assert '| rms | euler K=5 (NFE 5) | euler K=10 (NFE 10) | heun K=5 (NFE 9) | heun K=10 (NFE 19) |' in top
    assert '| direct | **2.5** | **1.2** | **1.25** | **0.6** |' in top


def test_exact_reference_statistics(tmp_path):
    """Reference statistics of exact draws from a mixture, with the offline detector, in upstream's npz layout."""
    from art.analytic import load_analytic, write_random_gmm
    from art.report import exact_reference
    from edm.fid import load_reference
    net = load_analytic(f'analytic:gmm:{write_random_gmm(tmp_path / "m.npz", k=3, shape=(1, 8, 8), seed=0)}')
    path = exact_reference(net, 5, str(tmp_path / 'ref.npz'), batch=2)
    ref = load_reference(path)
    assert ref['mu'].shape == (2048,) and ref['sigma'].shape == (2048, 2048) and ref['mu'].dtype == 'float64'
    again = load_reference(exact_reference(net, 5, str(tmp_path / 'again.npz'), batch=5))
    assert abs(ref['mu'] - again['mu']).max() < 1e-5 * abs(ref['mu']).max()      # the same draws in other batches


def test_unknown_setting_is_one_line(tmp_path):
    line = cli_error(['-m', 'art.report', f'--outdir={tmp_path / "r"}', '--settings=mixture,bogus'],
                     in_process=False)   # the real entry point
    assert 'unknown bogus' in line
    assert not (tmp_path / 'r').exists()


def test_bad_reference_fails_before_any_work(tmp_path):
    bad = tmp_path / 'ref.npz'
    bad.write_bytes(b'not an npz')
    line = cli_error(['-m', 'art.report', f'--outdir={tmp_path / "r"}', f'--inception-ref={bad}'])
    assert 'cannot read reference statistics' in line
    assert not (tmp_path / 'r').exists()


def test_trained_setting_at_toy_size(tmp_path, monkeypatch):
    """Every method's column on the embedded network, end to end at toy size (2 latents, tiny grids): the closed form
    and art-rl come from schedule files (their provenance gives the cost), gits and direct are made here."""
    import art.report
    from art.networks import shipped_schedule_path
    monkeypatch.setattr(art.report, 'TRAINED_RMS', {'euler': [2, 3], 'rk4': [2]})
    monkeypatch.setattr(art.report, 'TRAINED_FID', {'euler': [2]})
    monkeypatch.setattr(art.report, 'TRAINED_REFERENCE', ('euler', 6))
    monkeypatch.setattr(art.report, 'TRAINED_GITS_LEVELS', 5)
    closed_form = str(shipped_schedule_path(DEFAULT_NETWORK, 18, methods=('closed-form',)))
    inception_ref = tmp_path / 'inception-ref.npz'          # any statistics of the right shape: the cells run
    fid.save_reference(str(inception_ref), np.zeros(fid.FEATURE_DIM), np.eye(fid.FEATURE_DIM))
    results = art.report.trained_results(str(tmp_path), art.report.TrainedOptions(
        num=2, fid_num=3, fid_repeats=1, closed_form_file=closed_form, art_rl_file=closed_form, direct_steps=[3],
        direct_latents=2, direct_iters=1, gits_latents=1, inception_ref=str(inception_ref), inception_num=2))
    assert [(r['title'], r['metric'], r['solver']) for r in results] == [
        ('trained network', 'rms', 'euler'), ('trained network LeNet', 'fid', 'euler'),
        ('trained network Inception', 'fid', 'euler'), ('trained network', 'rms', 'rk4')]
    assert {(r['schedule'], r['steps']) for r in results[2]['rows']} == {
        (m, 5) for m in ('edm', 'uniform', 'logsnr', 'closed-form', 'art-rl', 'gits')}
    assert results[2]['note'].startswith('1 x 2 images')
    euler, rk4 = results[0]['rows'], results[3]['rows']
    assert {(r['schedule'], r['steps']) for r in euler} == {(m, k) for m in ('edm', 'uniform', 'logsnr', 'closed-form',
                                                                            'art-rl', 'gits') for k in (2, 3)} | {('direct', 3)}
    assert {r['schedule'] for r in rk4} == {'edm', 'uniform', 'logsnr', 'closed-form', 'art-rl'}   # no gits/direct
    assert all(r['value'] > 0 and r['nfe'] == (4 * r['steps'] - 3 if r['solver'] == 'rk4' else r['steps'])
               for r in euler + rk4)
    shipped_cost = json.loads(open(closed_form).read())['provenance']['cost']
    assert results[0]['costs']['closed-form']['network_evals'] == shipped_cost['forward_evals'] + shipped_cost['jvp_evals']
    assert set(results[0]['costs']) == {'closed-form', 'art-rl', 'gits', 'direct'}
    assert (tmp_path / f'{results[1]["name"]}.png').is_file()
