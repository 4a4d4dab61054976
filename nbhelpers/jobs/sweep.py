"""A sweep: the training notebook run once per parameter set, each into its own folder; resumable.

    python -m nbhelpers.jobs.sweep optimizers              # run the sweep (or what is left of it)
    python -m nbhelpers.jobs.sweep optimizers --list       # its runs, numbered, and how far each got
    python -m nbhelpers.jobs.sweep optimizers --commands   # the papermill command of each run
    python -m nbhelpers.jobs.sweep optimizers --index 3    # only run 3 (e.g. a cluster job array's task)
    python -m nbhelpers.jobs.sweep optimizers --records reference/records   # and publish each run's records
    python -m nbhelpers.jobs.sweep schedule --workers 2    # on a CPU: two runs side by side, a core each

Each run is one ordinary papermill execution of notebooks/03_train.ipynb:

    runs/<sweep>-<size>/<run>/03_train.ipynb   the executed notebook
    runs/<sweep>-<size>/<run>/run/             its run folder (config.json, history.csv, ...)
    runs/<sweep>-<size>/<run>/papermill.log    what papermill printed, one line per epoch

Running the sweep again skips finished runs and resumes interrupted ones from their
last checkpoint (-p resume True), so it is safe to stop and start. Runs go one after
another; with several GPUs, one per GPU at a time (CUDA_VISIBLE_DEVICES); on a CPU
with --workers N, N side by side, each with its share of the cores (OMP_NUM_THREADS).

With --records DIR, each finished run's records (config.json, history.csv,
steps.csv, branch_weights.csv: no weights) are copied to DIR/<sweep>-<size>/<run>/,
and a run whose records are there is not trained again: committed, they carry
a sweep across machines and sessions, and notebooks 05 and 06 compare from them
in seconds (their parameter records_dir).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import (AUTO, NOT_CHANGING_THE_NUMBERS, SIZES, ConfigError, TrainConfig, check_value,
                      make_config, pick_size, unknown_names)
from ..errors import ExplainedError
from ..runs.load import load_runs
from ..runs.lock import FolderInUse, folder_lock, holder_of, is_locked
from ..runs.folder import (CHECKPOINT, CONFIG, copy_records, is_finished, read_config,
                           settings_that_differ, stopped_before_first_epoch)
from ..runtime import PROJECT_ROOT, RUNS_DIR, project_path
from .series import NOTEBOOKS_DIR

__all__ = ["TRAINING_NOTEBOOK", "grid", "SWEEPS", "SweepError", "RUN_NAME", "SET_BY_THE_SWEEP",
           "SWEEPABLE", "Entry", "Sweep", "make_sweep", "run_entry", "run_sweep", "publish_finished", "main"]

TRAINING_NOTEBOOK = NOTEBOOKS_DIR / "03_train.ipynb"

def grid(**choices: tuple) -> dict[str, dict[str, Any]]:
    """Every combination of the choices, named by its values: grid(a=(1, 2), b=("x",)) -> "1-x", "2-x"."""
    names = list(choices)
    return {"-".join(map(str, values)): dict(zip(names, values))
            for values in itertools.product(*choices.values())}


# The sweeps `python -m nbhelpers.jobs.sweep NAME` knows. A JSON file of {run name: parameters} works too.
SWEEPS: dict[str, dict[str, dict[str, Any]]] = {
    # Ranger against AdamW and SGD, each with the schedule stepped per batch and per epoch (the seed's way)
    "optimizers": grid(optimizer=("ranger", "adamw", "sgd", "radam"), scheduler_step=("batch", "epoch")),
    # Ranger against itself with one part switched off
    "parts": grid(optimizer=("ranger", "ranger_no_lookahead", "ranger_no_gc", "radam")),
    # The seed's branch mixing against normalized ones and none (notebook 06)
    "mixing": grid(mixing=("seed", "softmax", "sigmoid", "equal")),
    # The seed's question at the seed's step count: was stepping per epoch harmful over 23,460
    # steps, for Ranger and for AdamW (which no r_t damps)? On a CPU at the size long (CPU_SIZE).
    "schedule": grid(optimizer=("ranger", "adamw"), scheduler_step=("batch", "epoch")),
}

# What "auto" means on a CPU for a sweep whose question needs another size than small; on a
# CUDA GPU "auto" is full for every sweep (the seed's own steps at the seed's width).
CPU_SIZE = {"schedule": "long"}


class SweepError(ExplainedError, RuntimeError):
    """A sweep cannot go on as asked (a folder holds another run, or a run failed)."""


# A run's name becomes its folder's name: one plain path component, never "..", "/x" or "a/b".
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}")
# The sweep itself says where the data and the runs are and how they report: a run may not.
# That is every parameter that does not change a run's numbers but `compile`, the run's own choice.
SET_BY_THE_SWEEP = NOT_CHANGING_THE_NUMBERS - {"compile"}
SWEEPABLE = [f.name for f in fields(TrainConfig) if f.name not in SET_BY_THE_SWEEP]


@dataclass
class Entry:
    """One run of a sweep: its name, its notebook parameters and its folder."""

    name: str
    parameters: dict[str, Any]
    folder: Path
    record: Path | None = None   # where its records are published (the sweep's --records), if anywhere

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    @property
    def notebook(self) -> Path:
        return self.folder / TRAINING_NOTEBOOK.name

    @property
    def log(self) -> Path:
        return self.folder / "papermill.log"

    def state(self) -> str:
        """'running' (in another process, now), or else how far it got (`stage`)."""
        return "running" if is_locked(self.folder) or is_locked(self.run_dir) else self.stage()

    def stage(self) -> str:
        """'published' (its records are), 'finished', 'interrupted' (a checkpoint to resume from) or 'new'."""
        if self.published():
            return "published"
        if is_finished(self.run_dir) and _executed_without_error(self.notebook):
            return "finished"
        if (self.run_dir / CHECKPOINT).is_file():
            return "interrupted"
        return "new"

    def command(self, resume: bool = False) -> list[str]:
        """The papermill call that runs (or with resume=True, continues) this entry."""
        parameters = dict(self.parameters, resume=True) if resume else self.parameters
        # Run from the project's root (relative paths such as run_dir start there),
        # the way a user or a cluster job types it.
        command = [sys.executable, "-m", "papermill", _relative(TRAINING_NOTEBOOK),
                   _relative(self.notebook), "--log-output", "--no-progress-bar"]
        for name, value in parameters.items():
            command += ["-p", name, str(value)]
        return command

    def published(self) -> bool:
        """Its records are published for every planned epoch, with this entry's settings."""
        if self.record is None or not (self.record / CONFIG).is_file():
            return False
        self.check_matches_its_folder(self.record)
        return load_runs([self.record])[0].finished

    def results_folder(self) -> Path | None:
        """Where a comparison reads this run: its published records, else its own folder once finished."""
        stage = self.stage()
        return self.record if stage == "published" else self.run_dir if stage == "finished" else None

    def publish(self) -> Path | None:
        """Copy its finished run's records to `record` (if the sweep publishes); returns where, or None."""
        if self.record is None or not is_finished(self.run_dir):
            return None
        return copy_records(self.run_dir, self.record)

    def check_matches_its_folder(self, folder: Path | None = None) -> None:
        """Refuse to count a finished run (or its published records, `folder`) whose configuration is not this entry's."""
        folder = self.run_dir if folder is None else folder
        if not (folder / CONFIG).is_file():
            return
        saved = read_config(folder).get("config", {})
        training = {f.name for f in fields(TrainConfig)}  # the rest are 03's own (figures_dir)
        wanted = make_config(**{k: v for k, v in self.parameters.items() if k in training}).to_dict()
        differ = [f"{k}={saved.get(k)!r} there, {wanted[k]!r} here"
                  for k in settings_that_differ(saved, wanted)]
        if differ:
            raise SweepError(f"{folder} holds a run with other settings ({'; '.join(differ)}). "
                             "Remove that folder, or give the sweep another --folder (--records).")


@dataclass
class Sweep:
    name: str                    # <sweep>-<size>, the name of its folder by default
    entries: list[Entry] = field(default_factory=list)
    sweep: str = "sweep"         # the sweep alone: "optimizers", or a JSON file's stem (for figure names)
    size: str = ""               # the size every run trains at, "auto" resolved: "small", "long", ...


def make_sweep(runs: str | dict[str, dict[str, Any]] = "optimizers", size: str = "auto",
               data_dir: str = "", folder: str | Path | None = None,
               only: list[str] | tuple[str, ...] = (), seeds: int = 1,
               records: str | Path | None = None, name: str | None = None) -> Sweep:
    """The sweep named `runs` (a key of SWEEPS, a JSON file, or a dict {run name: parameters}).

    Every run gets the named `size` (nbhelpers.config.SIZES; "auto": full on a GPU, on a
    CPU small or the sweep's CPU_SIZE), the same data and seed, and its own folder under
    `folder` (default runs/<sweep>-<size>/). `only` keeps the named runs (a list, or names separated
    by commas). `seeds=N` repeats every run with N seeds (rand_seed, rand_seed + 1, ...):
    the first keeps the run's name, the others are named <run>-seed2, <run>-seed3, ...
    `records` (a folder, e.g. reference/records): each run's records are published in
    records/<sweep>-<size>/<run>/, and a run published there is not trained again.
    `name` names a sweep given as a dict (its folders' names; default "sweep").
    """
    named, choices = _named_runs(runs)
    name = _check_sweep_name(name) if name is not None else named
    size = _pick_size(size, name)
    if isinstance(only, str):  # papermill's -p only a,b passes one string
        only = [run_name.strip() for run_name in only.split(",") if run_name.strip()]
    unknown = sorted(set(only) - set(choices))
    if unknown:
        raise SweepError(f"{name} has no run {', '.join(unknown)}; its runs: {', '.join(choices)}")
    root = project_path(folder) if folder else RUNS_DIR / f"{name}-{size}"  # relative: from the project
    root = root if root.is_absolute() else PROJECT_ROOT / root
    seeds = _check_seeds(seeds)
    records_root = project_path(records) / f"{name}-{size}" if records else None
    entries = []
    for run_name, parameters in choices.items():
        if only and run_name not in only:
            continue
        first_seed = _first_seed(run_name, size, parameters, seeds)
        for k in range(seeds):
            seeded = run_name if k == 0 else f"{run_name}-seed{k + 1}"
            entry_folder = root / seeded
            entries.append(Entry(seeded, {"size": size, **parameters, "rand_seed": first_seed + k,
                                          "data_dir": data_dir, "run_dir": _relative(entry_folder / "run"),
                                          "figures_dir": "", "progress": "log"}, entry_folder,
                                 records_root / seeded if records_root else None))
    _refuse_shared_folders(entries)
    return Sweep(f"{name}-{size}", entries, name, size)


def _first_seed(run_name: str, size: str, parameters: dict[str, Any], seeds: int) -> int:
    """The run's rand_seed, its whole configuration and its last seed checked first:
    a bad value stops the sweep here, in one line, not when that run's turn comes."""
    try:
        first = make_config(size=size, **parameters).rand_seed
    except ConfigError as error:
        raise SweepError(f"{run_name}: {error}") from None
    try:
        check_value("rand_seed", first + seeds - 1)
    except ConfigError as error:
        raise SweepError(f"{run_name}: rand_seed {first} with {seeds} seeds goes up to "
                         f"{first + seeds - 1}, past the largest seed ({error})") from None
    return first


def _check_sweep_name(name: Any) -> str:
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise SweepError(f"name={name!r} is not allowed: a sweep's name becomes a folder's name, so it "
                         "must be 1 to 100 letters, digits, '.', '_', '+', '=' or '-'")
    return name


def _refuse_shared_folders(entries: list[Entry]) -> None:
    """Two entries of one name would share a folder: runs "a" and "a-seed2" with two seeds."""
    names = [entry.name for entry in entries]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise SweepError(f"two entries would share the folder of {', '.join(twice)}: with seeds, a "
                         "run's extra seeds are named <run>-seed2, <run>-seed3, ...; rename the run "
                         "that already has such a name.")


def _check_seeds(seeds: Any) -> int:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= 100:
        raise SweepError(f"seeds={seeds!r} is not allowed: seeds must be an integer from 1 to 100")
    return seeds


def run_entry(entry: Entry, env: dict[str, str] | None = None, echo=print) -> str:
    """Run one entry unless it is finished; resume it if interrupted. Returns what it did.

    The entry's folder is locked meanwhile, so a second copy of the same entry (the
    same sweep submitted twice, or 05 while a job array runs) touches nothing and
    says so: "running".
    """
    try:
        with folder_lock(entry.folder, "sweep entry"):
            if is_locked(entry.run_dir):  # a run started by hand in the entry's run folder
                raise FolderInUse("", holder_of(entry.run_dir))
            return _run_locked_entry(entry, env, echo)
    except FolderInUse as busy:
        echo(f"{entry.name}: running elsewhere ({busy.holder}), skipped")
        return "running"
    except SweepError:
        raise
    except ExplainedError as error:  # e.g. a damaged file in its folder: this entry's failure only
        raise SweepError(f"{entry.name}: {error}") from error


def _run_locked_entry(entry: Entry, env: dict[str, str] | None, echo) -> str:
    state = entry.stage()
    if state == "published":
        echo(f"{entry.name}: published already ({_relative(entry.record)}), skipped")
        return "skipped"
    if state == "finished":
        entry.check_matches_its_folder()
        _publish(entry, echo)
        echo(f"{entry.name}: finished already, skipped")
        return "skipped"
    if state == "interrupted":
        entry.check_matches_its_folder()
    else:
        _clear_a_start_without_epochs(entry.run_dir)
    entry.folder.mkdir(parents=True, exist_ok=True)
    command = entry.command(resume=state == "interrupted")
    echo(f"{entry.name}: {'resuming' if state == 'interrupted' else 'starting'} (log: {_relative(entry.log)})")
    started = time.perf_counter()
    with open(entry.log, "a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        done = subprocess.run(command, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env=env, check=False)
    if done.returncode != 0:
        raise SweepError(f"{entry.name} failed (papermill exit code {done.returncode}); the end of "
                         f"{_relative(entry.log)}:\n{_tail(entry.log)}")
    summary = load_runs([entry.run_dir])[0]
    echo(f"{entry.name}: {len(summary.history)} epochs, final test accuracy {summary.final_acc:.2f}%, "
         f"{summary.seconds_per_epoch:.1f} s per epoch ({time.perf_counter() - started:.0f} s in all)")
    _publish(entry, echo)
    return "resumed" if state == "interrupted" else "ran"


def _publish(entry: Entry, echo) -> None:
    published = entry.publish()
    if published:
        echo(f"{entry.name}: records published in {_relative(published)}")


def publish_finished(sweep: Sweep, echo=print) -> int:
    """Publish the records of every finished run that has none yet (the sweep's records folder); trains nothing.

    Returns how many were published.
    """
    finished = [entry for entry in sweep.entries if entry.record and entry.stage() == "finished"]
    for entry in finished:
        entry.check_matches_its_folder()
        _publish(entry, echo)
    return len(finished)


def run_sweep(sweep: Sweep, gpus: list[str] | None = None, echo=print, cpu_workers: int = 1) -> dict[str, str]:
    """Run every entry that is not finished: one after another, or one per GPU at a time, or
    without GPUs `cpu_workers` side by side, each with its share of the CPU's cores.

    A narrow model's step uses two cores little better than one (benchmarks/RESULTS.md:
    at width 8 one thread's step takes about as long as two threads'), so two runs of one
    thread each finish about twice the runs in the time. A failed run does not stop the
    others; the SweepError at the end names each failure.
    """
    gpus = _visible_gpus() if gpus is None else gpus
    # None: the device this process sees, one run at a time, as many threads as torch picks
    workers = [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in gpus] or _cpu_workers(cpu_workers)
    if not gpus and len(workers) > 1 and _cuda_available():
        echo(f"{cpu_workers} CPU workers asked for, but a GPU is here: its runs go one at a time")
        workers = [None]
    pending: queue.Queue[Entry] = queue.Queue()
    for entry in sweep.entries:
        pending.put(entry)
    outcome: dict[str, str] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def work(pinned: dict[str, str] | None) -> None:
        env = dict(os.environ, **pinned) if pinned is not None else None
        while True:
            try:
                entry = pending.get_nowait()
            except queue.Empty:
                return
            try:
                result = run_entry(entry, env, echo=lambda text: _locked(lock, echo, text))
            except SweepError as error:
                result = "failed"
                with lock:
                    failures.append(str(error))
                    echo(str(error))
            outcome[entry.name] = result

    try:
        if len(workers) == 1:
            work(workers[0])
        else:
            threads = [threading.Thread(target=work, args=(pinned,), daemon=True) for pinned in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    except KeyboardInterrupt:
        # Start nothing new; the runs in progress were interrupted too, and resume next time.
        while not pending.empty():
            pending.get_nowait()
        raise
    if failures:
        raise SweepError(f"{len(failures)} of {len(sweep.entries)} runs failed; run the same "
                         "command again to retry them (finished runs are skipped).")
    return outcome


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def _named_runs(runs) -> tuple[str, dict[str, dict[str, Any]]]:
    if isinstance(runs, dict):
        return "sweep", _checked_runs("the sweep", runs)
    if runs in SWEEPS:
        return runs, SWEEPS[runs]
    path = project_path(runs)  # relative: from the project's root, in JupyterLab as under papermill
    if path.suffix == ".json" and not path.is_file():
        raise SweepError(f"{path} is not a file: a sweep file's relative path is read from the "
                         "project's root (the folder of README.md).")
    if path.suffix == ".json":
        try:
            choices = json.loads(path.read_text())
        except ValueError as exc:
            raise SweepError(f"{path} is not valid JSON ({exc}); a sweep file holds "
                             '{"run name": {"parameter": value}}.') from None
        return path.stem, _checked_runs(str(path), choices)
    raise SweepError(f"no sweep named {runs!r}: choose one of {', '.join(SWEEPS)}, "
                     "or give a JSON file of {run name: {parameter: value}}")


def _checked_runs(source: str, choices: Any) -> dict[str, dict[str, Any]]:
    """Refuse, by name, anything in a sweep's runs but safe run names with training parameters."""
    if not isinstance(choices, dict):
        raise SweepError(f"{source} must be an object {{\"run name\": {{\"parameter\": value}}}}, "
                         f"not a {type(choices).__name__}.")
    if not choices:
        raise SweepError(f"{source} has no runs: give it at least one {{\"run name\": {{...}}}}.")
    for name, parameters in choices.items():
        if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
            raise SweepError(f"{name!r} in {source} is not allowed as a run name: it becomes a "
                             "folder's name, so it must be 1 to 100 letters, digits, '.', '_', '+', "
                             "'=' or '-', starting with a letter or a digit.")
        if not isinstance(parameters, dict):
            raise SweepError(f"{name}: its parameters must be an object {{\"parameter\": value}} "
                             f"in {source}, not {parameters!r}.")
        refused = [key for key in parameters if key not in SWEEPABLE]
        if refused:
            raise SweepError(f"{name}: {unknown_names(refused, SWEEPABLE)} in {source}: not a "
                             "parameter a sweep may set. A run sets training parameters only; "
                             f"the sweep sets {', '.join(sorted(SET_BY_THE_SWEEP))} itself "
                             "(--data-dir, --folder, --size).")
    return choices


def _pick_size(size: str, sweep: str) -> str:
    try:
        picked = pick_size(size, sweep=True)
        asked = check_value("size", size)
    except ExplainedError as error:  # one message, in the sweep's words
        raise SweepError(str(error)) from None
    if asked == AUTO and picked == "small":  # "auto" without a GPU
        return CPU_SIZE.get(sweep, picked)
    return picked


def _clear_a_start_without_epochs(run_dir: Path) -> None:
    """A run killed before its first epoch ended left only config.json: nothing to resume.

    A new run writes only into an empty folder, so remove that; anything else is kept.
    """
    if not run_dir.is_dir():
        return
    leftovers = list(run_dir.iterdir())
    if stopped_before_first_epoch(run_dir):
        for path in leftovers:
            path.unlink()
    else:
        raise SweepError(f"{run_dir} holds files but no checkpoint to resume from "
                         f"({', '.join(sorted(p.name for p in leftovers))}); remove it to run "
                         "this entry again.")


def _cpu_workers(count: int) -> list[dict[str, str] | None]:
    """`count` workers, each told to use its share of the cores (OMP_NUM_THREADS, which torch reads)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SweepError(f"workers must be a whole number of at least 1, not {count!r}")
    if count == 1:
        return [None]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [{"OMP_NUM_THREADS": str(max(1, cores // count))} for _ in range(count)]


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def _visible_gpus() -> list[str]:
    if not _cuda_available():
        return []
    import torch
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    return ids if len(ids) > 1 else []  # one GPU: no need to pin anything


def _executed_without_error(notebook: Path) -> bool:
    """True if papermill finished this notebook: it records an end time and no exception."""
    try:
        info = json.loads(notebook.read_text())["metadata"]["papermill"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(info.get("end_time")) and not info.get("exception")


def _relative(path: Path) -> str:
    """The path as a user types it: relative to the project where it lies inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _warn_of_a_short_job_array(sweep: Sweep) -> None:
    """A Slurm job array that ends before the sweep's last entry would leave runs out, silently.

    (One that goes past it fails in its extra tasks: --index says which runs there are.)
    """
    last_task = os.environ.get("SLURM_ARRAY_TASK_MAX", "")
    last_entry = len(sweep.entries) - 1
    if last_task.isdigit() and int(last_task) < last_entry:
        print(f"warning: this job array ends at task {last_task}, but {sweep.name} has runs 0 to "
              f"{last_entry} (--list): submit it with --array=0-{last_entry}, or the rest with "
              f"--array={int(last_task) + 1}-{last_entry}", file=sys.stderr, flush=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _locked(lock: threading.Lock, echo, text: str) -> None:
    with lock:
        echo(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nbhelpers.jobs.sweep", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="sweeps:\n" + "".join(f"  {name}: {', '.join(runs)}\n"
                                                                  for name, runs in SWEEPS.items()))
    parser.add_argument("sweep", nargs="?", default="optimizers",
                        help="a sweep's name, or a JSON file {run name: {parameter: value}}")
    parser.add_argument("--size", default="auto", help="auto (full on a GPU; on a CPU small, or "
                        + ", ".join(f"{size} for {name}" for name, size in CPU_SIZE.items()) + "), "
                        + ", ".join(SIZES) + " (nbhelpers.config.SIZES)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="repeat every run with this many seeds (rand_seed, rand_seed + 1, ...)")
    parser.add_argument("--data-dir", default="", help="CIFAR-10's folder (default: as 03 finds it)")
    parser.add_argument("--folder", help="where the runs go (default: runs/<sweep>-<size>)")
    parser.add_argument("--records", help="publish each finished run's records in RECORDS/<sweep>-<size>/<run>/ "
                        "(no weights; e.g. reference/records), and train no run published there")
    parser.add_argument("--workers", type=int, default=1,
                        help="without GPUs: this many runs side by side, each with cores / WORKERS threads "
                             "(e.g. 2 on two cores: a narrow model's runs finish about twice as fast in all)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--list", action="store_true", help="list the runs and their state")
    action.add_argument("--commands", action="store_true",
                        help="print each run's papermill command, one per line")
    action.add_argument("--publish", action="store_true",
                        help="only publish the records of finished runs (needs --records); trains nothing")
    action.add_argument("--index", type=int, help="run only entry INDEX (0-based), e.g. "
                        "$SLURM_ARRAY_TASK_ID; finished: skipped, interrupted: resumed")
    args = parser.parse_args(argv)
    # `kill` or a scheduler's SIGTERM stops the sweep like Ctrl-C: the run in progress
    # is stopped with it (not orphaned) and resumes from its checkpoint next time.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        sweep = make_sweep(args.sweep, args.size, args.data_dir, args.folder, seeds=args.seeds,
                           records=args.records)
        if args.publish and not args.records:
            raise SweepError("--publish copies finished runs' records to the folder --records names: give it")
        if args.publish:
            print(f"{sweep.name}: {publish_finished(sweep)} runs' records published")
        elif args.list:
            for index, entry in enumerate(sweep.entries):
                print(f"{index}  {entry.name:<28} {entry.state():<12} {_relative(entry.folder)}")
        elif args.commands:
            for entry in sweep.entries:
                print(shlex.join(entry.command()))
        elif args.index is not None:
            _warn_of_a_short_job_array(sweep)
            if not 0 <= args.index < len(sweep.entries):
                raise SweepError(f"--index {args.index}: {sweep.name} has runs 0 to {len(sweep.entries) - 1}")
            run_entry(sweep.entries[args.index])
        else:
            print(f"{sweep.name}: {len(sweep.entries)} runs", flush=True)
            run_sweep(sweep, echo=lambda text: print(text, flush=True), cpu_workers=args.workers)
    except SweepError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        print("stopped: the same command continues the sweep (finished runs are skipped, "
              "the interrupted one resumes)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
