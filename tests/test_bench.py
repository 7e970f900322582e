"""`python -m art.bench`: the JSON output, bad schedules and bad input end in one line and write nothing."""
import json
import subprocess
import sys

import pytest

from art.analytic import write_random_gmm
from conftest import ROOT, cli_error


def test_cli_writes_json_and_rejects_bad_schedule(tmp_path):
    out = tmp_path / 'r.json'
    run = subprocess.run([sys.executable, '-m', 'art.bench', '--network=analytic:gauss1d', '--steps=2,5',
                          '--schedules=uniform,edm', '--metric=w2', f'--out={out}'], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())['rows']
    assert [(r['schedule'], r['steps']) for r in rows] == [('uniform', 2), ('uniform', 5), ('edm', 2), ('edm', 5)]
    bad = subprocess.run([sys.executable, '-m', 'art.bench', '--network=analytic:gauss1d', '--schedules=nope.json'],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip().startswith('error: ') and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize('args, pattern', [
    (['--network=analytic:nope'], 'unknown analytic spec'),
    (['--network=analytic:gauss1d', '--metric=w2', '--schedules=edm', '--steps=0'], 'steps'),
])
def test_cli_bad_input(args, pattern):
    run = subprocess.run([sys.executable, '-m', 'art.bench'] + args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and pattern in run.stderr and 'Traceback' not in run.stderr


@pytest.mark.parametrize('args, words', [
    (['--out={file}/rows.json'], '{file} is a file, not a folder'),            # checked before any measurement
    (['--schedules=edm,,uniform'], "'edm,,uniform' has an empty entry"),
    (['--device=cuda'], 'CUDA is not available on this machine; use --device=cpu'),   # CUDA hidden by cli_error
    (['--device=banana'], "'banana' is not a torch device"),
    (['--network=analytic:gmm:{trunc}'], 'truncated or corrupt'),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, args, words):
    paths = dict(file=tmp_path / 'file', trunc=tmp_path / 'trunc.npz')
    paths['file'].write_text('x')
    write_random_gmm(tmp_path / 'mix.npz', k=2, shape=(1, 2, 2))
    paths['trunc'].write_bytes((tmp_path / 'mix.npz').read_bytes()[:300])
    before = sorted(tmp_path.iterdir())
    line = cli_error(['-m', 'art.bench', '--network=analytic:gauss1d', '--steps=2', '--schedules=edm', '--metric=w2',
                      f'--out={tmp_path / "rows.json"}'] + [a.format(**paths) for a in args])   # the last value counts
    assert words.format(**paths) in line
    assert sorted(tmp_path.iterdir()) == before
