"""art.settings: the FID reference of exact mixture draws, and the trained network's setting end to end at toy size."""
import json

import numpy as np
import pytest

import art.settings
from art.analytic import load_analytic, write_random_gmm
from art.networks import DEFAULT_NETWORK, shipped_schedule_path
from art.settings import exact_reference
from edm import fid
from edm.fid import load_reference


def test_exact_reference_statistics(tmp_path):
    """Reference statistics of exact draws from a mixture, with the offline detector, in upstream's npz layout."""
    net = load_analytic(f'analytic:gmm:{write_random_gmm(tmp_path / "m.npz", k=3, shape=(1, 8, 8), seed=0)}')
    path = exact_reference(net, 5, str(tmp_path / 'ref.npz'), batch=2)
    ref = load_reference(path)
    assert ref['mu'].shape == (2048,) and ref['sigma'].shape == (2048, 2048) and ref['mu'].dtype == 'float64'
    again = load_reference(exact_reference(net, 5, str(tmp_path / 'again.npz'), batch=5))
    assert abs(ref['mu'] - again['mu']).max() < 1e-5 * abs(ref['mu']).max()      # the same draws in other batches


@pytest.mark.slow
def test_trained_setting_at_toy_size(tmp_path, monkeypatch):
    """Every method's column on the embedded network, end to end at toy size (2 latents, tiny grids): the closed form
    and art-rl come from schedule files (their provenance gives the cost), gits and direct are made here."""
    monkeypatch.setattr(art.settings, 'TRAINED_RMS', {'euler': [2, 3], 'rk4': [2]})
    monkeypatch.setattr(art.settings, 'TRAINED_FID', {'euler': [2]})
    monkeypatch.setattr(art.settings, 'TRAINED_REFERENCE', ('euler', 6))
    monkeypatch.setattr(art.settings, 'TRAINED_GITS_LEVELS', 5)
    closed_form = str(shipped_schedule_path(DEFAULT_NETWORK, 18, methods=('closed-form',)))
    inception_ref = tmp_path / 'inception-ref.npz'          # any statistics of the right shape: the cells run
    fid.save_reference(str(inception_ref), np.zeros(fid.FEATURE_DIM), np.eye(fid.FEATURE_DIM))
    results = art.settings.trained_results(str(tmp_path), art.settings.TrainedOptions(
        num=2, fid_num=3, fid_repeats=1, closed_form_file=closed_form, art_rl_file=closed_form, direct_steps=[3],
        direct_latents=2, direct_iters=1, gits_latents=1, inception_ref=str(inception_ref), inception_num=2))
    assert [(r['title'], r['metric'], r['solver']) for r in results] == [
        ('trained network', 'rms', 'euler'), ('trained network LeNet', 'fid', 'euler'),
        ('trained network Inception', 'fid', 'euler'), ('trained network', 'rms', 'rk4')]
    assert {(r['schedule'], r['steps']) for r in results[2]['rows']} == {
        (m, 5) for m in ('edm', 'uniform', 'logsnr', 'closed-form', 'art-rl', 'gits')}
    assert results[2]['note'].startswith('1 x 2 images')
    euler, rk4 = results[0]['rows'], results[3]['rows']
    made = ('edm', 'uniform', 'logsnr', 'closed-form', 'art-rl', 'gits')
    assert {(r['schedule'], r['steps']) for r in euler} == {(m, k) for m in made for k in (2, 3)} | {('direct', 3)}
    assert {r['schedule'] for r in rk4} == {'edm', 'uniform', 'logsnr', 'closed-form', 'art-rl'}   # no gits/direct
    assert all(r['value'] > 0 and r['nfe'] == (4 * r['steps'] - 3 if r['solver'] == 'rk4' else r['steps'])
               for r in euler + rk4)
    shipped_cost = json.loads(open(closed_form).read())['provenance']['cost']
    shipped_evals = shipped_cost['forward_evals'] + shipped_cost['jvp_evals']
    assert results[0]['costs']['closed-form']['network_evals'] == shipped_evals
    assert set(results[0]['costs']) == {'closed-form', 'art-rl', 'gits', 'direct'}
    assert (tmp_path / f'{results[1]["name"]}.png').is_file()
