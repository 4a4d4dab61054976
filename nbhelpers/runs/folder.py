"""Run folders: what a run writes, and how it is continued.

Notebook 03 writes one (through `fit`, nbhelpers.runs.training), 04 reads one
back and 05 and 06 many (nbhelpers.runs.load); the sweeps and the series
look into them to see how far a run got.

A run folder holds everything a run produces:
    config.json     the resolved configuration, versions, device, the data it trained on,
                    and (once finished) the sha256 of model.pt
    history.csv     one row per epoch: losses, accuracies, learning rate, seconds
    steps.csv       a row every few steps (at least 50 per epoch): the training loss over
                    those steps, the learning rate and beta1
    branch_weights.csv  each block's mean branch weights on test images, from epoch 0 (untrained) on
    checkpoint.pt   the state after the last finished epoch; resume=True continues from it
    model.pt        the final weights (the last epoch's, not the best test epoch's)
    .lock           the lock of the process writing the folder (nbhelpers.runs.lock)

Five rules keep what a run wrote from ever being lost or misread:
1. A folder is written into only when it is new (absent or empty) or explicitly
   resumed: a new run never lands on top of an old one, and a finished run is
   never written again (a resume only repairs files that went missing or that differ
   from its checkpoint, which holds every table).
2. One process at a time: the folder's lock is held from the first check to
   the end of training, so two runs or two resumes never share a folder.
3. Every file is written to a temporary file of its own and renamed: a crash,
   a kill or a full disk leaves the previous version whole.
4. A checkpoint is written only for an epoch that was finite throughout
   (`fit` checks training, evaluation and every weight and buffer first).
5. Resuming checks everything that changes the numbers, the data included, and
   keeps what the run resolved when it began (precision, memory layout, CPU
   threads), so it gives the numbers of an uninterrupted run on any machine.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import pickle
import random
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..config import NOT_CHANGING_THE_NUMBERS, ConfigError, TrainConfig, reached_the_last_epoch
from ..errors import ExplainedError
from ..runtime import (PROJECT_ROOT, RUNS_DIR, cpu_has_fast_bf16, cpu_model, device_name, project_path,
                       shown_path)
from .lock import LOCK, check_not_in_use, folder_lock

__all__ = ["CHECKPOINT", "HISTORY", "CONFIG", "WEIGHTS", "STEPS", "BRANCH_WEIGHTS", "TABLES",
           "CHECKPOINT_FORMAT", "KEPT_ON_RESUME", "RunFolderError", "ResumeError", "Run",
           "resume_command", "new_run_dir", "is_finished", "run_folders", "latest_run_dir",
           "run_to_resume", "progress_of", "stopped_before_first_epoch", "check_path_is_usable",
           "check_new_run_dir", "check_holds_nothing", "atomic_write", "table_bytes", "write_table",
           "read_table", "write_tables", "read_history", "file_sha256", "write_weights", "environment",
           "project_commit", "write_config", "read_config", "set_rng_state", "save_checkpoint",
           "load_safely", "load_checkpoint", "settings_that_differ", "check_resumable",
           "check_same_data", "choose_run_dir", "writing", "ResumePoint", "resume_point",
           "repair_from_checkpoint", "RECORDS", "copy_records"]

CHECKPOINT, HISTORY, CONFIG, WEIGHTS = "checkpoint.pt", "history.csv", "config.json", "model.pt"
STEPS, BRANCH_WEIGHTS = "steps.csv", "branch_weights.csv"
# The tables a run keeps, by the Run attribute that holds each: rewritten after every
# epoch, and kept in the checkpoint too, so a resumed run's tables equal an uninterrupted one's.
TABLES = {"history": HISTORY, "steps": STEPS, "branch_weights": BRANCH_WEIGHTS}
# A run's records: what a reader needs to compare it (05, 06) without its weights or checkpoint.
# A sweep publishes them beside the reference run (committed, a few KB a run), so the
# comparisons re-execute from them in seconds on any machine.
RECORDS = (CONFIG, HISTORY, STEPS, BRANCH_WEIGHTS)
# 2: the checkpoint also records the data it was trained on; 3: also what the run
# resolved ("resolved": precision, memory layout, threads, compile) and config.json's contents.
CHECKPOINT_FORMAT = 3
# What a run resolved when it began and keeps when resumed elsewhere: each changes the numbers
# (a compiled model draws its dropout masks from its own random numbers, and rounds otherwise).
KEPT_ON_RESUME = ("precision", "channels_last", "threads", "compile")


class RunFolderError(ExplainedError, RuntimeError):
    """A run folder cannot be used as asked; the message says what to do instead."""


class ResumeError(RunFolderError):
    """The run folder's checkpoint cannot continue this configuration."""


@dataclass
class Run:
    """What `fit` returns and `load_run` loads: the model and everything the run measured."""

    config: TrainConfig
    run_dir: Path
    model: torch.nn.Module
    history: list[dict[str, float]]
    device: torch.device
    classes: tuple[str, ...]
    step_lrs: list[float] = field(default_factory=list)  # lr of each step taken in this call
    info: dict[str, Any] = field(default_factory=dict)     # config.json's contents
    steps: list[dict[str, float]] = field(default_factory=list)           # steps.csv
    branch_weights: list[dict[str, float]] = field(default_factory=list)  # branch_weights.csv

    @property
    def finished(self) -> bool:
        """Every planned epoch trained (the one rule: nbhelpers.config.reached_the_last_epoch)."""
        return reached_the_last_epoch(self.history, self.config.num_epochs)

    @property
    def resolved(self) -> dict[str, Any]:
        """What the run trained with: precision, memory layout (and CPU threads), as recorded."""
        return self.info.get("resolved") or self.config.resolved(self.device)


def resume_command(run_dir: Path) -> str:
    """The command that continues a run, in the words of the README (paths quoted for a shell)."""
    return f"papermill notebooks/03_train.ipynb out.ipynb -p resume True -p run_dir {shlex.quote(str(run_dir))}"


# --------------------------------------------------------------------------
# Finding run folders
# --------------------------------------------------------------------------

def new_run_dir(root: Path = RUNS_DIR) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = root / stamp, 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    return path


def is_finished(run_dir: Path) -> bool:
    """Is the run in this folder finished? Only a finished run writes its final weights (model.pt).

    The one definition for a folder; a run in memory asks `Run.finished`.
    """
    return (run_dir / WEIGHTS).is_file()


def run_folders(root: Path = RUNS_DIR) -> list[Path]:
    """Every folder under `root` that holds a config.json, oldest start first."""
    return sorted((p for p in root.glob("*") if (p / CONFIG).is_file()),
                  key=lambda p: (p / CONFIG).stat().st_mtime)


def latest_run_dir(root: Path = RUNS_DIR, finished: bool = False) -> Path:
    """The most recently started run under `root`; with finished=True, the latest finished one."""
    runs = run_folders(root)
    candidates = [p for p in runs if is_finished(p)] if finished else runs
    if candidates:
        return candidates[-1]
    if runs:  # only unfinished runs: say which, and how to finish one
        raise RunFolderError(
            f"No finished run under {root}: the latest, {runs[-1]}, {progress_of(runs[-1])}. "
            f"Finish it with `{resume_command(runs[-1])}`, or name a finished run with run_dir.")
    raise RunFolderError(f"No run under {root} yet: train one first "
                         "(notebooks/03_train.ipynb), or name a run folder with run_dir.")


def run_to_resume(root: Path = RUNS_DIR) -> Path:
    """What resume=True without a run_dir continues: the latest run under `root` that is unfinished."""
    runs = run_folders(root)
    unfinished = [p for p in runs if not is_finished(p)]
    if unfinished:
        return unfinished[-1]
    if runs:
        raise ResumeError(f"resume=True without a run_dir continues the latest unfinished run under "
                          f"{root}, but every run there is finished (the latest: {runs[-1]}). Name the "
                          "run to continue with run_dir, or start a new run with resume=False.")
    raise ResumeError(f"resume=True, but there is no run under {root} to continue. Start a new run "
                      "with resume=False, or name a run folder with run_dir.")


def progress_of(run_dir: Path) -> str:
    """ "stopped after epoch 3 of 60", from what the folder holds."""
    try:
        planned = json.loads((run_dir / CONFIG).read_text())["config"]["num_epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        planned = "?"
    try:
        done = len(read_history(run_dir))
    except (OSError, RunFolderError):
        done = 0
    return f"stopped after epoch {done} of {planned}" if done else f"stopped before its first epoch ended (of {planned})"


def _files_of_the_run(run_dir: Path) -> list[Path]:
    """What the folder holds, less the lock (which names only the last process there)."""
    return sorted(p for p in run_dir.iterdir() if p.name != LOCK)


def stopped_before_first_epoch(run_dir: Path) -> bool:
    """Does the folder hold nothing but what a run writes before its first epoch ends?

    That is config.json at most, and temporary files of an interrupted write. Such
    a run has nothing to continue and nothing to lose: it can start again from epoch 1.
    (Only ask this of a folder whose lock you hold: a run may be starting there.)
    """
    return all(p.name == CONFIG or p.name.endswith(".tmp") for p in _files_of_the_run(run_dir))


def check_path_is_usable(run_dir: Path) -> None:
    """Refuse a run_dir that is a file, or whose names are too long for the filesystem, before any work."""
    longest = max((len(os.fsencode(part)) for part in run_dir.parts), default=0)
    if longest > 255 or len(os.fsencode(str(run_dir.absolute()))) > 4000:
        raise ConfigError(f"run_dir={str(run_dir)[:60]!r}... is too long: a folder name may have at "
                          "most 255 characters (and the whole path about 4,000). Choose a shorter run_dir.")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"run_dir={str(run_dir)!r} is a file, not a folder: choose another run_dir.")


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a folder that holds anything; a new run writes only into a new or empty folder."""
    check_path_is_usable(run_dir)
    check_not_in_use(run_dir, "run folder")  # say so, rather than that it holds files
    check_holds_nothing(run_dir)


def check_holds_nothing(run_dir: Path) -> None:
    held = [p.name for p in _files_of_the_run(run_dir)] if run_dir.is_dir() else []
    if held:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise RunFolderError(
            f"run_dir={str(run_dir)!r} already holds files ({shown}); a new run never writes "
            "into a folder that holds anything. Choose another run_dir (or leave it empty for "
            "runs/<date-time>), or, if it is an earlier run you want to continue, "
            "pass resume=True (`-p resume True`).")


# --------------------------------------------------------------------------
# Writing files so that nothing is ever half-written
# --------------------------------------------------------------------------

def atomic_write(path: Path, write: Callable) -> None:
    """Write through a temporary file and rename it: a crash never leaves half a file.

    The temporary file's name carries the process id, so no two processes ever
    write the same one. If writing fails (a full disk, a read-only folder), the
    temporary file is removed, the previous version of `path` is untouched, and
    RunFolderError says why and what to do.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports write failures as RuntimeError
        tmp.unlink(missing_ok=True)
        why, fix = _why_write_failed(exc, path.parent)
        raise RunFolderError(
            f"Could not write {path.name} into {path.parent}: {why}. Its previous version, if "
            f"any, is intact. {fix}, then continue the run with resume=True "
            f"(`{resume_command(path.parent)}`).") from exc


def _why_write_failed(exc: Exception, folder: Path) -> tuple[str, str]:
    """What went wrong, and what to do about it (a sentence without its full stop)."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    code = getattr(exc, "errno", None)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"the folder cannot be written ({reason})",
                "Make it writable (or move the run folder somewhere writable)")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return reason, "Fix that"
    if code == errno.ENOSPC or free < 64 * 2**20:
        return f"no space left on the disk ({free / 2**20:.0f} MiB free now)", "Make room"
    return reason, "Fix that"


def table_bytes(rows: list[dict]) -> bytes:
    """Rows of numbers as the CSV file write_table writes: its columns those of the first row."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def write_table(path: Path, rows: list[dict]) -> None:
    """Rows of numbers as a CSV file (table_bytes), written atomically."""
    atomic_write(path, lambda fh: fh.write(table_bytes(rows)))


def read_table(path: Path) -> list[dict[str, float]]:
    """A CSV file of numbers as one dict per row (OSError if it is missing)."""
    with open(path, newline="") as fh:
        try:
            return [{k: float(v) if v != "" else float("nan") for k, v in row.items()}
                    for row in csv.DictReader(fh)]
        except (TypeError, ValueError, csv.Error) as exc:  # a hand-edited or truncated file
            raise RunFolderError(f"{path} is damaged ({exc}). Resuming the run rewrites it from "
                                 f"its checkpoint: `{resume_command(path.parent)}`.") from None


def write_tables(run: Run) -> None:
    """Every table of the run (TABLES) that has rows, into its folder."""
    for attribute, name in TABLES.items():
        rows = getattr(run, attribute)
        if rows:
            write_table(run.run_dir / name, rows)


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    """history.csv as one dict of numbers per epoch (OSError if it is missing)."""
    return read_table(Path(run_dir) / HISTORY)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_weights(run_dir: Path, model: torch.nn.Module, info: dict[str, Any]) -> None:
    """model.pt, and its sha256 in config.json (`info`): 04 checks that they still belong together."""
    atomic_write(run_dir / WEIGHTS, lambda fh: torch.save(model.state_dict(), fh))
    info["model_sha256"] = file_sha256(run_dir / WEIGHTS)
    write_config(run_dir, info)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and the machine, for config.json: what a reader needs to compare runs."""
    info = {"torch": str(torch.__version__), "cuda": torch.version.cuda,  # plain str: checkpoints load safely
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "device": device_name(device), "python": sys.version.split()[0],
            "commit": project_commit()}
    if device.type == "cpu":
        info.update(cpu=cpu_model(), cpu_fast_bf16=cpu_has_fast_bf16(),
                    threads=torch.get_num_threads())
    return info


def project_commit() -> str | None:
    """The git commit of the project's checkout (with "+changes" if files differ from it), or None.

    With it, `git checkout COMMIT && make install` recreates the run's code and,
    through requirements.lock, its packages (README: Exact versions).
    """
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        commit = git("rev-parse", "HEAD")
        return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
        return None


def write_config(run_dir: Path, info: dict[str, Any]) -> None:
    atomic_write(run_dir / CONFIG, lambda fh: fh.write(json.dumps(info, indent=2).encode()))


def copy_records(run_dir: Path, destination: Path) -> Path:
    """Copy the run's RECORDS (those it has) into `destination`, each written whole (atomic_write).

    config.json's data folders (the one found, and data_dir as given) are written
    as the series shows a path (relative to the project where it lies inside it),
    so a published record names no folder of the machine it ran on.
    """
    destination.mkdir(parents=True, exist_ok=True)
    info = read_config(run_dir)
    data, config = info.get("data"), info.get("config")
    if isinstance(data, dict) and data.get("folder"):
        info = dict(info, data=dict(data, folder=shown_path(data["folder"])))
    if isinstance(config, dict) and config.get("data_dir"):
        info = dict(info, config=dict(config, data_dir=shown_path(config["data_dir"])))
    write_config(destination, info)
    for name in RECORDS[1:]:
        if (run_dir / name).is_file():
            table = (run_dir / name).read_bytes()
            atomic_write(destination / name, lambda fh, table=table: fh.write(table))
    return destination


def read_config(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / CONFIG).read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{run_dir} holds no {CONFIG}: it is not a run folder of this "
                             "project (or its run never started). Name another run_dir.") from None
    except ValueError as exc:
        raise RunFolderError(f"{run_dir / CONFIG} is damaged ({exc}). Name another run_dir.") from exc


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------

def _rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run: Run, optimizer, scheduler, epoch: int) -> None:
    """The state after `epoch`, with its tables and what resuming needs to check and keep."""
    info = run.info
    state = {"format": CHECKPOINT_FORMAT, "config": info["config"], "data": info["data"],
             "resolved": info["resolved"], "info": info, "epoch": epoch,
             **{attribute: getattr(run, attribute) for attribute in TABLES},
             "model": run.model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": _rng_state()}
    atomic_write(run.run_dir / CHECKPOINT, lambda fh: torch.save(state, fh))


def load_safely(path: Path, device: torch.device | str, mmap: bool = False) -> Any:
    """torch.load of tensors and plain data only; RunFolderError (never torch's advice) otherwise.

    mmap=True maps the tensors instead of reading them in: cheap where only a
    large file's small entries are wanted (a checkpoint's configuration, say).
    """
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as exc:  # a damaged zip, a truncated file, a refused pickle, ...
        message = str(exc)
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in message:
            # The safe load refused it. Its advice (load with weights_only=False)
            # would run whatever code the file holds: never repeat it.
            why = "it holds data that a safe load refuses, which no file of this project holds"
        else:
            why = f"it is damaged ({message.splitlines()[0] if message else type(exc).__name__})"
    raise RunFolderError(f"{path} cannot be read: {why}")


def load_checkpoint(run_dir: Path, device: torch.device) -> dict:
    """The checkpoint's contents, loaded safely (tensors and plain data only)."""
    try:
        return load_safely(run_dir / CHECKPOINT, device)
    except RunFolderError as error:
        raise ResumeError(f"{error}, so this run cannot be continued from it; its other files are "
                          "kept as they are. Start a new run in another folder (another run_dir, "
                          "or leave run_dir empty for runs/<date-time>).") from None


def settings_that_differ(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The parameters of `now` that change what a run computes and differ in `saved`."""
    return [k for k in now if k not in NOT_CHANGING_THE_NUMBERS and saved.get(k) != now[k]]


def check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse a checkpoint made with another architecture or recipe, naming what differs."""
    now = config.to_dict()
    differ = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in settings_that_differ(saved, now)]
    if differ:
        raise ResumeError(f"{path} was written with another configuration, so this run "
                          f"cannot continue it ({'; '.join(differ)}). Resume with the "
                          "checkpoint's values (`-p NAME VALUE`), or start a new run in another run_dir.")


def check_same_data(saved: dict[str, Any] | None, now: dict[str, Any], path: Path,
                    keys: tuple[str, ...] = ("fingerprint", "train", "val", "test"),
                    fix: str = "Resume with the data it was trained on (data_dir, `-p data_dir PATH`), "
                               "or start a new run in another run_dir.",
                    error: type[RunFolderError] = ResumeError) -> None:
    """Refuse to go on with other data than the run's: the numbers would silently mean something else."""
    if not saved:
        return  # a checkpoint of format 1 did not record its data
    if any(saved.get(k) != now.get(k) for k in keys):
        counts = " / ".join(f"{saved.get(k)}" for k in ("train", "test"))
        raise error(
            f"{path} was trained on other data: {saved.get('folder')} (fingerprint "
            f"{saved.get('fingerprint')}, {counts} training / test images), but this run "
            f"found {now['folder']} (fingerprint {now['fingerprint']}, {now['train']} / "
            f"{now['test']} images). {fix}")


# --------------------------------------------------------------------------
# Opening a run folder for fit: new, or resumed
# --------------------------------------------------------------------------

def choose_run_dir(config: TrainConfig) -> Path:
    """The folder `fit` writes, checked before anything is loaded or written.

    A new run: run_dir, or runs/<date-time>; it must be new or empty. A
    resumed one: run_dir, or the latest unfinished run under runs/.
    """
    if not config.resume:
        run_dir = project_path(config.run_dir) if config.run_dir else new_run_dir()
        check_new_run_dir(run_dir)
        return run_dir
    run_dir = project_path(config.run_dir) if config.run_dir else run_to_resume()
    check_path_is_usable(run_dir)
    if not run_dir.is_dir():
        raise ResumeError(f"resume=True, but {run_dir} holds no run to continue (the folder does not "
                          "exist). Name the run folder with run_dir, or start a new run with resume=False.")
    return run_dir


@contextlib.contextmanager
def writing(run_dir: Path, config: TrainConfig) -> Iterator[None]:
    """Hold the run folder's lock (creating the folder) from the checks to the end of training.

    Another process in the folder (a second copy of the run, a second resume)
    stops this one with FolderInUse before it reads or writes anything there.
    """
    with folder_lock(run_dir, "run folder"):
        if not config.resume:
            check_holds_nothing(run_dir)  # again, now alone: another run may have begun there since
        yield


@dataclass
class ResumePoint:
    """Where a resumed run continues: the state after its last finished epoch, as checked."""

    epoch: int
    tables: dict[str, list[dict]]     # by Run attribute (TABLES): "history", "steps", "branch_weights"
    states: dict[str, Any]            # "model", "optimizer", "scheduler", "rng"
    resolved: dict[str, Any] | None   # what the run resolved when it began (format 3 on)
    info: dict[str, Any] | None       # its config.json (format 3 on)


def resume_point(run_dir: Path, config: TrainConfig, data: dict[str, Any],
                 device: torch.device) -> ResumePoint | None:
    """The checkpoint to continue from, checked against this run's configuration and data.

    None: the run stopped before its first checkpoint, so it starts again from
    epoch 1. Call it holding the folder's lock. Nothing is written here.
    """
    if not (run_dir / CHECKPOINT).is_file():
        if not (run_dir / CONFIG).is_file():
            raise ResumeError(f"resume=True, but {run_dir} holds no run to continue (no "
                              f"{CHECKPOINT}, no {CONFIG}). Start a new run there with resume=False.")
        if not stopped_before_first_epoch(run_dir):  # e.g. a finished run whose checkpoint is gone
            held = ", ".join(p.name for p in _files_of_the_run(run_dir))
            raise ResumeError(f"resume=True, but {run_dir} has no {CHECKPOINT} to continue from, "
                              f"and its other files ({held}) show that epochs were trained; they are "
                              "kept as they are. Start a new run in another run_dir.")
        saved_config = read_config(run_dir)
        check_resumable(saved_config.get("config", {}), config, run_dir / CONFIG)
        check_same_data(saved_config.get("data"), data, run_dir / CONFIG)
        print(f"{run_dir} stopped before its first epoch ended: training it from epoch 1.")
        return None
    saved = load_checkpoint(run_dir, device)
    check_resumable(saved.get("config", {}), config, run_dir / CHECKPOINT)
    check_same_data(saved.get("data"), data, run_dir / CHECKPOINT)
    return ResumePoint(int(saved["epoch"]), {name: list(saved.get(name, [])) for name in TABLES},
                       {k: saved[k] for k in ("model", "optimizer", "scheduler", "rng")},
                       saved.get("resolved"), saved.get("info"))


def repair_from_checkpoint(run_dir: Path, point: ResumePoint, info: dict[str, Any],
                           finished: bool) -> None:
    """Make the folder agree with its checkpoint again: put back what is missing, rewrite a table
    that differs from the checkpoint's; leave the rest untouched.

    A table differs after an interruption between the checkpoint and the tables
    (a kill, a full disk: one epoch short) or when it was damaged or edited; the
    checkpoint holds every table as it was written. A finished run whose files
    are all there and agree is refused: a resume never writes a finished run.
    """
    repaired = {name: "was missing" for name in (CONFIG, WEIGHTS) if not (run_dir / name).is_file()}
    if not finished:
        repaired.pop(WEIGHTS, None)  # an unfinished run has no final weights yet
    for attribute, name in TABLES.items():
        rows = point.tables[attribute]
        if not rows:
            continue
        if not (run_dir / name).is_file():
            repaired[name] = "was missing"
        elif (run_dir / name).read_bytes() != table_bytes(rows):
            repaired[name] = "differed from it"
    if finished and not repaired:
        raise RunFolderError(f"{run_dir} is already finished: all {point.epoch} epochs are "
                             "trained and its files agree with its checkpoint, so there is nothing "
                             "to continue and nothing is written. Evaluate it with notebook 04 "
                             f"(`-p run_dir {shlex.quote(str(run_dir))}`), or start a new run.")
    for attribute, name in TABLES.items():
        if name in repaired:
            write_table(run_dir / name, point.tables[attribute])
    if WEIGHTS in repaired:
        atomic_write(run_dir / WEIGHTS, lambda fh: torch.save(point.states["model"], fh))
        info["model_sha256"] = file_sha256(run_dir / WEIGHTS)
    if CONFIG in repaired or WEIGHTS in repaired:
        write_config(run_dir, info)
    if repaired:
        print(f"{run_dir}: restored from its checkpoint (epoch {point.epoch}): "
              + ", ".join(f"{name} ({why})" for name, why in repaired.items()))
