"""Run the whole notebook series with papermill: the main job, or a quick demo.

    python -m nbhelpers.series            # a GPU: the full run; no GPU: the demo
    python -m nbhelpers.series --demo     # reduced settings, minutes on a CPU
    python -m nbhelpers.series --full     # the seed's settings (60 epochs)
    python -m nbhelpers.series --demo --prepare-only build/nbval
                                          # parameterized copies, for pytest --nbval-lax

Executed notebooks land in runs/<name>/notebooks/, the trained run in
runs/<name>/run/, and the figures in figures/ (the demo's in figures/demo/).
Without any CIFAR-10 copy the demo writes a small synthetic one, so that the
series runs anywhere; the full run needs the real data.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path

import papermill
import torch

from .data import CIFAR10DataError, find_cifar10, write_synthetic_cifar10
from .runtime import PROJECT_ROOT, RUNS_DIR

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS = ("01_data_exploration", "02_model", "03_train", "04_evaluate")

# Reduced settings: a narrow model, a sixth of the data, three epochs
# (about a minute of training on two CPU cores).
DEMO_TRAINING = dict(num_epochs=3, backbone_out_channels=32, hidden_size=64,
                     train_subset=8000, test_subset=1000)


def series_parameters(demo: bool, run_dir: Path, figures_dir: Path, data_dir: str = "") -> dict:
    """The papermill parameters of each notebook."""
    shared = {"figures_dir": str(figures_dir), "data_dir": data_dir}
    return {
        "01_data_exploration": dict(shared),
        "02_model": dict(shared, **({"backbone_out_channels": 64} if demo else {})),
        "03_train": dict(shared, run_dir=str(run_dir), **(DEMO_TRAINING if demo else {})),
        "04_evaluate": dict(shared, run_dir=str(run_dir)),
    }


def demo_data_dir(scratch: Path) -> str:
    """"" when CIFAR-10 is where the loader looks; else a small synthetic copy."""
    try:
        find_cifar10()
        return ""
    except CIFAR10DataError:
        print(f"No CIFAR-10 found: the demo uses a small synthetic copy in {scratch}. "
              "For real images see data/README.md.", flush=True)
        write_synthetic_cifar10(scratch, train_per_class=1000, test_per_class=100)
        return str(scratch)


def run_series(demo: bool, name: str | None = None, prepare_only: Path | None = None) -> Path:
    name = name or ("demo" if demo else time.strftime("%Y%m%d-%H%M%S"))
    base = prepare_only or RUNS_DIR / name
    figures = (base / "figures") if prepare_only else \
        (PROJECT_ROOT / "figures" / "demo" if demo else PROJECT_ROOT / "figures")
    if demo and not prepare_only and name == "demo" and base.exists():
        shutil.rmtree(base)  # a demo is cheap to redo: replace the last one
    if not prepare_only and (base / "run").exists():
        raise SystemExit(f"{base / 'run'} exists already: remove it, or pass --name.")
    data_dir = demo_data_dir(base / "synthetic-data") if demo else ""
    parameters = series_parameters(demo, base / "run", figures, data_dir)
    out_dir = base if prepare_only else base / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    for notebook in NOTEBOOKS:
        print(f"--- {notebook} ({'prepare' if prepare_only else 'run'}) {parameters[notebook]}", flush=True)
        with warnings.catch_warnings():  # papermill's own chatter about kernel names
            warnings.simplefilter("ignore")
            papermill.execute_notebook(
                NOTEBOOKS_DIR / f"{notebook}.ipynb", out_dir / f"{notebook}.ipynb",
                parameters=parameters[notebook], kernel_name="python3", cwd=str(NOTEBOOKS_DIR),
                prepare_only=prepare_only is not None, log_output=True, progress_bar=False)
    if not prepare_only:
        print(f"Executed notebooks: {out_dir}\nRun folder: {base / 'run'}\nFigures: {figures}")
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--demo", action="store_true", help="reduced settings (the default without a GPU)")
    mode.add_argument("--full", action="store_true", help="the seed's settings (the default with a GPU)")
    parser.add_argument("--name", help="folder name under runs/ (default: demo, or the date and time)")
    parser.add_argument("--prepare-only", type=Path, metavar="DIR",
                        help="only write parameterized notebooks to DIR (for nbval)")
    args = parser.parse_args(argv)
    # papermill logs the notebooks' output (one line per epoch) at INFO.
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logging.getLogger("papermill").setLevel(logging.INFO)
    demo = args.demo or (not args.full and not torch.cuda.is_available())
    run_series(demo, args.name, args.prepare_only)


if __name__ == "__main__":
    sys.exit(main())
