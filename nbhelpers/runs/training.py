"""A run trained into its folder: `fit`, new or resumed, checkpointed after every epoch.

    run = fit(num_epochs=60)          # or fit(TrainConfig(...)); returns a Run
    run.history                       # one dict per epoch, as in history.csv

Notebook 03 calls `fit`; every run of a sweep (nbhelpers.jobs.sweep) is 03
run by papermill, so it calls it too. `fit` checks every parameter (against
the data too) before the folder is touched, holds the folder's lock from then
on, and after every epoch: trains it (nbhelpers.train.train_epoch), evaluates,
checks that everything stayed finite, records, writes the checkpoint and the
tables, and prints a line. The folder's rules are nbhelpers.runs.folder's.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig, make_config
from ..data import CIFAR10Data, CifarLoader, Split, load_cifar10, prepare_splits
from ..errors import ExplainedError
from ..evaluation import evaluate
from ..progress import Progress, RunEstimate
from ..runtime import device_name, pick_device, seed_everything, synchronize
from ..train import (beta1_of, branch_probe, branch_weight_rows, build_scheduler, build_training,
                     check_batch_size, check_fits_in_memory, check_optimizer_state, describe_splits,
                     eval_splits, step_rows, train_epoch)
from .folder import (CHECKPOINT, KEPT_ON_RESUME, ResumeError, ResumePoint, Run, choose_run_dir,
                     environment, repair_from_checkpoint, resume_point, save_checkpoint, set_rng_state,
                     write_config, write_tables, write_weights, writing)

__all__ = ["TrainingDiverged", "fit", "settings_for", "restore", "train_epochs", "check_finite"]


class TrainingDiverged(ExplainedError, FloatingPointError):
    """An epoch was not finite throughout; the last finite epoch's checkpoint is kept."""


def fit(config: TrainConfig | None = None, *, stop_after: int | None = None,
        data: CIFAR10Data | None = None, device: torch.device | str | None = None,
        **overrides: Any) -> Run:
    """Train the seed's model with Ranger and OneCycleLR; evaluate after every epoch.

    `config` (or the defaults) with `overrides` applied, e.g. fit(num_epochs=2).
    `stop_after=N` ends this call after epoch N (the schedule still spans
    num_epochs); a later call with resume=True continues exactly there.
    `data` reuses already loaded CIFAR-10 (else it is loaded from data_dir).
    Every parameter is checked, against the data too, before the run folder
    is touched; from then on this process holds the folder's lock.
    """
    config = make_config(config, **overrides)
    device = torch.device(device) if device is not None else pick_device()
    check_fits_in_memory(config, device)
    seed_everything(config.rand_seed, config.deterministic)

    run_dir = choose_run_dir(config)
    data = data or load_cifar10(config.data_dir or None, config.download)
    splits = prepare_splits(data, config.train_subset, config.test_subset, config.val_size)
    check_batch_size(config, len(splits.train))
    data_record = describe_splits(data, splits)
    with writing(run_dir, config):
        point = resume_point(run_dir, config, data_record, device) if config.resume else None
        chosen = settings_for(config, device, point)
        train_loader = CifarLoader(splits.train, config.batch_size, train=True, device=device,
                                   seed=config.rand_seed)
        model, step_model, optimizer, _ = build_training(config, device, len(splits.classes), chosen)
        scheduler = build_scheduler(optimizer, config, len(train_loader))
        info = {"config": config.to_dict(), "resolved": chosen, **environment(device),
                "data": data_record, "steps_per_epoch": len(train_loader)}
        probe = branch_probe(splits)
        if point is None:
            start, tables = 0, {"branch_weights": branch_weight_rows(0, model, probe, device, chosen)}
            write_config(run_dir, info)
        else:
            restore(point, model, optimizer, scheduler, config, run_dir)
            start, tables, info = point.epoch, point.tables, point.info or info
            repair_from_checkpoint(run_dir, point, info, finished=start >= config.num_epochs)
        run = Run(config, run_dir, model, tables.get("history", []), device, splits.classes,
                  info=info, steps=tables.get("steps", []),
                  branch_weights=tables.get("branch_weights", []))
        end = min(config.num_epochs, stop_after or config.num_epochs)
        train_epochs(run, range(start + 1, end + 1), step_model, train_loader, optimizer,
                     scheduler, eval_splits(splits, device), probe)
        if run.finished and start < config.num_epochs:
            write_weights(run_dir, model, info)
    return run


def train_epochs(run: Run, epochs: range, step_model, train_loader: CifarLoader, optimizer,
                 scheduler, eval_loaders: dict[str, CifarLoader], probe: Split) -> None:
    """Train `epochs`; after each: evaluate, check, record, checkpoint, report."""
    config, chosen, device = run.config, run.info["resolved"], run.device
    steps = len(epochs) * len(train_loader)
    estimate = RunEstimate(steps, len(epochs), config.batch_size,
                           sum(len(loader.labels) for loader in eval_loaders.values()),
                           device_name(device), lambda: synchronize(device))
    progress = Progress(config.progress, steps, config.num_epochs, estimate)
    lrs, beta1s = [], []

    def on_step(group: dict[str, Any]) -> None:
        lrs.append(group["lr"])
        beta1s.append(beta1_of(group))
        progress.step()

    try:
        for epoch in epochs:
            progress.start_epoch(epoch)
            train_loader.set_epoch(epoch)
            tic = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            trained = train_epoch(step_model, train_loader, optimizer, scheduler,
                                  per_batch=config.scheduler_step == "batch",
                                  precision=chosen["precision"],
                                  channels_last=chosen["channels_last"], on_step=on_step)
            row = {"epoch": epoch, "train_loss": trained["loss"], "train_acc": trained["acc"]}
            for name, loader in eval_loaders.items():
                result = evaluate(step_model, loader, device, chosen["precision"], chosen["channels_last"])
                row[f"{name}_loss"], row[f"{name}_acc"] = result["loss"], result["acc"]
            row["lr"] = lr
            row["seconds"] = time.perf_counter() - tic
            check_finite(epoch, row, trained["first_bad_step"], run.model, config, chosen, run.run_dir)
            run.history.append(row)
            taken = len(trained["step_losses"])
            run.steps += step_rows(epoch, (epoch - 1) * taken, trained["step_losses"],
                                   lrs[-taken:], beta1s[-taken:])
            run.branch_weights += branch_weight_rows(epoch, run.model, probe, device, chosen)
            save_checkpoint(run, optimizer, scheduler, epoch)
            write_tables(run)
            progress.end_epoch(run.history)
    finally:
        run.step_lrs += lrs
        progress.close()


def settings_for(config: TrainConfig, device: torch.device, point: ResumePoint | None) -> dict[str, Any]:
    """What the run trains with: the "auto" choices made for `device`, and on a CPU its thread count.

    A resumed run keeps what it resolved when it began (KEPT_ON_RESUME: precision,
    memory layout, threads, compile), since each of them changes the numbers: resumed
    on another CPU, with another thread count or by a version that compiles where
    it did not, it still computes what an uninterrupted run computes. It says so when that differs from this machine's choice.
    """
    chosen = config.resolved(device)
    if device.type == "cpu":
        chosen["threads"] = torch.get_num_threads()
    if point is not None and point.resolved:
        kept = {k: point.resolved[k] for k in KEPT_ON_RESUME if k in point.resolved and k in chosen}
        changed = [f"{k} {v} (here {chosen[k]})" for k, v in kept.items() if chosen[k] != v]
        if changed:
            print("resuming with what the run began with: " + ", ".join(changed))
        chosen.update(kept)
    if "threads" in chosen:
        torch.set_num_threads(chosen["threads"])
    return chosen


def restore(point: ResumePoint, model, optimizer, scheduler, config: TrainConfig, run_dir) -> None:
    """Every state of a resumed run, as its checkpoint holds it; ResumeError before any write if it does not fit."""
    path = run_dir / CHECKPOINT
    try:
        model.load_state_dict(point.states["model"])
        check_optimizer_state(point.states["optimizer"], config)
        optimizer.load_state_dict(point.states["optimizer"])
        scheduler.load_state_dict(point.states["scheduler"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise ResumeError(f"{path} does not fit this model and optimizer "
                          f"({str(exc).splitlines()[0]}). Start a new run in another run_dir.") from exc
    set_rng_state(point.states["rng"])


def check_finite(epoch: int, row: dict[str, float], first_bad_step: int, model: torch.nn.Module,
                 config: TrainConfig, chosen: dict[str, Any], run_dir: Path) -> None:
    """Stop before an epoch that was not finite throughout reaches the checkpoint.

    A NaN can hide in more places than the training loss: a BatchNorm running
    variance can overflow while the loss stays finite, and then every
    evaluation after it is NaN. So the losses, and every weight and buffer of
    the model, are checked (one read from the device per epoch).
    """
    bad = [f"the training loss (first at step {first_bad_step + 1})"] if first_bad_step >= 0 else []
    bad += [f"the {key.replace('_', ' ')}" for key, value in row.items()
            if key.endswith("_loss") and not key.startswith("train") and not math.isfinite(value)]
    tensors = [(name, t) for name, t in model.state_dict().items() if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for _, t in tensors]).tolist()
    broken = [name for (name, _), ok in zip(tensors, finite) if not ok]
    if broken:
        bad.append(f"{len(broken)} weight or buffer tensors (first: {broken[0]})")
    if not bad:
        return
    kept = (f"{run_dir / CHECKPOINT} still holds epoch {epoch - 1}, the last one that was finite "
            "throughout" if epoch > 1 else "no checkpoint was written")
    hints = [f"a smaller max_lr (now {config.max_lr:g}; OneCycleLR sets the learning rate "
             "from max_lr, so learning_rate has no effect)"]
    if chosen["precision"] == "bf16":
        hints.append("precision='fp32' (`-p precision fp32`)")
    raise TrainingDiverged(
        f"Epoch {epoch} was not finite: NaN or infinity in {', '.join(bad)}. The run stopped "
        f"without saving epoch {epoch}: {kept}. Start a new run with " + " or ".join(hints) + ".")
