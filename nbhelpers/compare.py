"""Optimizers side by side: on a 2-D toy problem, inside one real layer, and as whole training runs.

    runs = load_runs(["runs/optimizers-small/ranger-batch/run", ...])
    settings = group_settings(runs)            # the runs of one setting over its seeds
    print(markdown_table(settings))            # final test accuracy: mean and spread over seeds
    paired_differences(settings, "scheduler_step", "batch", "epoch")   # real or a tie, each

Notebook 03 uses the first parts to make Ranger's pieces concrete (Lookahead's
fast and slow weights, gradient centralization on a conv layer's gradient, the
step RAdam's r_t lets through; the schedule's learning rate and beta1 per step
come from nbhelpers.train.schedule_trace); notebook 05 the last, on the run
folders of a sweep (nbhelpers.jobs.sweep), each setting repeated over several seeds.
"""
from __future__ import annotations

import copy
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .config import make_config
from .ranger import Ranger, centralized, rectification_term
from .runs.folder import CONFIG, HISTORY, STEPS, read_history, read_table

# --------------------------------------------------------------------------
# Lookahead on a 2-D problem
# --------------------------------------------------------------------------

# A long, narrow valley lying diagonally: the loss is 0.05 * (0.5 u^2 + 8 v^2) with
# u, v the coordinates along and across it, so across is 16 times steeper than along.
VALLEY_START = (-3.0, -1.0)


def valley_loss(points: torch.Tensor) -> torch.Tensor:
    """The toy loss at points of shape (..., 2); its minimum is 0 at (0, 0)."""
    x, y = points[..., 0], points[..., 1]
    along, across = (x + y) / math.sqrt(2), (x - y) / math.sqrt(2)
    return 0.05 * (0.5 * along ** 2 + 8 * across ** 2)


@dataclass
class Path2D:
    fast: torch.Tensor   # (steps + 1 + syncs, 2): every fast weight, incl. the one just before each sync
    slow: torch.Tensor   # (syncs + 1, 2): the slow weights, from the start and after each sync
    loss: list[float]    # the loss at the weights after every step (what the model would use)


def ranger_path_2d(alpha: float = 0.5, k: int = 6, lr: float = 1.0, steps: int = 150,
                   noise: float = 0.2, seed: int = 0) -> Path2D:
    """Ranger's weights on the valley, gradients with Gaussian noise (as minibatches give).

    Ranger copies the slow weights over the fast ones at every k-th step, so the fast
    weights just before that sync are recovered from the slow weights' move:
    slow_new = slow_old + alpha * (fast - slow_old).
    """
    generator = torch.Generator().manual_seed(seed)
    point = torch.tensor(VALLEY_START, requires_grad=True)
    optimizer = Ranger([point], lr=lr, alpha=alpha, k=k)
    fast, slow, losses = [point.detach().clone()], [point.detach().clone()], []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        valley_loss(point).backward()
        point.grad += noise * torch.randn(2, generator=generator)
        slow_before = slow[-1]
        optimizer.step()
        if step % k == 0:
            slow_now = optimizer.state[point]["slow_buffer"].clone()
            if alpha > 0:
                fast.append(slow_before + (slow_now - slow_before) / alpha)
            slow.append(slow_now)
        fast.append(point.detach().clone())
        losses.append(valley_loss(point.detach()).item())
    return Path2D(torch.stack(fast), torch.stack(slow), losses)


# --------------------------------------------------------------------------
# Gradient centralization on a real layer
# --------------------------------------------------------------------------

@dataclass
class Centralization:
    """What gradient centralization does to one weight's gradient, one value per output unit."""

    parameter: str
    mean_before: torch.Tensor  # the mean of each output unit's gradient, as backward gives it
    mean_after: torch.Tensor   # the same after centralization (zero, up to rounding)
    removed: torch.Tensor      # the share of each unit's squared gradient norm that GC takes away


def gradient_of_one_batch(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          parameter: str) -> torch.Tensor:
    """The gradient of one parameter on one training batch, as training computes it.

    A copy of the model runs in training mode (batch statistics, dropout), so
    the model itself, BatchNorm's running statistics included, stays as it was.
    The batch goes to the model's device; the gradient comes back as float32 on the CPU.
    """
    model = copy.deepcopy(model).train()
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    F.cross_entropy(model(images.to(device)), labels.to(device)).backward()
    return dict(model.named_parameters())[parameter].grad.detach().float().cpu()


def centralization_effect(parameter: str, grad: torch.Tensor) -> Centralization:
    """Each output unit's gradient before and after Ranger's centralization (nbhelpers.ranger)."""
    before, after = grad.flatten(1), centralized(grad).flatten(1)
    return Centralization(parameter, before.mean(dim=1), after.mean(dim=1),
                          1 - after.pow(2).sum(dim=1) / before.pow(2).sum(dim=1))


# --------------------------------------------------------------------------
# The step RAdam's rectification lets through, over a whole run
# --------------------------------------------------------------------------

RANGER_BETA2 = 0.999  # Ranger's default, the seed's


@dataclass
class Peak:
    """The schedule's highest learning rate, and how much of it r_t lets through there."""

    step: int       # counted from 1, as the optimizer counts
    lr: float
    r_t: float

    @property
    def effective_lr(self) -> float:
        return self.lr * self.r_t


def effective_learning_rates(lrs: Sequence[float], beta2: float = RANGER_BETA2) -> list[float]:
    """lr x r_t at every step: the learning rate that Adam's rectified step really gets.

    NaN for the first steps, where rho_t <= 5 and Ranger takes plain momentum steps instead.
    """
    return [lr * rectification_term(step, beta2) if step > 5 else math.nan
            for step, lr in enumerate(lrs, start=1)]


def peak_of(lrs: Sequence[float], beta2: float = RANGER_BETA2) -> Peak:
    """Where the schedule peaks (the first step at its highest learning rate) and r_t there."""
    index = max(range(len(lrs)), key=lambda i: (lrs[i], -i))
    return Peak(index + 1, lrs[index], rectification_term(index + 1, beta2))


# --------------------------------------------------------------------------
# Whole runs side by side, each setting over several seeds
# --------------------------------------------------------------------------

@dataclass
class RunSummary:
    """One run folder, read back: its configuration, its tables and the numbers 05 compares."""

    folder: Path
    config: dict[str, Any]
    history: list[dict[str, float]]
    steps: list[dict[str, float]] = field(default_factory=list)  # steps.csv (empty for older runs)
    label: str = ""                     # what sets its setting apart from the others, e.g. "adamw, epoch"
    varying: dict[str, Any] | None = None  # the parameters but the seed that differ between the runs

    @property
    def final_acc(self) -> float:
        return self.history[-1]["test_acc"]

    @property
    def seed(self) -> int:
        return self.config["rand_seed"]

    @property
    def seconds_per_epoch(self) -> float:
        return sum(row["seconds"] for row in self.history) / len(self.history)

    @property
    def finished(self) -> bool:
        return len(self.history) == self.config["num_epochs"]


# Parameters that say where or how a run was made, not what it computed: never a label.
# The seed is no label either: runs that differ only in it are one setting, repeated.
_NOT_LABELS = {"run_dir", "data_dir", "download", "resume", "progress", "compile", "size", "rand_seed"}


def load_runs(folders: Sequence[str | Path]) -> list[RunSummary]:
    """Read run folders (config.json, history.csv, steps.csv) and label each by what differs."""
    runs = []
    for folder in map(Path, folders):
        if not (folder / CONFIG).is_file():
            raise FileNotFoundError(f"{folder} is not a run folder: it has no {CONFIG}")
        config = json.loads((folder / CONFIG).read_text())["config"]
        history = read_history(folder) if (folder / HISTORY).is_file() else []
        if not history:
            raise FileNotFoundError(f"{folder} has no finished epoch yet (no history.csv)")
        steps = read_table(folder / STEPS) if (folder / STEPS).is_file() else []
        runs.append(RunSummary(folder, make_config(**config).to_dict(), history, steps))
    varying = [name for name in runs[0].config if name not in _NOT_LABELS
               and len({json.dumps(run.config[name]) for run in runs}) > 1] if runs else []
    for run in runs:
        run.varying = {name: run.config[name] for name in varying}
        run.label = ", ".join(str(value) for value in run.varying.values()) or "all runs"
    return runs


@dataclass(frozen=True)
class Spread:
    """Values of several seeds: their mean and spread (the sample standard deviation; NaN for one).

    Written "mean ± spread", or the mean alone for a single seed.
    """

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def spread(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    def __str__(self) -> str:
        if len(self.values) == 1:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} ± {self.spread:.2f}"


def compare_spreads(first: Spread, second: Spread) -> str:
    """'higher', 'lower', 'tie' (mean ± spread overlap), or 'unknown' (a single seed: no spread)."""
    if len(first.values) < 2 or len(second.values) < 2:
        return "unknown"
    if abs(first.mean - second.mean) <= first.spread + second.spread:
        return "tie"
    return "higher" if first.mean > second.mean else "lower"


@dataclass
class Setting:
    """The runs of one setting: alike in everything but their seed."""

    label: str
    varying: dict[str, Any]
    runs: list[RunSummary]

    @property
    def finals(self) -> list[float]:
        return [run.final_acc for run in self.runs]

    @property
    def accuracy(self) -> Spread:
        """The final test accuracies over the seeds."""
        return Spread(tuple(self.finals))

    @property
    def mean(self) -> float:
        return self.accuracy.mean

    @property
    def spread(self) -> float:
        """The standard deviation of the final accuracies over the seeds (NaN for one seed)."""
        return self.accuracy.spread


def group_settings(runs: Sequence[RunSummary]) -> list[Setting]:
    """The runs grouped by setting (everything but rand_seed), in the order they first appear."""
    settings: dict[str, Setting] = {}
    for run in runs:
        settings.setdefault(run.label, Setting(run.label, dict(run.varying or {}), [])).runs.append(run)
    for setting in settings.values():
        setting.runs.sort(key=lambda run: run.seed)
    return list(settings.values())


@dataclass
class Difference:
    """first's mean final accuracy minus second's, set against the two settings' spread.

    It is called real when it is larger than the sum of the two spreads (their
    mean ± one standard deviation do not overlap); otherwise a tie. With a
    single seed on either side there is no spread to compare with: unknown.
    """

    first: Setting
    second: Setting

    @property
    def value(self) -> float:
        return self.first.mean - self.second.mean

    @property
    def spread(self) -> float:
        return self.first.spread + self.second.spread

    @property
    def verdict(self) -> str:
        said = compare_spreads(self.first.accuracy, self.second.accuracy)
        return {"unknown": "unknown (one seed: no spread)", "tie": "tie"}.get(said, "real")


def paired_differences(settings: Sequence[Setting], parameter: str, first: Any,
                       second: Any) -> list[Difference]:
    """parameter=first against parameter=second, for each pair of settings alike otherwise.

    E.g. parameter="scheduler_step", first="batch", second="epoch": one
    Difference per optimizer run both ways.
    """
    pairs: dict[tuple, dict[Any, Setting]] = {}
    for setting in settings:
        if parameter in setting.varying:
            rest = tuple((k, v) for k, v in setting.varying.items() if k != parameter)
            pairs.setdefault(rest, {})[setting.varying[parameter]] = setting
    return [Difference(pair[first], pair[second]) for pair in pairs.values()
            if first in pair and second in pair]


def against_the_first(settings: Sequence[Setting]) -> list[Difference]:
    """The first setting of each group against every other, where a group shares all but the
    first varying parameter: e.g. Ranger against each other optimizer, per batch and per epoch."""
    if not settings or not settings[0].varying:
        return []
    parameter = next(iter(settings[0].varying))
    groups: dict[tuple, list[Setting]] = {}
    for setting in settings:
        rest = tuple((k, v) for k, v in setting.varying.items() if k != parameter)
        groups.setdefault(rest, []).append(setting)
    return [Difference(group[0], other) for group in groups.values() for other in group[1:]]


def markdown_table(settings: Sequence[Setting]) -> str:
    """A row per setting: its seeds, the final test accuracy's mean and spread, each seed's.

    Seconds per epoch are listed seed by seed, not averaged: a run slowed by
    another job on the machine then shows as the one that stands out.
    """
    what = ", ".join(settings[0].varying) if settings and settings[0].varying else "setting"
    lines = [f"| {what} | seeds | epochs | final test acc. (%), mean ± sd | each seed's (%) | each seed's seconds per epoch |",
             "| --- | ---: | ---: | ---: | --- | ---: |"]
    for setting in settings:
        epochs = {f"{len(run.history)}" + ("" if run.finished else f" of {run.config['num_epochs']}")
                  for run in setting.runs}
        spread = "" if math.isnan(setting.spread) else f" ± {setting.spread:.2f}"
        lines.append(f"| {setting.label} | {len(setting.runs)} | {', '.join(sorted(epochs))} | "
                     f"{setting.mean:.2f}{spread} | {', '.join(f'{a:.2f}' for a in setting.finals)} | "
                     f"{', '.join(f'{run.seconds_per_epoch:.1f}' for run in setting.runs)} |")
    return "\n".join(lines)


def differences_table(differences: Sequence[Difference]) -> str:
    """A row per difference: its value, the spread it is set against, and the verdict."""
    lines = ["| first | second | difference of means (points) | sum of the two spreads (points) | verdict |",
             "| --- | --- | ---: | ---: | --- |"]
    for difference in differences:
        spread = "" if math.isnan(difference.spread) else f"{difference.spread:.2f}"
        lines.append(f"| {difference.first.label} | {difference.second.label} | "
                     f"{difference.value:+.2f} | {spread} | {difference.verdict} |")
    return "\n".join(lines)


def roughness(run: RunSummary) -> float:
    """How jagged a run's training loss is from one steps.csv row to the next.

    The standard deviation of the row-to-row changes: the slow trend of the
    loss changes little between neighbouring rows, the noise a lot. NaN without steps.csv.
    """
    losses = [row["train_loss"] for row in run.steps]
    changes = [b - a for a, b in zip(losses, losses[1:])]
    return statistics.stdev(changes) if len(changes) > 1 else math.nan
