"""art.report: method costs from provenance, ART-RL's gap table, the Markdown report and its rows."""
import json


from art.report import gap_table, method_costs, write_report
from conftest import cli_error


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
    text = write_report(str(tmp_path), [result], 'abc1234')
    assert 'at commit abc1234 on' in text and '## mix: rms, euler' in text and '![mix-rms-euler](mix-rms-euler.png)' in text
    assert '| art-rl | 1400 | 9.0 |' in text and '| direct | 1.200 | 1.500 |' in text
    assert (tmp_path / 'report.md').read_text() == text
    rows = json.loads((tmp_path / 'rows.json').read_text())
    assert len(rows) == len(ROWS) and rows[0]['setting'] == 'mix-rms-euler'
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith('.')]


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
    line = cli_error(['-m', 'art.report', f'--outdir={tmp_path / "r"}', '--settings=mixture,bogus'])
    assert 'unknown bogus' in line
    assert not (tmp_path / 'r').exists()
