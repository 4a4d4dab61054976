# The two commands of the README, and a few more. Each sets up .venv itself.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
NBVAL  := build/nbval

.PHONY: demo test lab install clean

# The main job: on a GPU the full series (60 epochs); without one, a quick demo.
demo: $(STAMP)
	$(PY) -m nbhelpers.series

# The sweep that notebook 05 compares, resumable (README: Sweeps); SWEEP=parts for another.
SWEEP ?= optimizers
.PHONY: sweep
sweep: $(STAMP)
	$(PY) -m nbhelpers.sweep $(SWEEP)

# Unit tests, then all four notebooks through nbval on reduced settings.
test: $(STAMP)
	rm -rf $(NBVAL)
	$(PY) -m nbhelpers.series --demo --prepare-only $(NBVAL)
	$(PY) -m pytest tests $(NBVAL) --nbval-lax

# JupyterLab on the series, with the kernel the tests use.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf $(VENV) build runs/demo figures/demo
