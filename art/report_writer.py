"""The writers of the benchmark report (`python -m art.report`): each method's cost from the provenance of its
schedules, ART-RL's gap table, one setting's plot and tables, and report.md with rows.json."""

import os
import platform
from typing import Dict, List, Optional

import torch

import dnnlib
from art.compare import format_table
from art.plots import plot_metric_vs_nfe

ONE_CLOCK = ('closed-form', 'art-rl', 'gits')   # methods whose schedules for every K come from one estimate
SUMMARY = ('trained network LeNet', 'trained network Inception', 'trained network')   # all solvers in one table, first


def method_costs(rows: List[Dict]) -> Dict[str, dict]:
    """Cost of making each method's schedules from their provenance: summed over K, once for one-clock methods."""
    costs = {}
    for row in rows:
        cost = row.get('cost') or {}
        if not cost:
            continue
        total = costs.setdefault(row['schedule'], dict(network_evals=0, cpu_seconds=0.0))
        if row['schedule'] in ONE_CLOCK and total['network_evals']:
            continue
        total['network_evals'] += int(sum(v for k, v in cost.items()
                                          if k.endswith('_evals') and isinstance(v, (int, float))))
        cpu = cost.get('cpu_seconds', cost.get('cpu_seconds_this_session_rank0', 0.0))   # art-rl: rank 0, its run
        total['cpu_seconds'] = round(total['cpu_seconds'] + float(cpu), 1)
    return costs


def gap_table(rows: List[Dict]) -> str:
    """ART-RL's value divided by direct's, the closed form's and EDM's at each K (empty without an art-rl column)."""
    value = {(row['schedule'], row['steps']): row['value'] for row in rows}
    steps = sorted({row['steps'] for row in rows if ('art-rl', row['steps']) in value})
    others = [name for name in ('direct', 'closed-form', 'edm') if all((name, k) in value for k in steps)]
    if not steps or not others:
        return ''
    lines = ['| art-rl / | ' + ' | '.join(f'K={k}' for k in steps) + ' |', '|' + '---|' * (len(steps) + 1)]
    lines += [f'| {name} | ' + ' | '.join(f'{value["art-rl", k] / value[name, k]:.3f}' for k in steps) + ' |'
              for name in others]
    return '\n'.join(lines)


def finish_setting(title: str, solver: str, metric: str, rows: List[Dict], outdir: str, note: str) -> Dict:
    """Name art-rl columns, write the setting's plot, and return its rows, note, costs and tables."""
    for row in rows:
        if row['schedule'].endswith('.json'):
            row['schedule'] = 'art-rl'                                     # the report's only schedule files
    name = f'{title}-{metric}-{solver}'.replace(' ', '_')
    print(f'{name}: {len(rows)} cells in {sum(row["seconds"] for row in rows):.0f} s', flush=True)
    plot_metric_vs_nfe(rows, os.path.join(outdir, f'{name}.png'), metric, title=f'{title} ({solver})')
    return dict(title=title, name=name, solver=solver, metric=metric, rows=rows, note=note + '.',
                costs=method_costs(rows), table=format_table(rows), gaps=gap_table(rows))


def write_report(outdir: str, results: List[Dict], version: str, walls: Optional[Dict[str, float]] = None) -> str:
    """report.md: the SUMMARY settings with all their solvers in one table each, then one section per setting with its
    table, plot and method costs; `version` is the commit measured, `walls` the wall seconds of each part run."""
    wall = ''
    if walls:
        each = ', '.join(f'{name} {seconds / 60:.0f}' for name, seconds in walls.items())
        wall = f' in {sum(walls.values()) / 60:.0f} min wall time ({each} min)'
    lines = ['# Schedule benchmark', '', f'Produced by `python -m art.report` at commit {version} on '
             f'{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}'
             f'{wall}.', '']
    for title in SUMMARY:
        same = [result for result in results if result['title'] == title]     # one result per solver
        if same:
            lines += [f'## {title}: {same[0]["metric"]}, all solvers', '', same[0]['note'], '',
                      format_table([row for result in same for row in result['rows']]), '']
    for result in results:
        lines += [f'## {result["title"]}: {result["metric"]}, {result["solver"]}', '', result['note'], '',
                  result['table'], '',
                  f'![{result["name"]}]({result["name"]}.png)', '', '| method | cost: network evaluations | CPU s |',
                  '|---|---|---|']
        lines += [f'| {m} | {c["network_evals"]} | {c["cpu_seconds"]} |' for m, c in result['costs'].items()]
        lines.append('')
        if result['gaps']:
            lines += ['ART-RL relative to direct (the limit), the closed form and EDM (ratio of the values above):', '',
                      result['gaps'], '']
    text = '\n'.join(lines)
    dnnlib.util.atomic_write_text(os.path.join(outdir, 'report.md'), text)
    rows = [dict(setting=r['name'], **row) for r in results for row in r['rows']]
    dnnlib.util.atomic_write_json(os.path.join(outdir, 'rows.json'), rows, indent=1)
    return text
