"""Optimizers side by side: on a 2-D toy problem, and as whole training runs.

    runs = load_runs(["runs/optimizers-demo/ranger-batch/run", ...])
    print(markdown_table(runs))                 # final and best test accuracy, seconds per epoch
    plots.run_comparison(runs)                  # the curves overlaid

Notebook 03 uses the first part to make Lookahead concrete (its fast and slow weights;
the schedule's learning rate and beta1 per step come from nbhelpers.train.schedule_trace);
notebook 05 the second, on the run folders of a sweep (nbhelpers.sweep).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import make_config
from .ranger import Ranger
from .runs import CONFIG, HISTORY, read_history

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
# Whole runs side by side
# --------------------------------------------------------------------------

@dataclass
class RunSummary:
    """One run folder, read back: its configuration, its history and the numbers 05 compares."""

    folder: Path
    config: dict[str, Any]
    history: list[dict[str, float]]
    label: str = ""                     # what sets it apart from the others, e.g. "adamw, epoch"
    varying: dict[str, Any] | None = None  # the parameters that differ between the runs compared

    @property
    def final_acc(self) -> float:
        return self.history[-1]["test_acc"]

    @property
    def best(self) -> dict[str, float]:
        return max(self.history, key=lambda row: row["test_acc"])

    @property
    def seconds_per_epoch(self) -> float:
        return sum(row["seconds"] for row in self.history) / len(self.history)

    @property
    def finished(self) -> bool:
        return len(self.history) == self.config["num_epochs"]


# Parameters that say where or how a run was made, not what it computed: never a label.
_NOT_LABELS = {"run_dir", "data_dir", "download", "resume", "progress", "compile", "size"}


def load_runs(folders: Sequence[str | Path]) -> list[RunSummary]:
    """Read run folders (each with config.json and history.csv) and label each by what differs."""
    runs = []
    for folder in map(Path, folders):
        if not (folder / CONFIG).is_file():
            raise FileNotFoundError(f"{folder} is not a run folder: it has no {CONFIG}")
        config = json.loads((folder / CONFIG).read_text())["config"]
        history = read_history(folder) if (folder / HISTORY).is_file() else []
        if not history:
            raise FileNotFoundError(f"{folder} has no finished epoch yet (no history.csv)")
        runs.append(RunSummary(folder, make_config(**config).to_dict(), history))
    varying = [name for name in runs[0].config if name not in _NOT_LABELS
               and len({json.dumps(run.config[name]) for run in runs}) > 1] if runs else []
    for run in runs:
        run.varying = {name: run.config[name] for name in varying}
        run.label = ", ".join(str(value) for value in run.varying.values()) or run.folder.name
    return runs


def markdown_table(runs: Sequence[RunSummary]) -> str:
    """Final test accuracy, the best epoch's, and seconds per epoch, a row per run."""
    what = ", ".join(runs[0].varying) if runs and runs[0].varying else "run"
    lines = [f"| {what} | epochs | final test acc. (%) | best test acc. (%) at epoch | seconds per epoch |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for run in runs:
        epochs = f"{len(run.history)}" + ("" if run.finished else f" of {run.config['num_epochs']}")
        lines.append(f"| {run.label} | {epochs} | {run.final_acc:.2f} | "
                     f"{run.best['test_acc']:.2f} at {run.best['epoch']:.0f} | {run.seconds_per_epoch:.1f} |")
    return "\n".join(lines)


def paired_differences(runs: Sequence[RunSummary], parameter: str, first: Any,
                       second: Any) -> dict[str, float]:
    """Final accuracy with parameter=first minus with parameter=second, for runs alike otherwise.

    Keyed by the label of what the pair shares, e.g. {"ranger": 8.1, "sgd": 2.0} for
    parameter="scheduler_step", first="batch", second="epoch".
    """
    def rest(run):
        return tuple((k, v) for k, v in run.varying.items() if k != parameter)
    by_rest: dict[tuple, dict[Any, RunSummary]] = {}
    for run in runs:
        by_rest.setdefault(rest(run), {})[run.config[parameter]] = run
    return {", ".join(str(v) for _, v in key) or parameter: pair[first].final_acc - pair[second].final_acc
            for key, pair in by_rest.items() if first in pair and second in pair}
