# Two entry points: `make demo` and `make test`. Both create .venv on first use (so does `make gpu-check`, the GPU
# readiness check: one line and nothing done on a machine without CUDA).
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: test demo gpu-check venv clean

venv: $(VENV_STAMP)

$(VENV_STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(VENV_STAMP)

test: $(VENV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist=worksteal tests

demo: $(VENV_STAMP)
	$(PY) -m art.demo --steps=10 --outdir=demo-out

gpu-check: $(VENV_STAMP)
	PYTHON=$(PY) scripts/gpu_check.sh

clean:
	rm -rf .venv demo-out
