"""Dockerfile and environment.yml: linted, complete, and in step with requirements.txt (no Docker engine here)."""
import os
import re
import shutil
import subprocess
import sys

import rattler
import yaml
from packaging.requirements import Requirement

from conftest import ROOT


def _requirements():
    """name -> version pinned in requirements.txt."""
    pins = {}
    for line in (ROOT / 'requirements.txt').read_text().splitlines():
        line = line.split('#')[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == '==', f'{line}: requirements.txt pins exact versions'
            pins[req.name.lower()] = spec.version
    return pins


def test_dockerfile_passes_hadolint_at_error_level():
    hadolint = shutil.which('hadolint') or os.path.join(os.path.dirname(sys.executable), 'hadolint')
    out = subprocess.run([hadolint, '--failure-threshold', 'error', str(ROOT / 'Dockerfile')], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_copies_existing_files_and_runs_unbuffered():
    text = (ROOT / 'Dockerfile').read_text()
    assert 'PYTHONUNBUFFERED=1' in text
    assert re.search(r'^WORKDIR ', text, re.M) and re.search(r'^ENTRYPOINT ', text, re.M)
    sources = [src for line in re.findall(r'^COPY (.+)$', text, re.M) for src in line.split()[:-1]]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f'Dockerfile copies {src}, which does not exist'
    # Every top-level CLI and package is in the image.
    for name in ('dnnlib/', 'torch_utils/', 'training/', 'edm/', 'art/', 'generate_art.py', 'train_art.py', 'fid.py'):
        assert name in sources, name
    assert os.access(ROOT / 'docker-entrypoint.sh', os.X_OK)


def test_environment_yml_parses_and_agrees_with_pins():
    env = yaml.safe_load((ROOT / 'environment.yml').read_text())
    pins = _requirements()
    conda = [dep for dep in env['dependencies'] if isinstance(dep, str)]
    pip = [entry for dep in env['dependencies'] if isinstance(dep, dict) for entry in dep['pip']]
    found = {}
    for dep in conda:
        spec = rattler.MatchSpec(dep)                          # raises on a malformed conda spec
        found[spec.name.normalized] = dep
    for entry in pip:
        Requirement(entry)                                     # raises on a malformed pip entry
    for name, version in pins.items():
        conda_name = 'pytorch-gpu' if name == 'torch' else name
        assert conda_name in found, f'{name} is pinned in requirements.txt but missing from environment.yml'
        assert re.search(rf'==?{re.escape(version)}$', found[conda_name]), (found[conda_name], version)


def test_pyproject_agrees_with_pins_and_names_every_cli():
    import importlib
    import tomllib

    import click
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    ranges = {Requirement(dep).name.lower(): Requirement(dep).specifier for dep in project['dependencies']}
    assert set(ranges) == set(_requirements())                 # same packages as requirements.txt ...
    for name, version in _requirements().items():
        assert ranges[name].contains(version), (name, version)  # ... and the pinned versions are in range
    for script, target in project['scripts'].items():
        module, attr = target.split(':')
        assert isinstance(getattr(importlib.import_module(module), attr), click.Command), script
    modules = {target.split(':')[0].split('.')[0] for target in project['scripts'].values()}
    setup = tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['setuptools']
    assert modules <= set(setup['packages']) | set(setup['py-modules'])


def test_console_command_runs_outside_the_repository(tmp_path):
    # `make` installs the project in editable mode, so the commands work from any folder.
    exe = os.path.join(os.path.dirname(sys.executable), 'art-schedule')
    out = subprocess.run([exe, '--help'], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert out.returncode == 0 and 'export' in out.stdout, out.stderr
