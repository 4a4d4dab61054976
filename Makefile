# The two commands of the README, and a few more. Each sets up .venv itself.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
BROWSER_STAMP := $(VENV)/.browser-$(shell cksum < pyproject.toml | cut -d' ' -f1)
NBVAL  := build/nbval

.PHONY: demo test lab browser-test install clean

# The main job: on a GPU the full series (60 epochs); without one, a quick demo.
demo: $(STAMP)
	$(PY) -m nbhelpers.series

# The sweep that notebook 05 compares, resumable (README: Sweeps); SWEEP=parts for another.
SWEEP ?= optimizers
.PHONY: sweep compare
sweep: $(STAMP)
	$(PY) -m nbhelpers.sweep $(SWEEP)

# Notebook 05: runs what is missing of the sweep, then shows the runs side by side.
compare: $(STAMP)
	mkdir -p runs
	$(VENV)/bin/papermill notebooks/05_compare.ipynb runs/05_compare.ipynb -p sweep $(SWEEP) --log-output

# Unit tests, then all four notebooks through nbval on reduced settings.
test: $(STAMP)
	rm -rf $(NBVAL)
	$(PY) -m nbhelpers.series --quick --prepare-only $(NBVAL)
	$(PY) -m pytest tests $(NBVAL) --nbval-lax

# JupyterLab on the project, opened on the series, with the kernel the tests use.
# Jupyter refuses to start as root (as in most containers) unless told it may.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(STAMP)
	$(VENV)/bin/jupyter lab $(ALLOW_ROOT) --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks

# JupyterLab in headless Chromium: opens 01 and a reduced 03, runs every cell, checks what shows
# (tests/browser/lab_check.py; needs /usr/bin/chromium, which .ci/run installs).
browser-test: $(BROWSER_STAMP)
	$(PY) tests/browser/lab_check.py

install: $(STAMP)

# Playwright, for the browser test; it drives the system's Chromium and downloads no browser.
$(BROWSER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,browser]'
	rm -f $(VENV)/.browser-*
	touch $@

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf $(VENV) build runs/demo figures/demo
