"""The published reference run: the series executed once, its notebooks and figures committed.

    python -m nbhelpers.jobs.reference                 # the size "auto" picks; its name says which
    python -m nbhelpers.jobs.reference --name cpu-demo # explicitly

One command does it all: it runs the series (01-04 at the size given; 05, on
the sweeps optimizers and parts, and 06 at the sweeps' CPU size, `small`, as
`make compare` and `make study` do; 07 on the sweep schedule as far as it is
trained), then copies what a reader should see without running anything into
the repository:

    reference/<name>/*.ipynb       the executed notebooks, outputs included
    reference/<name>/results.json  the numbers of the run, for the tables below
    reference/records/<sweep>-<size>/<run>/  each sweep run's records (no weights):
                                   05-07 compare from them, training only what is missing
    figures/ (a full run) or figures/<size>/   the PNGs the notebooks saved
    README.md                      its Results table, rewritten between two markers

`make site` turns reference/ into a static website (nbhelpers.jobs.site).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import nbformat

from ..runs.folder import read_config, read_history
from ..runtime import PROJECT_ROOT, shown_path
from ..config import SIZES, pick_size

__all__ = ["REFERENCE_DIR", "RECORDS_DIR", "README", "RESULTS_START", "RESULTS_END", "SWEEP_NOTEBOOKS", "SEED_ROW",
           "figures_dir_for", "run_reference", "publish", "summarize", "reference_results",
           "results_table", "published_sweeps", "sweeps_table", "write_readme_results", "main"]

REFERENCE_DIR = PROJECT_ROOT / "reference"
README = PROJECT_ROOT / "README.md"
RESULTS_START, RESULTS_END = "<!-- results: written by python -m nbhelpers.jobs.reference -->", "<!-- results end -->"
# The sweeps' notebooks run at the CPU sweep size in every reference run (at full size a sweep
# is many 60-epoch runs, and on a GPU `small` takes seconds a run): 05 on two sweeps and 06 on
# the mixings, 5 seeds each; 07 on the sweep schedule at its CPU size, long, which it does not
# train (hours: `make schedule` does, resumably), and on AdamW at its own max_lr at small.
# Every sweep compares from, and publishes to, RECORDS_DIR: what is published is not trained again.
# Relative to the project root (as every path the series injects), wherever the project lies.
RECORDS_DIR = "reference/records"
SWEEP_NOTEBOOKS = {"05_compare": ("05_compare", {"sweep": "optimizers", "seeds": 5, "size": "small"}),
                   "05_compare-parts": ("05_compare", {"sweep": "parts", "seeds": 5, "size": "small"}),
                   "06_branch_mixing": ("06_branch_mixing", {"seeds": 5, "size": "small"}),
                   "07_schedule": ("07_schedule", {"seeds": 3, "lr_seeds": 5, "lr_size": "small",
                                                   "train_long": False})}
# The seed's own result, as its notebook printed it (not a run of this project).
SEED_ROW = {"name": "the seed (its Colab notebook)", "device": "a Colab GPU (not recorded)",
            "epochs": 60, "final_test_acc": 88.39, "best_test_acc": 89.21, "best_epoch": 55,
            "seconds_per_epoch": None, "series_seconds": None}


def figures_dir_for(size: str) -> Path:
    """Where a reference run of `size` puts its figures: figures/ for full, figures/<size>/ otherwise."""
    return PROJECT_ROOT / "figures" / ("" if size == "full" else size)


def run_reference(name: str, size: str) -> Path:
    """Run everything, then publish it (see the module's docstring). Returns reference/<name>/."""
    from .series import run_notebook, run_series  # papermill: only when running
    figures = figures_dir_for(size)
    figures.mkdir(parents=True, exist_ok=True)
    for old in figures.glob("0*.png"):
        old.unlink()  # the figures are this run's, none left over from an earlier one
    executed = run_series(size, f"reference-{name}", figures=figures)
    base = executed.parent
    for output, (notebook, parameters) in SWEEP_NOTEBOOKS.items():
        parameters = dict(parameters, records_dir=RECORDS_DIR, figures_dir=shown_path(figures),
                          data_dir=_data_dir_of(base))
        print(f"--- {notebook} -> {output}.ipynb {parameters}", flush=True)
        run_notebook(notebook, executed / f"{output}.ipynb", parameters)
    return publish(name, size, base)


def _data_dir_of(base: Path) -> str:
    """The synthetic stand-in's folder where the series had to use one, else "" (CIFAR-10 as found)."""
    stand_in = base / "synthetic-data"
    return shown_path(stand_in) if stand_in.is_dir() else ""


def publish(name: str, size: str, base: Path) -> Path:
    """Copy runs/reference-<name>/'s executed notebooks into reference/<name>/ with results.json; update the README."""
    target = REFERENCE_DIR / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for path in sorted((base / "notebooks").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        notebook.metadata.pop("widgets", None)  # widget state: nothing a reader can see
        papermill = notebook.metadata.get("papermill", {})
        for key in ("input_path", "output_path"):  # where it ran, as the series shows a path
            if papermill.get(key):
                papermill[key] = shown_path(papermill[key])
        nbformat.write(notebook, target / path.name)
    results = summarize(name, size, base)
    (target / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_readme_results()
    print(f"reference/{name}: {len(list(target.glob('*.ipynb')))} notebooks, "
          f"{sum(p.stat().st_size for p in target.iterdir()) / 2**20:.1f} MiB")
    return target


def summarize(name: str, size: str, base: Path) -> dict[str, Any]:
    """The numbers of a reference run, from its run folder and its executed notebooks."""
    run = base / "run"
    info, history = read_config(run), read_history(run)
    best = max(history, key=lambda row: row["test_acc"])
    durations = [nbformat.read(path, as_version=4).metadata.get("papermill", {}).get("duration") or 0
                 for path in sorted((base / "notebooks").glob("0[1-4]_*.ipynb"))]
    return {"name": name, "size": size, "device": info["device"], "torch": info["torch"],
            "commit": info.get("commit"), "date": time.strftime("%Y-%m-%d"),
            "data": "the official CIFAR-10" if info["data"]["official"] else
                    ("a SYNTHETIC stand-in, not CIFAR-10" if info["data"]["synthetic"]
                     else "a re-encoded (unofficial) copy of CIFAR-10"),
            "epochs": len(history), "final_test_acc": history[-1]["test_acc"],
            "best_test_acc": best["test_acc"], "best_epoch": int(best["epoch"]),
            "seconds_per_epoch": sum(row["seconds"] for row in history) / len(history),
            "series_seconds": sum(durations)}


# --------------------------------------------------------------------------
# The Results table: README.md's and the site's
# --------------------------------------------------------------------------

def reference_results() -> list[dict[str, Any]]:
    """results.json of every reference run under reference/, by name."""
    return [json.loads(path.read_text()) for path in sorted(REFERENCE_DIR.glob("*/results.json"))]


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def results_table(results: list[dict[str, Any]], link: str = "reference/{name}/") -> str:
    """A Markdown table: each reference run, then the seed's published result beside them."""
    lines = ["| run | device | epochs | final test accuracy | best (epoch) | time per epoch | the series (01-04) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in results + [SEED_ROW]:
        title = row["name"] if row is SEED_ROW else \
            f"[{row['name']}]({link.format(name=row['name'])}) ({row['size']} size; {row['data']})"
        lines.append(f"| {title} | {row['device']} | {row['epochs']} | {row['final_test_acc']:.2f}% | "
                     f"{row['best_test_acc']:.2f}% ({row['best_epoch']}) | {_minutes(row['seconds_per_epoch'])} | "
                     f"{_minutes(row['series_seconds'])} |")
    return "\n".join(lines)


def published_sweeps(records: Path | None = None) -> list[dict[str, Any]]:
    """Each published sweep (records/<sweep>-<size>/, default RECORDS_DIR): its runs, epochs, devices, time."""
    records = PROJECT_ROOT / RECORDS_DIR if records is None else records
    sweeps = []
    for folder in sorted(path for path in records.glob("*") if path.is_dir()):
        runs = [run for run in sorted(folder.iterdir()) if (run / "config.json").is_file()]
        if not runs:
            continue
        histories = [read_history(run) for run in runs]
        seconds = [sum(row["seconds"] for row in history) for history in histories]
        sweeps.append({"sweep": folder.name, "runs": len(runs),
                       "epochs": sorted({len(history) for history in histories}),
                       "devices": sorted({read_config(run)["device"] for run in runs}),
                       "seconds": seconds})
    return sweeps


def sweeps_table(sweeps: list[dict[str, Any]]) -> str:
    """A Markdown table of the published sweeps and what their runs cost: training and evaluation, from history.csv."""
    lines = ["| published sweep (records) | runs | epochs a run | training a run, mean (range) | all runs | device |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for sweep in sweeps:
        seconds = sweep["seconds"]
        lines.append(f"| {sweep['sweep']} | {sweep['runs']} | {', '.join(map(str, sweep['epochs']))} | "
                     f"{_minutes(sum(seconds) / len(seconds))} ({_minutes(min(seconds))} to "
                     f"{_minutes(max(seconds))}) | {_minutes(sum(seconds))} | {'; '.join(sweep['devices'])} |")
    return "\n".join(lines)


def write_readme_results(readme: Path = README, records: Path | None = None) -> None:
    """Replace what lies between the README's Results markers by the tables of reference/ and its records."""
    text = readme.read_text()
    if RESULTS_START not in text or RESULTS_END not in text:
        raise SystemExit(f"{readme} has no Results markers ({RESULTS_START} ... {RESULTS_END})")
    if RESULTS_END not in text.split(RESULTS_START, 1)[1]:  # the end marker only before the start
        raise SystemExit(f"{readme}'s Results markers are in the wrong order: {RESULTS_START} must "
                         f"come before {RESULTS_END}")
    head, rest = text.split(RESULTS_START, 1)
    _, tail = rest.split(RESULTS_END, 1)
    sweeps = published_sweeps(records)
    tables = results_table(reference_results()) + (f"\n\n{sweeps_table(sweeps)}" if sweeps else "")
    readme.write_text(f"{head}{RESULTS_START}\n{tables}\n{RESULTS_END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nbhelpers.jobs.reference", description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="auto", choices=("auto",) + tuple(SIZES),
                        help="auto: full on a CUDA GPU, demo elsewhere")
    parser.add_argument("--name", help="reference/<name>/ (default: gpu-full or cpu-demo, by the size)")
    parser.add_argument("--readme-only", action="store_true",
                        help="only rewrite the README's Results table from reference/*/results.json")
    args = parser.parse_args(argv)
    # papermill logs the notebooks' output (one line per epoch) at INFO, as the series does.
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logging.getLogger("papermill").setLevel(logging.INFO)
    if args.readme_only:
        write_readme_results()
        return
    size = pick_size(args.size)
    name = args.name or (f"gpu-{size}" if size == "full" else f"cpu-{size}")
    run_reference(name, size)


if __name__ == "__main__":
    sys.exit(main())
