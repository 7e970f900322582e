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


PRACTITIONER_TITLE = 'Your diffusers model'
PRACTITIONER_METRICS = {'fid': 'LeNet-FID', 'rms': 'rms'}


def _cell_value(cell: Dict, metric: str, best: Dict) -> str:
    """A cell's value (4 digits; bold where it is its column's lowest; '-' where not measured)."""
    value = cell.get(metric)
    if value is None:
        return '-'
    return f'**{value:.4g}**' if value == best[cell['steps'], metric] else f'{value:.4g}'


def practitioner_markdown(cells: List[Dict]) -> str:
    """The practitioner's table (art/practitioner.py): one line per row, for each K the measured NFE, the sigma the
    loop starts at, LeNet-FID and rms (each column's lowest in bold, '-' where not run); skipped cells listed below."""
    steps = sorted({cell['steps'] for cell in cells})
    done = [cell for cell in cells if 'skipped' not in cell]
    best = {(k, metric): min((c[metric] for c in done if c['steps'] == k and c.get(metric) is not None), default=None)
            for k in steps for metric in PRACTITIONER_METRICS}
    by_row = {(cell['row'], cell['steps']): cell for cell in done}
    lines = ['| schedule | ' + ' | '.join(f'K={k}: NFE | σ start | LeNet-FID | rms' for k in steps) + ' |',
             '|' + '---|' * (1 + 4 * len(steps))]
    for name in dict.fromkeys(cell['row'] for cell in cells):
        parts = []
        for k in steps:
            cell = by_row.get((name, k))
            parts += ['-'] * 4 if cell is None else [str(cell['nfe']), f'{cell["levels"][0]:.4g}',
                                                     _cell_value(cell, 'fid', best), _cell_value(cell, 'rms', best)]
        lines.append(f'| {name} | ' + ' | '.join(parts) + ' |')
    lines += [f'\nNot run: {cell["row"]} at K={cell["steps"]}: {cell["skipped"]}' for cell in cells
              if 'skipped' in cell]
    return '\n'.join(lines)


def art_against_defaults(cells: List[Dict], metric: str) -> str:
    """Each ART row's value (closed form, ART-RL) divided by the best diffusers default's at the same K, naming that
    default (< 1: ART's grid is better); empty without ART or default cells."""
    done = [cell for cell in cells if 'skipped' not in cell and cell.get(metric) is not None]
    steps = sorted({cell['steps'] for cell in done})
    best = {k: min((c for c in done if c['grid'] == 'diffusers' and c['steps'] == k), key=lambda c: c[metric],
                   default=None) for k in steps}
    art = list(dict.fromkeys(c['row'] for c in done if c['grid'] in ('closed-form', 'art-rl')))
    if not art or any(cell is None for cell in best.values()):
        return ''
    value = {(cell['row'], cell['steps']): cell[metric] for cell in done}
    lines = [f'| {PRACTITIONER_METRICS[metric]}: ART / best diffusers default | ' +
             ' | '.join(f'K={k}' for k in steps) + ' |', '|' + '---|' * (len(steps) + 1)]
    for name in art:
        lines.append(f'| {name} | ' + ' | '.join(
            f'{value[name, k] / best[k][metric]:.3f} (vs {best[k]["row"]} {best[k][metric]:.4g})'
            if (name, k) in value else '-' for k in steps) + ' |')
    return '\n'.join(lines)


def practitioner_result(table: Dict, outdir: str) -> Dict:
    """The practitioner's table as a result of write_report: its note, tables (cells, then ART against the best
    default), the grids' costs (each grid counted once, whichever schedulers ran it) and a plot of LeNet-FID (rms
    without FID) against the measured NFE."""
    cells, reference = table['cells'], table['reference']
    metric = 'fid' if table['fid_num'] else 'rms'
    name = 'diffusers-practitioner'
    done = [cell for cell in cells if 'skipped' not in cell]
    print(f'{name}: {len(done)} cells in {sum(cell["seconds"] for cell in done):.0f} s', flush=True)
    plot_metric_vs_nfe([dict(schedule=c['row'], nfe=c['nfe'], value=c[metric]) for c in done],
                       os.path.join(outdir, f'{name}.png'), PRACTITIONER_METRICS[metric],
                       title=f'{PRACTITIONER_TITLE}: diffusers schedulers')
    grids = {(cell['grid'], cell['steps']): cell for cell in cells if cell['cost']}
    check = '' if reference['check_rms'] is None else \
        f' (its distance to {2 * reference["steps"]} steps on {reference["check_latents"]} latents: ' \
        f'{reference["check_rms"]:.3g})'
    note = (f'Model {table["network"]}, every cell from the same latents and labels (seeds 0 on); NFE measured (UNet '
            f'calls per image), σ start the sigma the loop starts at; rms over the first {table["num"]} latents '
            f'against {reference["solver"].upper()} with {reference["steps"]} steps over the model\'s whole range'
            f'{check}; LeNet-FID of {table["fid_num"]} images')
    comparison = art_against_defaults(cells, metric)
    return dict(title=PRACTITIONER_TITLE, name=name, solver='diffusers schedulers', metric='LeNet-FID and rms',
                rows=cells, note=note + '.', costs=method_costs([dict(schedule=grid, cost=cell['cost'])
                                                                 for (grid, _), cell in grids.items()]),
                table=practitioner_markdown(cells) + (f'\n\n{comparison}' if comparison else ''), gaps='')
