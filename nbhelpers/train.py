"""Training and evaluation: the seed's recipe, its schedule bug fixed, safe to interrupt.

    run = fit(num_epochs=60)          # or fit(TrainConfig(...)); returns a Run
    run.history                       # one dict per epoch, as in history.csv

A run folder holds everything a run produces:
    config.json     the resolved configuration, versions, device, data fingerprint
    history.csv     one row per epoch: losses, accuracies, learning rate, seconds
    checkpoint.pt   written atomically at every epoch end; resume=True continues from it
    model.pt        the final weights (the last epoch's, not the best test epoch's)
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import OneCycleLR

from .config import AUTO, ConfigError, TrainConfig, make_config
from .data import CifarLoader, CIFAR10Data, Split, Splits, load_cifar10, prepare_splits
from .model import Model
from .progress import Progress
from .ranger import Ranger
from .runtime import RUNS_DIR, device_name, pick_device, seed_everything

EVAL_BATCH_SIZE = 1000  # evaluation needs no gradients: large batches, few launches
CHECKPOINT, HISTORY, CONFIG, WEIGHTS = "checkpoint.pt", "history.csv", "config.json", "model.pt"
# Parameters that may differ between a run and its resumption: they change
# where things are or how progress looks, not what is computed.
RESUMABLE_DIFFERENCES = {"resume", "progress", "run_dir", "data_dir", "download", "compile"}


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ResumeError(RuntimeError):
    """The run folder's checkpoint cannot continue this configuration."""


@dataclass
class Run:
    """What `fit` returns: the trained model and everything it measured."""

    config: TrainConfig
    run_dir: Path
    model: Model
    history: list[dict[str, float]]
    device: torch.device
    classes: tuple[str, ...]
    step_lrs: list[float] = field(default_factory=list)  # lr of each step taken in this call


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


def learning_rates(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate of every training step of a run, without training."""
    optimizer = Ranger([torch.zeros(1, requires_grad=True)], lr=config.learning_rate)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    rates = []
    for _ in range(config.num_epochs):
        for _ in range(steps_per_epoch):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()  # a no-op without gradients; the scheduler expects it first
            if config.scheduler_step == "batch":
                scheduler.step()
        if config.scheduler_step == "epoch":
            scheduler.step()
    return rates


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


@torch.no_grad()
def infer(model: torch.nn.Module, data: Split | CifarLoader, device: torch.device | str | None = None,
          precision: str = "fp32", channels_last: bool = False) -> torch.Tensor:
    """The model's logits (float32, on the CPU) for every image of a split, in order.

    `data` is a Split, or an evaluation CifarLoader already on the device
    (fit keeps one per split, so the images cross to the GPU only once).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = data if isinstance(data, CifarLoader) else \
        CifarLoader(data, EVAL_BATCH_SIZE, train=False, device=device)
    model.eval()
    outputs = []
    for images, _ in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            outputs.append(model(images).float())
    return torch.cat(outputs).cpu()


def evaluate(model, data: Split | CifarLoader, device, precision="fp32",
             channels_last=False) -> dict[str, float]:
    """Mean cross-entropy and accuracy (%) over a whole split."""
    logits = infer(model, data, device, precision, channels_last)
    labels = data.labels.cpu()
    return {"loss": F.cross_entropy(logits, labels).item(),
            "acc": accuracy(logits.argmax(dim=1), labels)}


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return 100 * (predictions == labels).double().mean().item()


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """counts[true, predicted]."""
    flat = labels * num_classes + predictions
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes)


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> torch.Tensor:
    """Accuracy (%) on each true class."""
    counts = confusion_matrix(predictions, labels, num_classes)
    return 100 * counts.diag().double() / counts.sum(dim=1).clamp(min=1)


def most_confident_mistakes(logits: torch.Tensor, labels: torch.Tensor, count: int = 16):
    """Indices of the wrong predictions the model was surest of, surest first."""
    confidence, predictions = logits.softmax(dim=1).max(dim=1)
    wrong = torch.nonzero(predictions != labels).flatten()
    order = confidence[wrong].argsort(descending=True)
    return wrong[order[:count]]


# --------------------------------------------------------------------------
# Run folders: config.json, history.csv, checkpoint.pt, model.pt
# --------------------------------------------------------------------------

def new_run_dir(root: Path = RUNS_DIR) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = root / stamp, 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    return path


def latest_run_dir(root: Path = RUNS_DIR) -> Path:
    """The most recently started run folder under runs/ that holds a config.json."""
    runs = sorted((p for p in root.glob("*") if (p / CONFIG).is_file()),
                  key=lambda p: (p / CONFIG).stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"No run folder with a {CONFIG} under {root}: train one "
                                "first (notebooks/03_train.ipynb), or name run_dir.")
    return runs[-1]


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename it: a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
                    epoch: int, history: list[dict]) -> None:
    state = {"format": 1, "config": config.to_dict(), "epoch": epoch, "history": history,
             "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": _rng_state()}
    atomic_write(run_dir / CHECKPOINT, lambda fh: torch.save(state, fh))


def load_checkpoint(run_dir: Path, device: torch.device) -> dict:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise ResumeError(f"resume=True but {path} does not exist: nothing to resume. "
                          "Set resume=False to start a new run there.")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise ResumeError(f"{path} cannot be read ({type(exc).__name__}: {exc}); it is not "
                          "a checkpoint of this project.") from exc


def check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse a checkpoint made with another architecture or recipe, naming what differs."""
    now = config.to_dict()
    differ = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in now
              if k not in RESUMABLE_DIFFERENCES and saved.get(k) != now[k]]
    if differ:
        raise ResumeError(f"{path} was written with another configuration, so this run "
                          f"cannot continue it ({'; '.join(differ)}). Resume with the "
                          "checkpoint's values, or choose a new run_dir.")


def _versions(device: torch.device) -> dict[str, Any]:
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "device": device_name(device), "python": sys.version.split()[0]}


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
    """
    config = make_config(config, **overrides)
    device = torch.device(device) if device is not None else pick_device()
    seed_everything(config.rand_seed, config.deterministic)

    data = data or load_cifar10(config.data_dir or None, config.download)
    splits = prepare_splits(data, config.train_subset, config.test_subset, config.val_size)
    train_loader = CifarLoader(splits.train, config.batch_size, train=True, device=device,
                               seed=config.rand_seed)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ConfigError(f"train_subset={config.train_subset} gives no full training batch")

    model, step_model, optimizer, chosen = build_training(config, device, len(splits.classes))
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)

    run_dir, history, start = _open_run_dir(config, device, model, optimizer, scheduler)
    _write_config(run_dir, config, chosen, device, splits, steps_per_epoch, data)
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
            if trained["first_bad_step"] >= 0:
                raise TrainingDiverged(
                    f"The training loss became NaN or infinite at epoch {epoch}, step "
                    f"{trained['first_bad_step'] + 1} of {steps_per_epoch}. The run stopped; "
                    f"{run_dir / CHECKPOINT} still holds epoch {epoch - 1}"
                    + (" (none was written yet)" if epoch == 1 else "")
                    + ". Try a smaller max_lr or learning_rate, or precision='fp32'.")
            row = {"epoch": epoch, "train_loss": trained["loss"], "train_acc": trained["acc"]}
            for name, loader in eval_loaders.items():
                result = evaluate(step_model, loader, device, chosen["precision"], chosen["channels_last"])
                row[f"{name}_loss"], row[f"{name}_acc"] = result["loss"], result["acc"]
            row["lr"] = lr
            row["seconds"] = time.perf_counter() - tic
            history.append(row)
            save_checkpoint(run_dir, model, optimizer, scheduler, config, epoch, history)
            write_history(run_dir, history)
            progress.end_epoch(history)
    finally:
        progress.close()
    if history and int(history[-1]["epoch"]) == config.num_epochs:
        atomic_write(run_dir / WEIGHTS, lambda fh: torch.save(model.state_dict(), fh))
    return run


def _open_run_dir(config, device, model, optimizer, scheduler) -> tuple[Path, list, int]:
    """Make a new run folder, or restore every state from its checkpoint when resuming."""
    if not config.resume:
        run_dir = Path(config.run_dir) if config.run_dir else new_run_dir()
        if (run_dir / CHECKPOINT).exists():
            raise ResumeError(f"{run_dir} already holds a run: pass resume=True to continue "
                              "it, or choose another run_dir.")
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir, [], 0
    run_dir = Path(config.run_dir) if config.run_dir else latest_run_dir()
    saved = load_checkpoint(run_dir, device)
    check_resumable(saved.get("config", {}), config, run_dir / CHECKPOINT)
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ResumeError(f"{run_dir / CHECKPOINT} does not fit this model and optimizer: "
                          f"{exc}") from exc
    _set_rng_state(saved["rng"])
    return run_dir, list(saved["history"]), int(saved["epoch"])


def _write_config(run_dir, config, chosen, device, splits: Splits, steps_per_epoch, data) -> None:
    info = {"config": config.to_dict(), "resolved": chosen, **_versions(device),
            "data": {"folder": str(data.folder), "fingerprint": splits.fingerprint,
                     "official": data.official, "train": len(splits.train),
                     "val": len(splits.val) if splits.val else 0, "test": len(splits.test),
                     "classes": list(splits.classes)},
            "steps_per_epoch": steps_per_epoch}
    atomic_write(run_dir / CONFIG, lambda fh: fh.write(json.dumps(info, indent=2).encode()))


# --------------------------------------------------------------------------
# Loading a finished run, for notebook 04
# --------------------------------------------------------------------------

def load_run(run_dir: str | Path | None = None, device: torch.device | str | None = None,
             weights: str = WEIGHTS) -> Run:
    """A trained run from its folder (default: the latest under runs/), model on `device`."""
    run_dir = Path(run_dir) if run_dir else latest_run_dir()
    info = json.loads((run_dir / CONFIG).read_text())
    config = make_config(**info["config"])
    device = torch.device(device) if device is not None else pick_device()
    model = build_model(config, len(info["data"]["classes"]))
    path = run_dir / weights
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:  # an unfinished run: its latest checkpoint
        state = load_checkpoint(run_dir, torch.device("cpu"))["model"]
    model.load_state_dict(state)
    return Run(config, run_dir, model.to(device).eval(), read_history(run_dir), device,
               tuple(info["data"]["classes"]))
