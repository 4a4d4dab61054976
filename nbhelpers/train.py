"""Training: the seed's recipe, its schedule bug fixed, safe to interrupt.

    run = fit(num_epochs=60)          # or fit(TrainConfig(...)); returns a Run
    run.history                       # one dict per epoch, as in history.csv

The run folder it writes, and how a run is continued, are nbhelpers.runs';
the evaluation after every epoch is nbhelpers.evaluation's.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import OneCycleLR

from .config import ConfigError, TrainConfig, make_config
from .data import CifarLoader, CIFAR10Data, Splits, load_cifar10, prepare_splits
from .errors import ExplainedError
from .evaluation import EVAL_BATCH_SIZE, autocast, evaluate
from .model import Model
from .progress import Progress
from .ranger import Ranger
from .runs import (CHECKPOINT, Run, environment, open_run, save_checkpoint, write_config,
                   write_history, write_weights)
from .runtime import pick_device, seed_everything


class TrainingDiverged(ExplainedError, FloatingPointError):
    """An epoch was not finite throughout; the last finite epoch's checkpoint is kept."""


# --------------------------------------------------------------------------
# Building the pieces
# --------------------------------------------------------------------------

def build_model(config: TrainConfig, num_classes: int = 10) -> Model:
    return Model(config.num_blocks, 3, config.backbone_out_channels, config.num_conv_layer,
                 config.hidden_size, num_classes)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by config.optimizer, at the seed's lr and weight decay.

    - "ranger": the seed's Ranger (RAdam + Lookahead + gradient centralization);
    - "ranger_no_lookahead": alpha=1, so the slow weights always equal the fast ones;
    - "ranger_no_gc": Ranger without gradient centralization;
    - "radam", "adamw": PyTorch's, with Ranger's betas and eps and the same
      decoupled decay (p -= weight_decay * lr * p);
    - "sgd": SGD with Nesterov momentum 0.9; its weight decay is coupled (added
      to the gradient, then amplified by momentum about 1 / (1 - 0.9) times), so
      it gets weight_decay * (1 - 0.9) to shrink the weights as fast as Ranger does.
    OneCycleLR cycles beta1 (or SGD's momentum) between 0.85 and 0.95 for all of them.
    """
    params, lr, decay = model.parameters(), config.learning_rate, config.weight_decay
    betas, eps = (0.95, 0.999), 1e-5  # Ranger's defaults
    if config.optimizer == "ranger":
        return Ranger(params, lr=lr, weight_decay=decay)
    if config.optimizer == "ranger_no_lookahead":
        return Ranger(params, lr=lr, weight_decay=decay, alpha=1.0)
    if config.optimizer == "ranger_no_gc":
        return Ranger(params, lr=lr, weight_decay=decay, use_gc=False)
    if config.optimizer == "radam":
        return torch.optim.RAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=decay,
                                 decoupled_weight_decay=True)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=decay)
    if config.optimizer == "sgd":
        momentum = 0.9
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
                               weight_decay=decay * (1 - momentum))
    raise ConfigError(f"optimizer={config.optimizer!r} has no builder")  # config checks first


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    steps_per_epoch: int) -> OneCycleLR:
    """The seed's OneCycleLR: total_steps = epochs x steps per epoch, linear anneal.

    With scheduler_step="epoch" it is still built for that many steps but
    stepped once per epoch, as the seed did: the learning rate then creeps
    from 0.004 to about 0.0048 in 60 epochs and never reaches max_lr.
    """
    return OneCycleLR(optimizer, max_lr=config.max_lr,
                      total_steps=config.num_epochs * steps_per_epoch, anneal_strategy="linear")


def build_training(config: TrainConfig, device: torch.device, num_classes: int = 10):
    """The model (plain, for checkpoints), the one to run (compiled where chosen), the optimizer.

    The optimizer is made before compilation runs: it lays the parameters out flat,
    and a compiled graph should see them where they will stay.
    """
    chosen = config.resolved(device)
    model = build_model(config, num_classes).to(device)
    if chosen["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    # Static shapes: one graph each for the training batch, the last smaller
    # batch and evaluation, instead of slower shape-generic kernels.
    step_model = torch.compile(model, dynamic=False) if chosen["compile"] else model
    return model, step_model, optimizer, chosen


def schedule_trace(config: TrainConfig, steps_per_epoch: int) -> dict[str, list[float]]:
    """The learning rate and beta1 of every training step of a run, without training.

    OneCycleLR moves both: the rate up then down, beta1 (Ranger's, Adam's or
    SGD's momentum) the other way. The trace is built with the run's own
    optimizer class, so that it is exactly what training will see.
    """
    optimizer = build_optimizer(torch.nn.Linear(1, 1), config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    group = optimizer.param_groups[0]
    trace: dict[str, list[float]] = {"lr": [], "beta1": []}
    for _ in range(config.num_epochs):
        for _ in range(steps_per_epoch):
            trace["lr"].append(group["lr"])
            trace["beta1"].append(group["betas"][0] if "betas" in group else group["momentum"])
            optimizer.step()  # a no-op without gradients; the scheduler expects it first
            if config.scheduler_step == "batch":
                scheduler.step()
        if config.scheduler_step == "epoch":
            scheduler.step()
    return trace


def learning_rates(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate of every training step of a run, without training."""
    return schedule_trace(config, steps_per_epoch)["lr"]


# --------------------------------------------------------------------------
# One epoch of training, one pass of evaluation
# --------------------------------------------------------------------------

def train_epoch(model, loader, optimizer, scheduler, *, per_batch: bool, precision: str,
                channels_last: bool, on_step=None) -> dict[str, Any]:
    """One pass over the training batches. Sums stay on the device: no sync per step."""
    model.train()
    device = loader.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    seen = 0
    for step, (images, labels) in enumerate(loader):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(optimizer.param_groups[0]["lr"])
        if per_batch:
            scheduler.step()
        loss = loss.detach()
        loss_sum += loss
        correct += (logits.argmax(dim=1) == labels).sum()
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
        seen += len(labels)
    if not per_batch:
        scheduler.step()
    # The one synchronisation of the epoch.
    loss_total, correct_total, bad = torch.stack(
        [loss_sum.double(), correct.double(), first_bad.double()]).tolist()
    return {"loss": loss_total / len(loader), "acc": 100 * correct_total / max(seen, 1),
            "first_bad_step": int(bad)}


# --------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------

def fit(config: TrainConfig | None = None, *, stop_after: int | None = None,
        data: CIFAR10Data | None = None, device: torch.device | str | None = None,
        **overrides: Any) -> Run:
    """Train the seed's model with Ranger and OneCycleLR; evaluate after every epoch.

    `config` (or the defaults) with `overrides` applied, e.g. fit(num_epochs=2).
    `stop_after=N` ends this call after epoch N (the schedule still spans
    num_epochs); a later call with resume=True continues exactly there.
    `data` reuses already loaded CIFAR-10 (else it is loaded from data_dir).
    Every parameter is checked, against the data too, before the run folder
    is touched.
    """
    config = make_config(config, **overrides)
    device = torch.device(device) if device is not None else pick_device()
    seed_everything(config.rand_seed, config.deterministic)

    data = data or load_cifar10(config.data_dir or None, config.download)
    splits = prepare_splits(data, config.train_subset, config.test_subset, config.val_size)
    check_batch_size(config, len(splits.train))
    train_loader = CifarLoader(splits.train, config.batch_size, train=True, device=device,
                               seed=config.rand_seed)
    steps_per_epoch = len(train_loader)

    model, step_model, optimizer, chosen = build_training(config, device, len(splits.classes))
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)

    data_record = describe_splits(data, splits)
    run_dir, history, start = open_run(config, data_record, model, optimizer, scheduler, device)
    write_config(run_dir, {"config": config.to_dict(), "resolved": chosen, **environment(device),
                           "data": data_record, "steps_per_epoch": steps_per_epoch})
    measured = [("val", splits.val), ("test", splits.test)] if splits.val else [("test", splits.test)]
    eval_loaders = {name: CifarLoader(split, EVAL_BATCH_SIZE, train=False, device=device)
                    for name, split in measured}

    end = min(config.num_epochs, stop_after or config.num_epochs)
    run = Run(config, run_dir, model, history, device, splits.classes)
    progress = Progress(config.progress, (end - start) * steps_per_epoch, config.num_epochs)

    def on_step(lr: float) -> None:
        run.step_lrs.append(lr)
        progress.step()

    try:
        for epoch in range(start + 1, end + 1):
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
            check_finite(epoch, row, trained["first_bad_step"], model, config, chosen, run_dir)
            history.append(row)
            save_checkpoint(run_dir, model, optimizer, scheduler, config, epoch, history, data_record)
            write_history(run_dir, history)
            progress.end_epoch(history)
    finally:
        progress.close()
    if run.finished:
        write_weights(run_dir, model)
    return run


def check_batch_size(config: TrainConfig, train_images: int) -> None:
    """A batch larger than the training set would make every epoch one short batch."""
    if config.batch_size > train_images:
        raise ConfigError(
            f"batch_size={config.batch_size} is larger than the {train_images:,} training images "
            f"(train_subset={config.train_subset}, val_size={config.val_size}): choose a "
            f"batch_size of at most {train_images}, or more training images.")


def describe_splits(data: CIFAR10Data, splits: Splits) -> dict[str, Any]:
    """What a run trained and measured on, for config.json and the checkpoint."""
    return {"folder": str(data.folder), "fingerprint": splits.fingerprint,
            "official": data.official, "synthetic": data.synthetic, "train": len(splits.train),
            "val": len(splits.val) if splits.val else 0, "test": len(splits.test),
            "classes": list(splits.classes)}


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
