"""art.demo (make demo): the shipped ART schedule against EDM's grid on the default network."""
import json
import os

import PIL.Image

from art.demo import run_demo
from art.networks import DEFAULT_NETWORK, shipped_schedule_path


def test_demo_writes_comparison_and_art_beats_edm(tmp_path):
    assert shipped_schedule_path(DEFAULT_NETWORK, 10) is not None, 'no schedule shipped for the default network'
    summary = run_demo(DEFAULT_NETWORK, 10, str(tmp_path), seeds=[0, 1, 2, 3])
    results = summary['results']
    assert results['art']['rms'] < results['edm']['rms']
    assert results['edm']['sigmas'][0] == results['art']['sigmas'][0] == 80.0
    assert json.loads((tmp_path / 'results.json').read_text())['results']['art']['rms'] == results['art']['rms']
    assert sorted(os.listdir(tmp_path / 'art')) == ['000000.png', '000001.png', '000002.png', '000003.png']
    comparison = PIL.Image.open(tmp_path / 'comparison.png')
    assert comparison.width > 3 * 2 * 32 and comparison.height > 2 * 32
