#!/usr/bin/env bash
# GPU readiness check: runs scripts/gpu_check.py (its docstring says what it checks) with the project's venv.
# Without CUDA it prints one line and exits 0, so it is safe on any machine. Usage: scripts/gpu_check.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" scripts/gpu_check.py "$@"
