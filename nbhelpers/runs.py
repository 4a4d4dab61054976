"""Run folders: what a run writes, and how it is continued or loaded again.

A run folder holds everything a run produces:
    config.json     the resolved configuration, versions, device, the data it trained on
    history.csv     one row per epoch: losses, accuracies, learning rate, seconds
    checkpoint.pt   the state after the last finished epoch; resume=True continues from it
    model.pt        the final weights (the last epoch's, not the best test epoch's)

Four rules keep what a run wrote from ever being lost or misread:
1. A folder is written into only when it is new (absent or empty) or explicitly
   resumed: a new run never lands on top of an old one.
2. Every file is written to a temporary file and renamed: a crash, a kill or a
   full disk leaves the previous version whole, and no stray temporary file.
3. A checkpoint is written only for an epoch that was finite throughout
   (`fit` checks training, evaluation and every weight and buffer first).
4. Resuming checks everything that changes the numbers, the data included,
   and restores any file of the folder that went missing.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import pickle
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import TrainConfig, make_config
from .errors import ExplainedError
from .runtime import RUNS_DIR, cpu_has_fast_bf16, cpu_model, device_name, pick_device

CHECKPOINT, HISTORY, CONFIG, WEIGHTS = "checkpoint.pt", "history.csv", "config.json", "model.pt"
CHECKPOINT_FORMAT = 2  # 2: the checkpoint also records the data it was trained on
# Parameters that may differ between a run and its resumption: they change
# where things are or how progress looks, not what is computed. (The data
# folder may move; the data itself is checked by its fingerprint.)
RESUMABLE_DIFFERENCES = {"resume", "progress", "run_dir", "data_dir", "download", "compile"}


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

    @property
    def finished(self) -> bool:
        return bool(self.history) and int(self.history[-1]["epoch"]) == self.config.num_epochs


def resume_command(run_dir: Path) -> str:
    """The command that continues a run, in the words of the README."""
    return f"papermill notebooks/03_train.ipynb out.ipynb -p resume True -p run_dir {run_dir}"


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


def progress_of(run_dir: Path) -> str:
    """ "stopped after epoch 3 of 60", from what the folder holds."""
    try:
        planned = json.loads((run_dir / CONFIG).read_text())["config"]["num_epochs"]
    except (OSError, ValueError, KeyError):
        planned = "?"
    try:
        done = len(read_history(run_dir))
    except OSError:
        done = 0
    return f"stopped after epoch {done} of {planned}" if done else f"stopped before its first epoch ended (of {planned})"


def stopped_before_first_epoch(run_dir: Path) -> bool:
    """Does the folder hold nothing but what a run writes before its first epoch ends?

    That is config.json at most, and temporary files of an interrupted write. Such
    a run has nothing to continue and nothing to lose: it can start again from epoch 1.
    """
    return all(p.name == CONFIG or p.name.endswith(".tmp") for p in run_dir.iterdir())


def prepare_new_run_dir(run_dir: Path) -> None:
    """Refuse a folder that holds anything; a new run writes only into a new or empty folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"run_dir={str(run_dir)!r} is a file, not a folder: choose another run_dir.")
    held = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if held:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise RunFolderError(
            f"run_dir={str(run_dir)!r} already holds files ({shown}); a new run never writes "
            "into a folder that holds anything. Choose another run_dir (or leave it empty for "
            "runs/<date-time>), or, if it is an earlier run you want to continue, "
            "pass resume=True (`-p resume True`).")
    run_dir.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------
# Writing files so that nothing is ever half-written
# --------------------------------------------------------------------------

def atomic_write(path: Path, write: Callable) -> None:
    """Write through a temporary file and rename it: a crash never leaves half a file.

    If writing fails (a full disk, a vanished folder), the temporary file is
    removed, the previous version of `path` is untouched, and RunFolderError
    says so.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports write failures as RuntimeError
        tmp.unlink(missing_ok=True)
        raise RunFolderError(
            f"Could not write {path.name} into {path.parent}: {_why_write_failed(exc, path.parent)}. "
            f"Its previous version, if any, is intact. Make room, then continue the run with "
            f"resume=True (`{resume_command(path.parent)}`).") from exc


def _why_write_failed(exc: Exception, folder: Path) -> str:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return reason
    if getattr(exc, "errno", None) == errno.ENOSPC or free < 64 * 2**20:
        return f"no space left on the disk ({free / 2**20:.0f} MiB free now)"
    return reason


def write_history(run_dir: Path, history: list[dict]) -> None:
    def write(fh):
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        fh.write(text.getvalue().encode())
    atomic_write(run_dir / HISTORY, write)


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    with open(Path(run_dir) / HISTORY, newline="") as fh:
        return [{k: float(v) if v != "" else float("nan") for k, v in row.items()}
                for row in csv.DictReader(fh)]


def write_weights(run_dir: Path, model: torch.nn.Module) -> None:
    atomic_write(run_dir / WEIGHTS, lambda fh: torch.save(model.state_dict(), fh))


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and the machine, for config.json: what a reader needs to compare runs."""
    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "device": device_name(device), "python": sys.version.split()[0]}
    if device.type == "cpu":
        info.update(cpu=cpu_model(), cpu_fast_bf16=cpu_has_fast_bf16(),
                    threads=torch.get_num_threads())
    return info


def write_config(run_dir: Path, info: dict[str, Any]) -> None:
    atomic_write(run_dir / CONFIG, lambda fh: fh.write(json.dumps(info, indent=2).encode()))


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


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, config: TrainConfig,
                    epoch: int, history: list[dict], data: dict[str, Any]) -> None:
    state = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "data": data,
             "epoch": epoch, "history": history, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": _rng_state()}
    atomic_write(run_dir / CHECKPOINT, lambda fh: torch.save(state, fh))


def load_checkpoint(run_dir: Path, device: torch.device) -> dict:
    """The checkpoint's contents, loaded safely (tensors and plain data only)."""
    path = run_dir / CHECKPOINT
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a damaged zip, a truncated file, a refused pickle, ...
        message = str(exc)
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in message:
            # The safe load refused it. Its advice (load with weights_only=False)
            # would run whatever code the file holds: never repeat it.
            why = "it holds data that a safe load refuses, which no checkpoint of this project holds"
        else:
            why = f"it is damaged ({message.splitlines()[0] if message else type(exc).__name__})"
    raise ResumeError(f"{path} cannot be read: {why}, so this run cannot be continued from it; "
                      "its other files are kept as they are. Start a new run in another folder "
                      "(another run_dir, or leave run_dir empty for runs/<date-time>).")


def settings_that_differ(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The parameters of `now` that change what a run computes and differ in `saved`."""
    return [k for k in now if k not in RESUMABLE_DIFFERENCES and saved.get(k) != now[k]]


def check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse a checkpoint made with another architecture or recipe, naming what differs."""
    now = config.to_dict()
    differ = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in settings_that_differ(saved, now)]
    if differ:
        raise ResumeError(f"{path} was written with another configuration, so this run "
                          f"cannot continue it ({'; '.join(differ)}). Resume with the "
                          "checkpoint's values (`-p NAME VALUE`), or start a new run in another run_dir.")


def check_same_data(saved: dict[str, Any] | None, now: dict[str, Any], path: Path) -> None:
    """Refuse to continue a run on other data: the numbers would silently mean something else."""
    if not saved:
        return  # a checkpoint of format 1 did not record its data
    keys = ("fingerprint", "train", "val", "test")
    if any(saved.get(k) != now.get(k) for k in keys):
        raise ResumeError(
            f"{path} was trained on other data: {saved.get('folder')} (fingerprint "
            f"{saved.get('fingerprint')}, {saved.get('train')} training images), but this run "
            f"found {now['folder']} (fingerprint {now['fingerprint']}, {now['train']} training "
            "images). Resume with the data it was trained on (data_dir, `-p data_dir PATH`), or "
            "start a new run in another run_dir.")


# --------------------------------------------------------------------------
# Opening a run folder for fit: new, or resumed
# --------------------------------------------------------------------------

def open_run(config: TrainConfig, data: dict[str, Any], model, optimizer, scheduler,
             device: torch.device) -> tuple[Path, list[dict], int]:
    """The run folder, the history so far and the last finished epoch.

    A new run gets a new (or empty) folder. A resumed run has every state
    restored from its checkpoint after the checkpoint's configuration and
    data were checked against this run's; a folder whose run stopped before
    its first checkpoint starts again from epoch 1. Nothing is written here
    but files that went missing (history.csv), rebuilt from the checkpoint.
    """
    if not config.resume:
        run_dir = Path(config.run_dir) if config.run_dir else new_run_dir()
        prepare_new_run_dir(run_dir)
        return run_dir, [], 0
    run_dir = Path(config.run_dir) if config.run_dir else latest_run_dir()
    if not (run_dir / CHECKPOINT).is_file():
        if not (run_dir / CONFIG).is_file():
            raise ResumeError(f"resume=True, but {run_dir} holds no run to continue (no "
                              f"{CHECKPOINT}, no {CONFIG}). Start a new run there with resume=False.")
        if not stopped_before_first_epoch(run_dir):  # e.g. a finished run whose checkpoint is gone
            held = ", ".join(sorted(p.name for p in run_dir.iterdir()))
            raise ResumeError(f"resume=True, but {run_dir} has no {CHECKPOINT} to continue from, "
                              f"and its other files ({held}) show that epochs were trained; they are "
                              "kept as they are. Start a new run in another run_dir.")
        saved_config = read_config(run_dir)
        check_resumable(saved_config.get("config", {}), config, run_dir / CONFIG)
        check_same_data(saved_config.get("data"), data, run_dir / CONFIG)
        print(f"{run_dir} stopped before its first epoch ended: training it from epoch 1.")
        return run_dir, [], 0
    saved = load_checkpoint(run_dir, device)
    check_resumable(saved.get("config", {}), config, run_dir / CHECKPOINT)
    check_same_data(saved.get("data"), data, run_dir / CHECKPOINT)
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ResumeError(f"{run_dir / CHECKPOINT} does not fit this model and optimizer "
                          f"({str(exc).splitlines()[0]}). Start a new run in another run_dir.") from exc
    _set_rng_state(saved["rng"])
    history = list(saved["history"])
    if history:
        write_history(run_dir, history)  # restores a deleted or damaged history.csv
    return run_dir, history, int(saved["epoch"])


# --------------------------------------------------------------------------
# Loading a finished run, for notebook 04
# --------------------------------------------------------------------------

def load_run(run_dir: str | Path | None = None, device: torch.device | str | None = None,
             unfinished: bool = False) -> Run:
    """A trained run from its folder (default: the latest finished one under runs/).

    An unfinished run (no model.pt) is refused with the command that finishes
    it, unless unfinished=True, which loads its last checkpoint: then
    `run.finished` is False and its numbers are not a final result.
    """
    from .train import build_model  # train imports this module

    run_dir = Path(run_dir) if run_dir else latest_run_dir(finished=not unfinished)
    info = read_config(run_dir)
    config = make_config(**info["config"])
    device = torch.device(device) if device is not None else pick_device()
    model = build_model(config, len(info["data"]["classes"]))
    if is_finished(run_dir):
        state = torch.load(run_dir / WEIGHTS, map_location="cpu", weights_only=True)
    elif unfinished and (run_dir / CHECKPOINT).is_file():
        state = load_checkpoint(run_dir, torch.device("cpu"))["model"]
    else:
        raise RunFolderError(f"{run_dir} is unfinished: it {progress_of(run_dir)}, so it has no "
                             f"final model ({WEIGHTS}). Finish it with `{resume_command(run_dir)}`, "
                             "or evaluate a finished run (run_dir).")
    model.load_state_dict(state)
    if config.resolved(device)["channels_last"]:  # the layout fit evaluated with
        model = model.to(memory_format=torch.channels_last)
    try:
        history = read_history(run_dir)
    except FileNotFoundError:
        raise RunFolderError(f"{run_dir / HISTORY} is missing; resuming the run restores it: "
                             f"`{resume_command(run_dir)}`.") from None
    return Run(config, run_dir, model.to(device).eval(), history, device,
               tuple(info["data"]["classes"]))
