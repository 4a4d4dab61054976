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

from .config import ConfigError, TrainConfig, build_model, make_config
from .data import CifarLoader, CIFAR10Data, Split, Splits, balanced_indices, load_cifar10, prepare_splits
from .errors import ExplainedError
from .evaluation import EVAL_BATCH_SIZE, autocast, collect_branch_weights, evaluate
from .progress import Progress, RunEstimate
from .ranger import Ranger
from .runs.folder import (CHECKPOINT, KEPT_ON_RESUME, ResumeError, ResumePoint, Run, choose_run_dir,
                   environment, restore_missing_files, resume_point, save_checkpoint,
                   set_rng_state, write_config, write_tables, write_weights, writing)
from .runtime import device_name, pick_device, seed_everything, synchronize, total_memory


class TrainingDiverged(ExplainedError, FloatingPointError):
    """An epoch was not finite throughout; the last finite epoch's checkpoint is kept."""


# --------------------------------------------------------------------------
# Building the pieces
# --------------------------------------------------------------------------

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


def build_training(config: TrainConfig, device: torch.device, num_classes: int = 10,
                   chosen: dict[str, Any] | None = None):
    """The model (plain, for checkpoints), the one to run (compiled where chosen), the optimizer,
    and what was chosen.

    `chosen` is what the run resolved (`settings_for`; default: the "auto" choices
    for `device`). The optimizer is made before compilation runs: it lays the
    parameters out flat, and a compiled graph should see them where they will stay.
    """
    chosen = chosen or config.resolved(device)
    model = build_model(config, num_classes).to(device)
    if chosen["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    # Static shapes: one graph each for the training batch, the last smaller
    # batch and evaluation, instead of slower shape-generic kernels.
    step_model = torch.compile(model, dynamic=False) if chosen["compile"] else model
    return model, step_model, optimizer, chosen


def settings_for(config: TrainConfig, device: torch.device, point: ResumePoint | None) -> dict[str, Any]:
    """What the run trains with: the "auto" choices made for `device`, and on a CPU its thread count.

    A resumed run keeps what it resolved when it began (KEPT_ON_RESUME: precision,
    memory layout, threads), since each of them changes the numbers: resumed on
    another CPU or with another thread count, it still computes what an
    uninterrupted run computes. It says so when that differs from this machine's choice.
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


def check_optimizer_state(saved: dict[str, Any], config: TrainConfig) -> None:
    """Refuse an optimizer state that is not `config.optimizer`'s (it would fail at the first step)."""
    probe = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(probe, config)
    probe.weight.grad, probe.bias.grad = torch.zeros(2, 2), torch.zeros(2)
    optimizer.step()
    expected = {key for state in optimizer.state.values() for key in state}
    found = {key for state in saved.get("state", {}).values() for key in state}
    if found and found != expected:
        raise ValueError(f"its optimizer state holds {sorted(found)}, but {config.optimizer} "
                         f"keeps {sorted(expected)}")


def check_fits_in_memory(config: TrainConfig, device: torch.device) -> None:
    """Refuse sizes that cannot fit on the device, before anything is allocated.

    A lower bound: every parameter with its gradient and three optimizer states
    (Ranger's two moments and Lookahead's slow copy) in float32, and the first
    block's conv and BatchNorm outputs for one batch.
    """
    available = total_memory(device)
    if available is None:
        return
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            parameters = sum(p.numel() for p in build_model(config).parameters())
    except RuntimeError:  # so large that even the shapes' sizes overflow
        parameters = 2**63
    activations = 2 * config.batch_size * config.num_conv_layer * config.backbone_out_channels * 32 * 32
    needed = 4 * (5 * parameters + activations)
    if needed > available:
        raise ConfigError(
            f"backbone_out_channels={config.backbone_out_channels}, hidden_size={config.hidden_size} "
            f"and batch_size={config.batch_size} need at least {needed / 2**30:,.0f} GiB to train "
            f"({parameters:,.3g} parameters), more than this {device.type} device's "
            f"{available / 2**30:,.0f} GiB. Choose smaller values (the seed's: 1024, 512 and 128).")


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
            trace["beta1"].append(beta1_of(group))
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
    """One pass over the training batches: forward, loss, backward, optimizer step, scheduler step.

    This is the loop `fit` runs, and the one notebook 03 shows. The seed's bug
    was one line of it: its `scheduler.step()` ran after the loop, once per
    epoch (per_batch=False repeats that). Nothing is read back from the device
    per step: the losses stay there until the one synchronisation at the end.
    `on_step(param_group)` sees the learning rate and beta1 each step used.
    """
    model.train()
    device = loader.device
    step_losses = torch.zeros(len(loader), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for step, (images, labels) in enumerate(loader):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(images)                     # forward
            loss = F.cross_entropy(logits, labels)     # the loss of this batch
        optimizer.zero_grad(set_to_none=True)
        loss.backward()                                # gradients
        optimizer.step()                               # Ranger's update, at this step's lr
        if on_step is not None:
            on_step(optimizer.param_groups[0])
        if per_batch:
            scheduler.step()                           # one cycle: the next step's lr and beta1
        step_losses[step] = loss.detach()
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)
    if not per_batch:
        scheduler.step()                               # the seed's way: once per epoch
    # The one synchronisation of the epoch.
    *losses, correct_total = torch.cat([step_losses.double(), correct.double().view(1)]).tolist()
    not_finite = [step for step, value in enumerate(losses) if not math.isfinite(value)]
    return {"loss": sum(losses) / len(losses), "acc": 100 * correct_total / max(seen, 1),
            "first_bad_step": not_finite[0] if not_finite else -1, "step_losses": losses}


def beta1_of(group: dict[str, Any]) -> float:
    """beta1 of Adam-like optimizers (Ranger's too), SGD's momentum: what OneCycleLR cycles."""
    return group["betas"][0] if "betas" in group else group["momentum"]


# steps.csv keeps at least this many rows per epoch (every step, if an epoch has fewer).
STEP_ROWS_PER_EPOCH = 50


def step_rows(epoch: int, steps_before: int, losses: list[float], lrs: list[float],
              beta1s: list[float]) -> list[dict[str, float]]:
    """steps.csv's rows for one epoch: every few steps, the training loss over those steps."""
    stride = max(1, len(losses) // STEP_ROWS_PER_EPOCH)
    ends = list(range(stride, len(losses) + 1, stride))
    if ends[-1] != len(losses):
        ends.append(len(losses))  # the last few steps, fewer than a stride
    return [{"step": steps_before + end, "epoch": epoch,
             "train_loss": sum(losses[start:end]) / (end - start),
             "lr": lrs[end - 1], "beta1": beta1s[end - 1]}
            for start, end in zip([0] + ends[:-1], ends)]


def branch_weight_rows(epoch: int, model, probe: Split, device: torch.device,
                       chosen: dict[str, Any]) -> list[dict[str, float]]:
    """branch_weights.csv's rows: every block's mean branch weight (and mean |weight|) on `probe`."""
    weights = collect_branch_weights(model, probe, device, chosen["precision"], chosen["channels_last"])
    means, sizes = weights.mean(dim=1).tolist(), weights.abs().mean(dim=1).tolist()
    return [{"epoch": epoch, "block": block, "branch": branch, "mean": means[block][branch],
             "mean_abs": sizes[block][branch]}
            for block in range(len(means)) for branch in range(len(means[block]))]


# Test images on which every epoch's branch weights are recorded (all of them in a small test set).
BRANCH_PROBE_IMAGES = 1000


def branch_probe(splits: Splits) -> Split:
    test = splits.test
    if len(test) <= BRANCH_PROBE_IMAGES:
        return test
    return test.subset(balanced_indices(test.labels, BRANCH_PROBE_IMAGES, len(splits.classes)))


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
            restore_missing_files(run_dir, point, info, finished=start >= config.num_epochs)
        run = Run(config, run_dir, model, tables.get("history", []), device, splits.classes,
                  info=info, steps=tables.get("steps", []),
                  branch_weights=tables.get("branch_weights", []))
        end = min(config.num_epochs, stop_after or config.num_epochs)
        train_epochs(run, range(start + 1, end + 1), step_model, train_loader, optimizer,
                     scheduler, eval_splits(splits, device), probe)
        if run.finished and start < config.num_epochs:
            write_weights(run_dir, model, info)
    return run


def eval_splits(splits: Splits, device: torch.device) -> dict[str, CifarLoader]:
    """A loader per split measured after every epoch: the validation split (if any), then test."""
    measured = [("val", splits.val), ("test", splits.test)] if splits.val else [("test", splits.test)]
    return {name: CifarLoader(split, EVAL_BATCH_SIZE, train=False, device=device)
            for name, split in measured}


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
