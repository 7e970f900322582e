"""scripts/gpu_check.py (`make gpu-check`): the no-GPU exit, and its comparison, row and table helpers on fake numbers
(the checks themselves need CUDA)."""
import math
import runpy

import pytest
import torch

from scripts import gpu_check


def test_without_cuda_the_script_prints_one_line_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(gpu_check, 'run_checks', lambda *args: pytest.fail('checks run without CUDA'))
    assert gpu_check.main() == 0
    with pytest.raises(SystemExit) as exit_info:                # the file as a script, as gpu_check.sh runs it
        runpy.run_path(gpu_check.__file__, run_name='__main__')
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == 2 * (gpu_check.NO_GPU + '\n')


def test_compare_scales_by_the_largest_reference_value_or_elementwise():
    ref = torch.tensor([100.0, 0.01], dtype=torch.float64)
    x = torch.tensor([100.0, 0.0101], dtype=torch.float64)      # off by 1e-4: 1e-6 of the scale, 1e-2 of its level
    numbers, passed = gpu_check.compare(x, ref, 1e-5)
    assert passed and numbers == 'max |diff|/scale 1.00e-06 (tol 1e-05)'
    numbers, passed = gpu_check.compare(x, ref, 1e-3, elementwise=True)
    assert not passed and numbers.startswith('max |diff|/scale 1.00e-02')
    assert gpu_check.compare(x, ref, 1e-2 * (1 + 1e-9), elementwise=True)[1]


def test_compare_fails_non_finite_samples():
    ref = torch.ones(3)
    for bad in (math.nan, math.inf):
        numbers, passed = gpu_check.compare(torch.tensor([1.0, bad, 1.0]), ref, 1.0)
        assert not passed and 'nan' in numbers


def test_rows_and_table():
    rows = [gpu_check.run_check('good', lambda: ('ran', 'err 0', True)),
            gpu_check.run_check('bad', lambda: ('ran', 'err 1', False)),
            gpu_check.run_check('skipped', lambda: ('1 GPU', '', None)),
            gpu_check.run_check('crashed', lambda: 1 / 0)]
    assert [row.status for row in rows] == ['PASS', 'FAIL', 'SKIP', 'FAIL']
    assert rows[3].result == 'ZeroDivisionError: division by zero'
    lines = gpu_check.format_table(rows).splitlines()
    assert lines[0].split() == ['check', 'result', 'numbers', 'pass/fail']
    assert lines[1].split() == ['good', 'ran', 'err', '0', 'PASS']
    status_column = lines[0].index('pass/fail')
    assert [line[status_column:] for line in lines[1:]] == ['PASS', 'FAIL', 'SKIP', 'FAIL']
