# pdmd_lab: one virtual environment, everything installed in one pip call (torch is pinned in
# pyproject.toml, so pip never swaps in another build while resolving diffusers / accelerate).
#   make test   run the test suite (fast CPU tests, notebooks and the app included)
#   make app    the Gradio demo        make lab    JupyterLab on notebooks/
#   make zoo    rebuild assets/        make bench  timing table        make lint   ruff

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export GRADIO_ANALYTICS_ENABLED := False

.PHONY: all install .venv test app lab zoo bench lint clean

all: test

install: $(STAMP)
.venv: $(STAMP)

# Reinstalls only when pyproject.toml changes (or the stamp is removed).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e ".[app,notebooks,dev]"
	touch $@

# Two workers, one test file each (a file's fixtures, app servers and kernels stay in one process).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

app: $(STAMP)
	$(PY) -m app.app

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

zoo: $(STAMP)
	$(VENV)/bin/pdmd-lab build-zoo

bench: $(STAMP)
	$(VENV)/bin/pdmd-lab bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf .pytest_cache .ruff_cache
