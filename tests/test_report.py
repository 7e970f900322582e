"""`python -m art.report`: one-line errors before any sampling, with nothing written."""
import numpy as np
import pytest

from art.schedules import Clock, Schedule, save_schedule
from conftest import cli_error

SIGMAS = np.array([80.0, 10.0, 1.0, 0.0])


def report_error(tmp_path, *args) -> str:
    """The one error line of art.report given bad input (in-process), checked to leave no output folder."""
    line = cli_error(['-m', 'art.report', f'--outdir={tmp_path / "r"}', *args])
    assert not (tmp_path / 'r').exists()
    return line


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


def test_empty_settings_are_refused(tmp_path):
    assert 'choose one or more of trained, mixture, fmnist-mixture' in report_error(tmp_path, '--settings=')


@pytest.mark.parametrize('method, clock, expected', [
    ('closed-form', None, 'has no clock'),
    ('edm', Clock(np.linspace(0, 1, 4), SIGMAS), 'is not closed-form (method edm)')])
def test_closed_form_without_a_clock_is_refused(tmp_path, method, clock, expected):
    path = save_schedule(Schedule(method, SIGMAS, 'euler', clock), tmp_path / 'cf.json')
    line = report_error(tmp_path, f'--trained-closed-form={path}', '--settings=mixture')
    assert expected in line and 'give a closed-form schedule file with a clock' in line


def test_bad_schedule_sources_fail_before_any_work(tmp_path):
    bad = tmp_path / 'bad.json'
    bad.write_text('{')
    assert 'not valid JSON' in report_error(tmp_path, f'--trained-art-rl={bad}')
    (tmp_path / 'run').mkdir()
    assert 'no schedule-k<K>.json' in report_error(tmp_path, f'--art-rl={tmp_path / "run"}')


@pytest.mark.parametrize('option', ['--num', '--repeats', '--direct-latents', '--fid-num', '--fid-ref-num',
                                    '--trained-num', '--trained-fid-num', '--trained-fid-repeats',
                                    '--trained-direct-latents', '--trained-direct-iters', '--trained-gits-latents',
                                    '--inception-num', '--fid-steps', '--trained-direct-steps'])
def test_absurd_sizes_are_refused(tmp_path, option):
    assert option in report_error(tmp_path, f'{option}={10 ** 9}')
