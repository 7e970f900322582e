"""art.report_writer: method costs from provenance, ART-RL's gap table, the Markdown report and its rows."""
import json

from art.report_writer import (art_against_defaults, gap_table, method_costs, practitioner_markdown,
                               practitioner_result, write_report)


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


def _cell(row, grid, steps, fid, rms, scheduler='EulerDiscreteScheduler', cost=None):
    return dict(row=row, scheduler=scheduler, grid=grid, steps=steps, nfe=steps, levels=[80.0, 1.0, 0.0], fid=fid,
                rms=rms, cost=cost, seconds=0.1)


CF_COST = dict(evals=46, forward_evals=30, jvp_evals=16, cpu_seconds=0.5)     # as the closed form records it
CELLS = [
    _cell('DDIM', 'diffusers', 5, 30.0, 3.0, 'DDIMScheduler'),
    _cell('DDIM', 'diffusers', 10, 20.0, 2.0, 'DDIMScheduler'),
    _cell('Euler Karras', 'diffusers', 5, 25.0, 2.5), _cell('Euler Karras', 'diffusers', 10, 12.0, 1.5),
    _cell('Euler + closed-form', 'closed-form', 5, 20.0, 2.6, cost=CF_COST),
    _cell('Euler + closed-form', 'closed-form', 10, 15.0, 1.2, cost=CF_COST),
    _cell('DPM++(2M) + closed-form', 'closed-form', 5, 10.0, 1.0, 'DPMSolverMultistepScheduler', CF_COST),
    dict(row='DPM++(2M) + closed-form', scheduler='DPMSolverMultistepScheduler', grid='closed-form', steps=10,
         cost=CF_COST, skipped='two levels round to one timestep'),
]


def test_practitioner_table_and_art_against_the_best_default():
    lines = practitioner_markdown(CELLS).splitlines()
    assert lines[0] == ('| schedule | K=5: NFE | σ start | LeNet-FID | rms | K=10: NFE | σ start | LeNet-FID | rms '
                        '|')
    assert lines[2] == '| DDIM | 5 | 80 | 30 | 3 | 10 | 80 | 20 | 2 |'
    assert lines[4] == '| Euler + closed-form | 5 | 80 | 20 | 2.6 | 10 | 80 | 15 | **1.2** |'    # lowest in bold
    assert lines[5] == '| DPM++(2M) + closed-form | 5 | 80 | **10** | **1** | - | - | - | - |'    # skipped at 10
    assert lines[-1] == 'Not run: DPM++(2M) + closed-form at K=10: two levels round to one timestep'
    ratios = art_against_defaults(CELLS, 'fid').splitlines()
    assert ratios[2] == '| Euler + closed-form | 0.800 (vs Euler Karras 25) | 1.250 (vs Euler Karras 12) |'
    assert ratios[3] == '| DPM++(2M) + closed-form | 0.400 (vs Euler Karras 25) | - |'
    assert art_against_defaults([c for c in CELLS if c['grid'] != 'closed-form'], 'fid') == ''


def test_practitioner_result_joins_the_report(tmp_path):
    table = dict(cells=CELLS, network='assets/ddpm', num=4, fid_num=8,
                 reference=dict(solver='rk4', steps=64, check_latents=2, check_rms=0.01))
    text = write_report(str(tmp_path), [practitioner_result(table, str(tmp_path))], 'abc1234')
    assert '## Your diffusers model: LeNet-FID and rms, diffusers schedulers' in text
    assert 'against RK4 with 64 steps over the model\'s whole range (its distance to 128 steps on 2 latents: 0.01)' \
        in text
    assert '| closed-form | 46 | 0.5 |' in text                        # one clock, counted once for both schedulers
    assert (tmp_path / 'diffusers-practitioner.png').is_file()
    assert len(json.loads((tmp_path / 'rows.json').read_text())) == len(CELLS)
