"""Shared pytest setup: the repository root on sys.path and the location of the upstream fixtures."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A copy of ../shared/fixtures (numbers written by upstream EDM), so that a clean clone tests on its own.
FIXTURES = Path(os.environ.get('EDM_ART_FIXTURES', ROOT / 'tests' / 'fixtures'))


@pytest.fixture(scope='session')
def fixtures_dir() -> Path:
    """Directory of the reference numbers produced by upstream EDM."""
    path = FIXTURES / 'edm-compat'
    if not path.is_dir():
        pytest.fail(f'fixtures not found at {path}; set EDM_ART_FIXTURES')
    return path
