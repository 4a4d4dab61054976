"""Run the whole notebook series with papermill: the main job, or the CPU demo.

    python -m nbhelpers.jobs.series                 # a GPU: the full run; no GPU: the demo
    python -m nbhelpers.jobs.series --size demo     # the CPU demo: all of CIFAR-10, a narrow model, minutes
    python -m nbhelpers.jobs.series --size full     # the seed's settings (60 epochs)
    python -m nbhelpers.jobs.series --size tiny --prepare-only build/nbval
                                               # parameterized copies at the tests' size, for nbval

The sizes are nbhelpers.config's.

Executed notebooks land in runs/<name>/notebooks/, the trained run in
runs/<name>/run/, and the figures in runs/<name>/figures/ (the reference run,
`python -m nbhelpers.jobs.reference`, writes the project's figures/ instead).
A missing CIFAR-10 is downloaded (download=True). Where that fails (no
network), the demo says so and runs on a small synthetic stand-in with class
names of its own; the full run needs the real data.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import papermill

from ..data import CIFAR10DataError, find_cifar10, write_synthetic_cifar10
from ..runs.folder import CHECKPOINT, is_finished
from ..runtime import PROJECT_ROOT, RUNS_DIR, shown_path
from ..config import SIZES, WHAT, pick_size

__all__ = ["NOTEBOOKS_DIR", "NOTEBOOKS", "COMPARE", "STUDY", "SCHEDULE", "ALL_NOTEBOOKS", "series_parameters",
           "demo_data_dir", "make_room", "run_series", "run_notebook", "main"]

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
# The series proper: data, model, training, evaluation of one run.
NOTEBOOKS = ("01_data_exploration", "02_model", "03_train", "04_evaluate")
# Runs side by side: its own job (`make compare`), since it trains a whole sweep;
# the tests run it too, on a sweep of two tiny runs.
COMPARE = "05_compare"
# What the branch mixing should have been: its own job too (`make study`), a sweep of mixings.
STUDY = "06_branch_mixing"
# The seed's question at the seed's step count, and the lr range test: its own job too (`make schedule`).
SCHEDULE = "07_schedule"
ALL_NOTEBOOKS = NOTEBOOKS + (COMPARE, STUDY, SCHEDULE)

def series_parameters(size: str, run_dir: Path, figures_dir: Path, data_dir: str = "") -> dict:
    """The papermill parameters of each notebook, for a named size (nbhelpers.config.SIZES).

    At the tests' size, 05, 06 and 07 are included, each on sweeps of its own: per-batch
    and per-epoch Ranger over two seeds; the seed's and softmax mixing over two; 07's
    range tests, AdamW at its own max_lr and the schedule sweep's Ranger runs, over two.
    """
    # Paths inside the project as relative ones: the executed notebooks name no folder of this machine.
    common = {"figures_dir": shown_path(figures_dir), "data_dir": shown_path(data_dir) if data_dir else ""}
    run_dir_parameter = shown_path(run_dir)
    parameters = {
        "01_data_exploration": dict(common),
        "02_model": dict(common, size=size),
        # A line per epoch: the executed copy holds text, not a progress widget's state.
        "03_train": dict(common, size=size, run_dir=run_dir_parameter, progress="log"),
        # On real data the CPU demo ablates on 2,000 of the 10,000 test images (the stand-in has 1,000)
        "04_evaluate": dict(common, run_dir=run_dir_parameter,
                            **({"ablation_images": 2000} if size == "demo" and not data_dir else {})),
    }
    if size == "tiny":
        parameters[COMPARE] = dict(common, size="tiny", seeds=2, only="ranger-batch,ranger-epoch",
                                   sweep_dir=shown_path(run_dir.parent / "sweep"))
        # Two mixings over two seeds: the paired intervals and their verdicts run too.
        parameters[STUDY] = dict(common, size="tiny", seeds=2, only="seed,softmax",
                                 sweep_dir=shown_path(run_dir.parent / "mixing-sweep"))
        # Short range tests; Ranger per batch and per epoch over two seeds, trained here at tiny.
        parameters[SCHEDULE] = dict(common, size="tiny", seeds=2, schedule_only="ranger-batch,ranger-epoch",
                                    lr_size="tiny", lr_seeds=2, range_steps=40, train_long=True,
                                    sweeps_dir=shown_path(run_dir.parent / "sweeps"))
    return parameters


def demo_data_dir(scratch: Path) -> str:
    """"" when CIFAR-10 is found or can be downloaded; else a synthetic stand-in, said out loud."""
    try:
        find_cifar10(download=True)
        return ""
    except CIFAR10DataError as exc:
        print(f"{exc}\n\n*** No CIFAR-10 here, and none could be downloaded: this demo runs on a "
              f"SYNTHETIC stand-in (striped images with class names of their own, not CIFAR-10) "
              f"written to {scratch}. Its numbers say nothing about CIFAR-10. ***\n", flush=True)
        write_synthetic_cifar10(scratch, train_per_class=1000, test_per_class=100)
        return str(scratch)


def make_room(base: Path) -> str:
    """Before a series into `base`: "resume" an interrupted run there, or move an earlier series aside ("new").

    Nothing of an earlier series is deleted: an interrupted run goes on from its last
    epoch; a finished (or failed before its first epoch) series moves to <base>-<date-time>.
    """
    run_dir = base / "run"
    if (run_dir / CHECKPOINT).is_file() and not is_finished(run_dir):
        print(f"{run_dir} was interrupted: resuming it from its last finished epoch.", flush=True)
        return "resume"
    if base.exists():
        aside = base.with_name(f"{base.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        base.rename(aside)
        print(f"The previous series in {base} was moved to {aside}.", flush=True)
    return "new"


def run_series(size: str, name: str | None = None, prepare_only: Path | None = None,
               figures: Path | None = None) -> Path:
    """Run (or with prepare_only, only parameterize) the series into runs/<name>/.

    Its figures go to `figures` (default: runs/<name>/figures; only the reference
    run, nbhelpers.jobs.reference, writes the project's figures/).
    """
    name = name or ("demo" if size == "demo" else f"{size}-{time.strftime('%Y%m%d-%H%M%S')}")
    base = prepare_only or RUNS_DIR / name
    figures = figures or base / "figures"
    resume = not prepare_only and make_room(base) == "resume"
    data_dir = demo_data_dir(base / "synthetic-data") if size != "full" else ""
    parameters = series_parameters(size, base / "run", figures, data_dir)
    if resume:
        parameters["03_train"]["resume"] = True
    out_dir = base if prepare_only else base / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    for notebook in parameters:
        print(f"--- {notebook} ({'prepare' if prepare_only else 'run'}) {parameters[notebook]}", flush=True)
        run_notebook(notebook, out_dir / f"{notebook}.ipynb", parameters[notebook],
                     prepare_only=prepare_only is not None)
    if not prepare_only:
        print(f"Executed notebooks: {out_dir}\nRun folder: {base / 'run'}\nFigures: {figures}")
    return out_dir


def run_notebook(notebook: str, output: Path, parameters: dict, prepare_only: bool = False) -> None:
    """Execute notebooks/<notebook>.ipynb into `output` with `parameters`, its output logged line by line.

    The kernel works in notebooks/, as under JupyterLab; with prepare_only the
    copy is only parameterized (for nbval), not run.
    """
    with warnings.catch_warnings():  # papermill's own chatter about kernel names
        warnings.simplefilter("ignore")
        papermill.execute_notebook(
            NOTEBOOKS_DIR / f"{notebook}.ipynb", output, parameters=parameters, kernel_name="python3",
            cwd=str(NOTEBOOKS_DIR), prepare_only=prepare_only, log_output=True, progress_bar=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="auto", choices=("auto",) + tuple(SIZES),
                        help="auto (the default): full on a CUDA GPU, demo elsewhere; "
                             + "; ".join(f"{name}: {WHAT[name]}" for name in SIZES))
    parser.add_argument("--name", help="folder name under runs/ (default: demo, or the date and time)")
    parser.add_argument("--prepare-only", type=Path, metavar="DIR",
                        help="only write parameterized notebooks to DIR (for nbval)")
    args = parser.parse_args(argv)
    # papermill logs the notebooks' output (one line per epoch) at INFO.
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logging.getLogger("papermill").setLevel(logging.INFO)
    run_series(pick_size(args.size), args.name, args.prepare_only)


if __name__ == "__main__":
    sys.exit(main())
