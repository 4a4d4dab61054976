# The two commands of the README, and a few more. Each sets up .venv itself.
# `make` alone lists them (help); each target's `## ` comment is its line there.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LOCK   := requirements.lock
# A change to either the dependencies or their locked versions reinstalls .venv.
DEPS_SUM := $(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)
STAMP  := $(VENV)/.installed-$(DEPS_SUM)
LAB_STAMP := $(VENV)/.lab-$(DEPS_SUM)
BROWSER_STAMP := $(VENV)/.browser-$(DEPS_SUM)
# What make install puts in .venv: the tests' extra, and the site's (tests/test_site.py builds it).
EXTRAS := dev,site
NBVAL  := build/nbval

.PHONY: help demo test lab browser-test install lock clean slurm-test site reference
.DEFAULT_GOAL := help

# The targets with their `## ` lines, in the order of this file; runs nothing.
help:
	@echo "make TARGET, where TARGET is one of:"
	@sed -n 's/^\([a-z-]*\):.*## \(.*\)/\1|\2/p' $(firstword $(MAKEFILE_LIST)) | \
	    awk -F'|' '{ printf "  %-14s %s\n", $$1, $$2 }'

# The main job: on a GPU the full series (60 epochs); without one, the CPU demo (nbhelpers.config.SIZES).
demo: $(STAMP) ## the main job: notebooks 01-04 (full size on a CUDA GPU, the CPU demo elsewhere)
	$(PY) -m nbhelpers.jobs.series

# The sweep that notebook 05 compares, resumable, each run over 5 seeds (README: Sweeps); SWEEP=parts for another.
SWEEP ?= optimizers
.PHONY: sweep compare
sweep: $(STAMP) ## the sweep 05 compares, 5 seeds a setting, resumable (SWEEP=parts for Ranger's parts)
	$(PY) -m nbhelpers.jobs.sweep $(SWEEP) --seeds 5

# The seed's question at the seed's step count: Ranger and AdamW, each stepped per batch and per
# epoch, 3 seeds each (12 runs of 23,460 steps at the size long on a CPU: hours, resumable; full on a GPU).
# Each finished run's records go to reference/records/ (commit them: the sweep then goes on elsewhere);
# notebook 07 reads them. WORKERS runs go side by side on a CPU, each with its share of the cores
# (width 8: one thread's step is about as fast as two's, so two runs of a thread each finish more).
WORKERS ?= 2
.PHONY: schedule
schedule: $(STAMP) ## the sweep schedule: Ranger and AdamW per batch and per epoch at the size long, 3 seeds (hours on a CPU)
	$(PY) -m nbhelpers.jobs.sweep schedule --seeds 3 --records reference/records --workers $(WORKERS)

# Notebook 05, twice: the optimizers sweep and Ranger's parts, each setting over 5 seeds
# (40 + 20 runs of the size small on a CPU; Ranger per batch is trained in both).
compare: $(STAMP) ## notebook 05 on the sweeps optimizers and parts, training what is missing first
	mkdir -p runs
	$(VENV)/bin/papermill notebooks/05_compare.ipynb runs/05_compare.ipynb -p sweep optimizers -p seeds 5 --log-output
	$(VENV)/bin/papermill notebooks/05_compare.ipynb runs/05_compare-parts.ipynb -p sweep parts -p seeds 5 --log-output

# Notebook 06: runs what is missing of the mixing sweep (4 mixings x 5 seeds; small on a CPU), then compares them.
.PHONY: study
study: $(STAMP) ## notebook 06 on the mixing sweep, training what is missing first
	mkdir -p runs
	$(VENV)/bin/papermill notebooks/06_branch_mixing.ipynb runs/06_branch_mixing.ipynb --log-output

# Unit tests, then every notebook through nbval at the tests' size.
test: $(STAMP) ## the unit tests, then every notebook through nbval at the tests' size
	rm -rf $(NBVAL)
	$(PY) -m nbhelpers.jobs.series --size tiny --prepare-only $(NBVAL)
	$(PY) -m pytest tests $(NBVAL) --nbval-lax

# JupyterLab on the project, opened on the series, with the kernel the tests use.
# Jupyter refuses to start as root (as in most containers) unless told it may.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(LAB_STAMP) ## JupyterLab on the series (installs the `lab` extra)
	$(VENV)/bin/jupyter lab $(ALLOW_ROOT) --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks

# JupyterLab in headless Chromium: opens 01 and a reduced 03, runs every cell, checks what shows
# (tests/browser/lab_check.py; needs /usr/bin/chromium, which .ci/run installs).
browser-test: $(BROWSER_STAMP) ## JupyterLab and the site in headless Chromium (needs /usr/bin/chromium)
	$(PY) tests/browser/lab_check.py
	$(PY) -m nbhelpers.jobs.site
	$(PY) tests/browser/site_check.py

# A static website of the committed reference run (reference/), readable offline, in build/site/.
site: $(STAMP) ## a static website of reference/ in build/site/, readable offline
	$(PY) -m nbhelpers.jobs.site

# The reference run: the series executed and published (reference/, figures/, README's Results).
reference: $(STAMP) ## run the series and publish it: reference/, figures/, the README's Results
	$(PY) -m nbhelpers.jobs.reference

# The README's job-array script (slurm/sweep-cpu.sbatch) on a single-node Slurm started on this
# machine (tests/slurm/run.sh: installs Debian's slurm and munge if missing, as root or with sudo;
# stops every daemon it started). A few minutes.
slurm-test: $(STAMP) ## the README's job-array script on a one-node Slurm started here (root or sudo)
	bash tests/slurm/run.sh

install: $(STAMP) ## .venv with the project, its test and site extras, at the locked versions

# JupyterLab, for make lab and the browser test.
$(LAB_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[$(EXTRAS),lab]'
	rm -f $(VENV)/.lab-*
	touch $@

# Playwright, for the browser test; it drives the system's Chromium and downloads no browser.
$(BROWSER_STAMP): $(LAB_STAMP)
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[$(EXTRAS),lab,browser]'
	rm -f $(VENV)/.browser-*
	touch $@

# pip takes every package at the version the lock names (-c: constraints, installing nothing by itself).
$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*
	touch $@

# The lock: the exact version of every package above (every extra included) for
# Linux and macOS, written by uv from PyPI (uv only writes it; pip installs). `make lock` adds what
# pyproject.toml gained and keeps every other pin; `make lock UPGRADE=1` takes the newest releases.
# It leaves out releases this machine's pip refuses (a constraint file in pip's config), then checks
# that each platform finds a file of every locked version (macOS: 14 or newer, Apple silicon).
LOCK_TOOLS := build/lock-tools
UV := $(LOCK_TOOLS)/bin/uv
UV_VERSION := 0.13.9
LOCK_PLATFORMS := x86_64-manylinux_2_28 aarch64-manylinux_2_28 aarch64-apple-darwin
PIP_CAP = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.constraint='\(.*\)'$$/\1/p")
lock: ## requirements.lock from PyPI after a change to pyproject.toml (UPGRADE=1: newest releases)
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)
	$(UV) pip compile pyproject.toml --all-extras --universal --python-version 3.11 \
	    $(addprefix --constraint ,$(PIP_CAP)) $(if $(UPGRADE),--upgrade) \
	    --custom-compile-command 'make lock' --output-file $(LOCK) >/dev/null
	for platform in $(LOCK_PLATFORMS); do \
	    MACOSX_DEPLOYMENT_TARGET=14.0 $(UV) pip compile pyproject.toml --all-extras --quiet \
	        --python-version 3.11 --python-platform $$platform --constraint $(LOCK) --output-file /dev/null \
	        || exit 1; \
	done

# Only what make and Python write, all of it ignored by git: never a tracked file (figures/demo/ is
# the reference run's), nor your runs/ or data/ (tests/test_makefile.py checks this in a clone).
clean: ## remove .venv/, build/ and Python's caches; runs/, data/ and every tracked file stay
	rm -rf $(VENV) build .pytest_cache nbhelpers.egg-info
	find nbhelpers tests benchmarks -name __pycache__ -type d -prune -exec rm -rf {} +
