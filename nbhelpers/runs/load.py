"""Run folders read back: one finished run with its model (notebook 04), or many runs' tables (05, 06).

    run = load_run("runs/20261130-101500")   # the model, its history, config.json's record
    test = load_test_split(run)               # the very test images it measured, checked
    runs = load_runs(folders)                 # each folder's configuration and tables, labelled
                                              # by what differs (nbhelpers.compare groups them)

Nothing here writes: a damaged or mismatched file is refused with a message
naming it and saying what to do (RunFolderError).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ..compare import RunSummary, label_by_what_differs
from ..config import ConfigError, TrainConfig, build_model, make_config
from ..runtime import pick_device, project_path
from .folder import (BRANCH_WEIGHTS, CHECKPOINT, CONFIG, HISTORY, KEPT_ON_RESUME, STEPS, TABLES,
                     WEIGHTS, Run, RunFolderError, check_same_data, file_sha256, is_finished,
                     latest_run_dir, load_safely, progress_of, read_config, read_history, read_table,
                     resume_command, settings_that_differ)

__all__ = ["load_run", "check_config_agrees", "check_weights_fit", "check_model_provenance",
           "load_test_split", "load_runs"]


def load_run(run_dir: str | Path | None = None, device: torch.device | str | None = None,
             unfinished: bool = False) -> Run:
    """A trained run from its folder (default: the latest finished one under runs/).

    An unfinished run (no model.pt) is refused with the command that finishes
    it, unless unfinished=True, which loads its last checkpoint: then
    `run.finished` is False and its numbers are not a final result. A model.pt
    that is not the one this run wrote (its sha256 differs from config.json's),
    a config.json or a table that disagrees with the checkpoint, or a folder
    whose files are damaged, is refused with a message naming the file.
    """
    run_dir = project_path(run_dir) if run_dir else latest_run_dir(finished=not unfinished)
    if not run_dir.is_dir():
        raise RunFolderError(f"run_dir={str(run_dir)!r} is not a folder: name a run folder "
                             "(runs/<name>), or leave run_dir empty for the latest finished run.")
    info = read_config(run_dir)
    config, classes = _recorded_configuration(info, run_dir)
    if not is_finished(run_dir) and not (unfinished and (run_dir / CHECKPOINT).is_file()):
        raise RunFolderError(f"{run_dir} is unfinished: it {progress_of(run_dir)}, so it has no "
                             f"final model ({WEIGHTS}). Finish it with `{resume_command(run_dir)}`, "
                             "or evaluate a finished run (run_dir).")
    checkpoint = _recorded_checkpoint(run_dir)
    if checkpoint is not None:
        check_config_agrees(run_dir, info, checkpoint)
    if is_finished(run_dir):
        check_model_provenance(run_dir, info)
        state = load_safely(run_dir / WEIGHTS, "cpu")
    else:
        state = checkpoint["model"]
    check_weights_fit(run_dir, config, len(classes), state)
    # What every table must reach: the checkpoint's epoch (a finished run's checkpoint may be gone).
    trained = int(checkpoint["epoch"]) if checkpoint is not None else config.num_epochs
    history = _recorded_history(run_dir, trained)
    optional = {attribute: _recorded_table(run_dir, name, trained) for attribute, name in TABLES.items()
                if attribute != "history" and (run_dir / name).is_file()}
    model = build_model(config, len(classes))
    model.load_state_dict(state)  # check_weights_fit made sure it fits
    device = torch.device(device) if device is not None else pick_device()
    run = Run(config, run_dir, model, history, device, classes, info=info, **optional)
    if run.resolved["channels_last"]:  # the layout the run trained and evaluated with
        model = model.to(memory_format=torch.channels_last)
    run.model = model.to(device).eval()
    return run


def _recorded_configuration(info: dict[str, Any], run_dir: Path) -> tuple[TrainConfig, tuple[str, ...]]:
    """The TrainConfig and the class names config.json records; RunFolderError if it does not hold them."""
    try:
        return make_config(**info["config"]), tuple(info["data"]["classes"])
    except (KeyError, TypeError, ConfigError) as exc:
        problem = f"it has no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise RunFolderError(f"{run_dir / CONFIG} is damaged or was edited ({problem}), so the run "
                             "cannot be rebuilt from it. Evaluate another run (run_dir).") from None


def _recorded_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint, its tensors mapped rather than read (of a finished run only its record is
    used); None where a finished run no longer has one."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    checkpoint = load_safely(path, "cpu", mmap=True)
    if not isinstance(checkpoint, dict) or not {"epoch", "model"} <= checkpoint.keys():
        raise RunFolderError(f"{path} is damaged: it holds no epoch and model, as every checkpoint "
                             "of this project does. Evaluate another run (run_dir).")
    return checkpoint


def check_config_agrees(run_dir: Path, info: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """Refuse a config.json whose settings differ from those its checkpoint recorded.

    The model is rebuilt from config.json: an edited mixing would evaluate
    another network than the one trained, an edited width would not fit the
    weights. Compared: what changes the numbers (and what the run resolved, its
    precision and memory layout), where both files record it.
    """
    differ = []
    for section, keys in (("config", None), ("resolved", KEPT_ON_RESUME)):
        saved, now = checkpoint.get(section) or {}, info.get(section) or {}
        names = settings_that_differ(saved, now) if keys is None else [k for k in keys if saved.get(k) != now.get(k)]
        differ += [f"{k}: {now[k]!r} in {CONFIG}, {saved[k]!r} in {CHECKPOINT}"
                   for k in names if k in saved and k in now]
    if differ:
        raise RunFolderError(f"{run_dir / CONFIG} disagrees with {run_dir / CHECKPOINT} "
                             f"({'; '.join(differ)}): {CONFIG} was edited or copied from another run. "
                             f"Put the checkpoint's values back into {CONFIG}, or evaluate another run (run_dir).")


def check_weights_fit(run_dir: Path, config: TrainConfig, num_classes: int, state: Any) -> None:
    """Refuse weights whose tensors are not those of the model config.json describes, before it is built.

    The model is built on the meta device (shapes only): a config.json edited
    to an enormous width allocates nothing.
    """
    found = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state.items()} \
        if isinstance(state, dict) else {}
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in build_model(config, num_classes).state_dict().items()}
    except RuntimeError:  # so large that even the shapes' sizes overflow
        expected = {}
    if found == expected:
        return
    other_shape = [k for k in expected if k in found and found[k] != expected[k]]
    missing = [k for k in expected if k not in found]
    if other_shape:
        key = other_shape[0]
        problem = f"{key} has the shape {found[key]} in the weights, {expected[key]} in the model"
    elif missing:
        problem = f"{missing[0]} is missing from the weights"
    else:
        problem = f"{next(k for k in found if k not in expected)} is not in the model"
    raise RunFolderError(f"The weights in {run_dir} do not fit the model its {CONFIG} describes "
                         f"({problem}): one of the two files was changed or copied from another "
                         "run. Evaluate another run (run_dir).")


def _recorded_history(run_dir: Path, trained: int) -> list[dict[str, float]]:
    """history.csv with one row per epoch trained; RunFolderError saying how to restore it otherwise."""
    try:
        history = read_history(run_dir)
    except FileNotFoundError:
        history = None
    if not history or "test_acc" not in history[0]:
        state = "is missing" if history is None else "holds no epoch"
        raise RunFolderError(f"{run_dir / HISTORY} {state}; resuming the run restores it from "
                             f"its checkpoint: `{resume_command(run_dir)}`.")
    if [row.get("epoch") for row in history] != list(range(1, trained + 1)):
        raise RunFolderError(f"{run_dir / HISTORY} holds {len(history)} rows, the last for epoch "
                             f"{_shown(history[-1].get('epoch'))}, but the run trained epochs 1 to "
                             f"{trained}: it was edited, or the run stopped before writing it. Resuming "
                             f"the run rewrites it from its checkpoint: `{resume_command(run_dir)}`.")
    return history


def _recorded_table(run_dir: Path, name: str, trained: int) -> list[dict[str, float]]:
    """steps.csv or branch_weights.csv, ending at the last epoch trained; RunFolderError otherwise."""
    rows = read_table(run_dir / name)
    last = rows[-1].get("epoch") if rows else None
    if last != trained:
        ends = f"ends at epoch {_shown(last)}" if rows else "holds no rows"
        raise RunFolderError(f"{run_dir / name} {ends}, but the run trained {trained} epochs: it was "
                             "edited, or the run stopped before writing it. Resuming the run rewrites "
                             f"it from its checkpoint: `{resume_command(run_dir)}`.")
    return rows


def _shown(epoch: float | None) -> str:
    """An epoch number read from a table (a float: 3.0) as it was written (3)."""
    return f"{epoch:g}" if isinstance(epoch, float) else str(epoch)


def check_model_provenance(run_dir: Path, info: dict[str, Any]) -> None:
    """Refuse a model.pt that is not the one this run wrote (config.json keeps its sha256)."""
    recorded = info.get("model_sha256")
    if recorded is None:
        return  # a run from before config.json recorded it
    found = file_sha256(run_dir / WEIGHTS)
    if found != recorded:
        raise RunFolderError(f"{run_dir / WEIGHTS} is not the model this run wrote: its sha256 is "
                             f"{found[:16]}..., {CONFIG} records {recorded[:16]}... (a model.pt copied "
                             "from another run?). Evaluate the run whose model it is, or train again.")


def load_test_split(run: Run, data_dir: str | Path | None = None):
    """The test images the run measured, loaded again and checked to be the very same data.

    `data_dir`: where CIFAR-10 is now (default: the run's data_dir). A copy
    with another fingerprint (other files, other labels) is refused, naming both.
    """
    from ..data import load_cifar10, prepare_splits  # data loads torchvision: only when needed

    data = load_cifar10(data_dir or run.config.data_dir or None)
    test = prepare_splits(data, test_subset=run.config.test_subset).test
    now = {"folder": str(data.folder), "fingerprint": data.fingerprint, "train": len(data.train),
           "test": len(test)}
    check_same_data(run.info.get("data"), now, run.run_dir / CONFIG, keys=("fingerprint", "test"),
                    fix="Evaluate it on the data it was trained on (`-p data_dir PATH`).",
                    error=RunFolderError)
    return test



# --------------------------------------------------------------------------
# Many runs' tables, for comparing them (notebooks 05 and 06)
# --------------------------------------------------------------------------

def load_runs(folders: Sequence[str | Path]) -> list[RunSummary]:
    """Read run folders (config.json and the tables) and label each by what differs."""
    runs = []
    for folder in map(Path, folders):
        if not (folder / CONFIG).is_file():
            raise FileNotFoundError(f"{folder} is not a run folder: it has no {CONFIG}")
        config = json.loads((folder / CONFIG).read_text())["config"]
        history = read_history(folder) if (folder / HISTORY).is_file() else []
        if not history:
            raise FileNotFoundError(f"{folder} has no finished epoch yet (no history.csv)")
        steps = read_table(folder / STEPS) if (folder / STEPS).is_file() else []
        branch_weights = read_table(folder / BRANCH_WEIGHTS) if (folder / BRANCH_WEIGHTS).is_file() else []
        runs.append(RunSummary(folder, make_config(**config).to_dict(), history, steps, branch_weights))
    label_by_what_differs(runs)
    return runs
