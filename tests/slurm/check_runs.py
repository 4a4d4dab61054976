"""The checks of tests/slurm/run.sh on what a sweep's tasks left in their folders.

One command per step of the test (each loads torch once: seconds on a busy machine).
Each prints one line per failed check and exits 1 if there was any:

    check_runs.py array SWEEP SIZE FOLDER THREADS
        every entry finished, started once, trained on THREADS torch threads, in the
        folders the README describes
    check_runs.py resumed SWEEP SIZE REFERENCE FOLDER...
        SWEEP's only entry: finished once in REFERENCE; in each FOLDER started once and
        resumed once, to REFERENCE's numbers, on the threads it began with
    check_runs.py duplicate SWEEP SIZE FOLDER REFERENCE
        SWEEP's only entry, submitted twice into FOLDER: started once, to REFERENCE's numbers
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import fields

from nbhelpers.config import TrainConfig, make_config
from nbhelpers.runs.folder import CHECKPOINT, CONFIG, HISTORY, WEIGHTS
from nbhelpers.jobs.sweep import Entry, make_sweep

# papermill.log starts each papermill call with "$ <the command>" (nbhelpers.jobs.sweep.run_entry).
COMMAND_PREFIX = "$ "
RESUME = "-p resume True"


def papermill_calls(entry: Entry) -> list[str]:
    if not entry.log.is_file():
        return []
    return [line for line in entry.log.read_text(errors="replace").splitlines()
            if line.startswith(COMMAND_PREFIX)]


def history_rows(entry: Entry) -> list[dict[str, str]]:
    """history.csv as written (equal numbers are equal text), without the seconds column."""
    with open(entry.run_dir / HISTORY, newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def recorded_threads(entry: Entry):
    return json.loads((entry.run_dir / CONFIG).read_text()).get("threads")


def only_entry(sweep: str, size: str, folder: str) -> Entry:
    [entry] = make_sweep(sweep, size, folder=folder).entries
    return entry


def finished(entry: Entry) -> list[str]:
    """The README's folders, a finished notebook, every epoch in history.csv."""
    missing = [name for name in ("03_train.ipynb", "papermill.log") if not (entry.folder / name).is_file()]
    missing += [f"run/{name}" for name in (CONFIG, HISTORY, CHECKPOINT, WEIGHTS)
                if not (entry.run_dir / name).is_file()]
    if missing:
        return [f"{entry.name}: no {', '.join(missing)} in {entry.folder}"]
    problems = []
    if entry.state() != "finished":
        problems.append(f"{entry.name}: state {entry.state()!r}, not finished")
    epochs, planned = len(history_rows(entry)), planned_epochs(entry)
    if epochs != planned:
        problems.append(f"{entry.name}: {epochs} epochs in history.csv, not {planned}")
    return problems


def planned_epochs(entry: Entry) -> int:
    """The entry's num_epochs: its own, or its size's (nbhelpers.config.SIZES)."""
    training = {f.name for f in fields(TrainConfig)}
    return make_config(**{k: v for k, v in entry.parameters.items() if k in training}).num_epochs


def started(entry: Entry, resumes: int) -> list[str]:
    """papermill.log shows one start, then `resumes` resumes."""
    calls = ["resume" if RESUME in call else "start" for call in papermill_calls(entry)]
    expected = ["start"] + ["resume"] * resumes
    if calls == expected:
        return []
    return [f"{entry.name} in {entry.folder}: papermill.log shows {', '.join(calls) or 'no call'}, "
            f"not {', '.join(expected)}"]


def same_history(entry: Entry, reference: Entry) -> list[str]:
    mine, theirs = history_rows(entry), history_rows(reference)
    if mine == theirs:
        return []
    differ = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), None)
    first = (f"{len(mine)} epochs against {len(theirs)}" if differ is None
             else f"epoch {differ + 1}: {mine[differ]} against {theirs[differ]}")
    return [f"{entry.folder} and the uninterrupted run {reference.folder} differ: {first}"]


def check_array(sweep: str, size: str, folder: str, threads: str) -> list[str]:
    problems = []
    for entry in make_sweep(sweep, size, folder=folder).entries:
        done = finished(entry)
        problems += done
        if not done:
            problems += started(entry, resumes=0)
            if str(recorded_threads(entry)) != threads:
                problems.append(f"{entry.name}: trained on {recorded_threads(entry)} torch threads, "
                                f"not the task's {threads} CPUs")
    return problems


def check_resumed(sweep: str, size: str, reference_folder: str, *folders: str) -> list[str]:
    reference = only_entry(sweep, size, reference_folder)
    problems = finished(reference) or started(reference, resumes=0)
    if problems:
        return problems
    for folder in folders:
        entry = only_entry(sweep, size, folder)
        done = finished(entry)
        problems += done or started(entry, resumes=1) + same_history(entry, reference)
        if not done and recorded_threads(entry) != recorded_threads(reference):
            problems.append(f"{entry.folder}: config.json records {recorded_threads(entry)} threads after "
                            f"the resume, not the {recorded_threads(reference)} it began with")
    return problems


def check_duplicate(sweep: str, size: str, folder: str, reference_folder: str) -> list[str]:
    entry, reference = only_entry(sweep, size, folder), only_entry(sweep, size, reference_folder)
    return finished(entry) or started(entry, resumes=0) + same_history(entry, reference)


CHECKS = {"array": check_array, "resumed": check_resumed, "duplicate": check_duplicate}


def main(argv: list[str]) -> int:
    command, *args = argv
    problems = CHECKS[command](*args)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
