"""art.report_writer: method costs from provenance, ART-RL's gap table, the Markdown report and its rows."""
import json

from art.report_writer import gap_table, method_costs, write_report


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
    assert 'at commit abc1234 on' in text and '## mix: rms, euler' in text
    assert '![mix-rms-euler](mix-rms-euler.png)' in text
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
