"""The training loop: the seed's recipe (Ranger, OneCycleLR, cross-entropy), its schedule bug fixed.

Notebook 03 shows `train_epoch`, one pass over the training batches, and plots
the schedule (`schedule_trace`); 02 and 05 draw its learning rates
(`learning_rates`). The pieces a run is built from are here too: the optimizer,
the scheduler, the model as it runs (compiled where chosen), what every epoch
records (steps.csv's and branch_weights.csv's rows) and the checks made before
a run starts. `fit` (nbhelpers.runs.training) runs the loop epoch after epoch
into a run folder; the evaluation after every epoch is nbhelpers.evaluation's.

    model, step_model, optimizer, chosen = build_training(config, device)
    scheduler = build_scheduler(optimizer, config, len(train_loader))
    trained = train_epoch(step_model, train_loader, optimizer, scheduler, per_batch=True,
                          precision=chosen["precision"], channels_last=chosen["channels_last"])
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import OneCycleLR

from .config import ConfigError, TrainConfig, build_model
from .data import CifarLoader, CIFAR10Data, Split, Splits, balanced_indices
from .evaluation import EVAL_BATCH_SIZE, autocast, collect_branch_weights
from .ranger import Ranger
from .runtime import total_memory

__all__ = ["build_optimizer", "build_scheduler", "build_training", "check_optimizer_state",
           "check_fits_in_memory", "schedule_trace", "learning_rates", "train_epoch", "beta1_of",
           "STEP_ROWS_PER_EPOCH", "step_rows", "branch_weight_rows", "BRANCH_PROBE_IMAGES", "branch_probe",
           "eval_splits", "check_batch_size", "describe_splits"]


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


def eval_splits(splits: Splits, device: torch.device) -> dict[str, CifarLoader]:
    """A loader per split measured after every epoch: the validation split (if any), then test."""
    measured = [("val", splits.val), ("test", splits.test)] if splits.val else [("test", splits.test)]
    return {name: CifarLoader(split, EVAL_BATCH_SIZE, train=False, device=device)
            for name, split in measured}


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
