# Everything runs from a project-local virtualenv that `make setup` creates (offline-safe once
# the wheels are installed: nothing at run time reaches the Hugging Face hub).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo lint test test-fast lab bench ceiling sim-check gpu-rehearsal clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt $(wildcard requirements/*.txt) pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is needed (torch==2.13.0 is pinned for it); set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -e .
	touch $@

setup: $(STAMP)  ## create .venv and install everything (once)

demo: $(STAMP)  ## start deadline.py on the default model, query it, stop it
	$(PY) -m servelab.demo

lint: $(STAMP)  ## ruff, with the rules chosen in pyproject.toml
	$(VENV)/bin/ruff check .

test: lint  ## ruff, then the test suite, notebooks in quick mode included (CPU, offline; 25-40 minutes on 2 cores, by host)
	$(PY) -m pytest

test-fast: lint  ## ruff, then the tests without the slow ones (no notebook execution; 5-10 minutes on 2 cores)
	$(PY) -m pytest -m "not slow"

lab: $(STAMP)  ## open the walkthrough notebooks in JupyterLab
	$(VENV)/bin/jupyter lab notebooks/

ceiling: $(STAMP)  ## time the offline pipeline by batch size: the most any server can do
	$(PY) -m servelab ceiling

bench: $(STAMP)  ## one benchmark run; pass ARGS="--variant thread_offloaded --rate 50"
	$(PY) -m servelab bench $(ARGS)

sim-check: $(STAMP)  ## the simulator against measured runs, on this CPU and the emulated H200 (~15 min)
	PY=$(PY) bash results/reference/sim-vs-measured/measure.sh

gpu-rehearsal: $(STAMP)  ## the GPU reference run's whole plan on this CPU, every step short (~5 min)
	$(PY) -m servelab gpu-reference --device cpu --scale rehearsal --budget-s 900 \
		--out results/gpu-reference/rehearsal

clean:  ## remove the virtualenv and caches (keeps results/)
	rm -rf $(VENV) .pytest_cache *.egg-info
