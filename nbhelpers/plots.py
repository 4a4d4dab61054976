"""The figures of the data, the training and the optimizers. Each returns a Figure; `save` writes PNGs.

The figures of a trained model's results (04, 06) are nbhelpers.analysis_plots'.

Images are shown from their uint8 pixels (or un-normalized), never as the
normalized tensors the model sees: those lie in -1..1 and matplotlib would
clip them (the seed's clipping warnings).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .errors import ExplainedError
from .runtime import PROJECT_ROOT


class FiguresError(ExplainedError, OSError):
    """The figures' folder cannot be written."""

MISTAKE, CORRECT = "tab:red", "tab:green"
BRANCH_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


# Set by nbhelpers.notebook.setup when a notebook runs on the synthetic
# stand-in: every figure saved from then on says so above everything else,
# so that no picture of it can pass for CIFAR-10.
_stand_in_mark: str | None = None


def mark_figures(text: str | None) -> None:
    """Stamp `text` on top of every figure `save` writes from now on (None: stop)."""
    global _stand_in_mark
    _stand_in_mark = text


def save(fig: Figure, name: str, *folders: str | Path | None) -> None:
    """Write `fig` as NAME.png into every folder given (relative ones under the project)."""
    if _stand_in_mark and not getattr(fig, "stand_in_marked", False):
        fig.text(0.5, 1.0, _stand_in_mark, ha="center", va="bottom", color="tab:red",
                 fontsize=11, fontweight="bold")
        fig.stand_in_marked = True  # shown inline after the cell too: stamped once
    for folder in folders:
        if folder in (None, ""):
            continue
        folder = Path(folder)
        folder = folder if folder.is_absolute() else PROJECT_ROOT / folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fig.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")
        except OSError as exc:  # a file of that name, a symlink loop, a read-only folder
            raise FiguresError(f"figures_dir={str(folder)!r} cannot hold figures ({exc.strerror or exc}): "
                               "choose another folder (`-p figures_dir PATH`).") from None


def as_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) uint8 or 0..1 float to an (H, W, 3) array imshow takes without clipping."""
    array = image.detach().cpu()
    if array.is_floating_point():
        array = array.clamp(0, 1)
    return array.permute(1, 2, 0).numpy()


def image_grid(images: torch.Tensor, titles: Sequence[str] | None = None, ncols: int = 8,
               colors: Sequence[str] | None = None, size: float = 1.5, suptitle: str = "") -> Figure:
    """Images in a grid, each with an optional title (coloured, e.g. red for mistakes)."""
    nrows = max(1, -(-len(images) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * (size + 0.35)), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= len(images):
            continue
        ax.imshow(as_hwc(images[index]), interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[index], fontsize=8,
                         color=colors[index] if colors is not None else "black")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def class_examples(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                   per_class: int = 8) -> Figure:
    """The first `per_class` images of every class, one row per class, names on the left."""
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 1.1, len(classes) * 1.15))
    for row, name in enumerate(classes):
        picks = torch.nonzero(labels == row).flatten()[:per_class]
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(picks):
                ax.imshow(as_hwc(images[picks[col]]), interpolation="nearest")
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return fig


def class_balance(counts: dict[str, Sequence[int]], classes: Sequence[str]) -> Figure:
    """Images per class for each split, as grouped bars."""
    fig, ax = plt.subplots(figsize=(9, 3.2))
    width = 0.8 / len(counts)
    x = np.arange(len(classes))
    for i, (split, values) in enumerate(counts.items()):
        bars = ax.bar(x + i * width, values, width, label=split)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x + width * (len(counts) - 1) / 2, classes, rotation=30)
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_title("Images per class")
    # Headroom above the bars for the legend, so that it covers none of them.
    ax.set_ylim(0, 1.25 * max(max(values) for values in counts.values()))
    ax.legend(ncols=len(counts), loc="upper right")
    fig.tight_layout()
    return fig


def _per_epoch_axes(axes, titles: Sequence[str], ylabels: Sequence[str]) -> None:
    """Title, labels and grid of panels whose x axis counts epochs (whole numbers)."""
    for ax, title, ylabel in zip(axes, titles, ylabels):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)


def training_curves(history: Sequence[dict[str, float]]) -> Figure:
    """Loss, accuracy and learning rate per epoch, for every split measured."""
    epochs = [row["epoch"] for row in history]
    splits = [s for s in ("train", "val", "test") if f"{s}_loss" in history[0]]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for split in splits:
        axes[0].plot(epochs, [r[f"{split}_loss"] for r in history], marker=".", label=split)
        axes[1].plot(epochs, [r[f"{split}_acc"] for r in history], marker=".", label=split)
    axes[2].plot(epochs, [r["lr"] for r in history], marker=".", color="tab:purple")
    _per_epoch_axes(axes, ("Loss", "Accuracy", "Learning rate (first step of each epoch)"),
                    ("cross-entropy (nats per image)", "accuracy (%)", "learning rate"))
    axes[0].legend()
    axes[1].legend()
    last = history[-1]
    axes[1].annotate(f"final test {last['test_acc']:.2f}%", (last["epoch"], last["test_acc"]),
                     textcoords="offset points", xytext=(-90, -25), fontsize=8,
                     arrowprops=dict(arrowstyle="->"))
    fig.tight_layout()
    return fig


def learning_rate_schedules(schedules: dict[str, Sequence[float]], steps_per_epoch: int) -> Figure:
    """Learning rate against epochs for several schedules (e.g. per batch vs the seed's per epoch)."""
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for label, rates in schedules.items():
        ax.plot(np.arange(len(rates)) / steps_per_epoch, rates, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("OneCycleLR, stepped " + " vs ".join(schedules) if len(schedules) > 1
                 else f"OneCycleLR, stepped {next(iter(schedules))}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# Optimizers side by side (notebooks 03 and 05; helper functions in nbhelpers.compare)
# --------------------------------------------------------------------------

def rectification(steps: Sequence[int], rho: Sequence[float], r: Sequence[float], threshold: float,
                  beta2: float, marks: dict[str, int] | None = None) -> Figure:
    """RAdam's rectification term r_t against the step, with the steps where it is plain momentum."""
    fig, ax = plt.subplots(figsize=(8, 3.4))
    used = [t for t, value in zip(steps, rho) if value > threshold]
    momentum_until = used[0] if used else steps[-1]
    ax.axvspan(steps[0], momentum_until, color="tab:orange", alpha=0.2,
               label=f"rho_t <= {threshold:g}: plain momentum (steps 1-{momentum_until - 1})")
    shown = [value if rho_t > threshold else float("nan") for value, rho_t in zip(r, rho)]  # r_t where it is used
    ax.plot(steps, shown, color="tab:blue", label="r_t: share of Adam's step taken")
    for (label, step), color in zip((marks or {}).items(), ("tab:green", "tab:red", "tab:purple")):
        ax.axvline(step, color=color, linestyle="--", label=f"{label} (step {step:,})")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("optimizer step (log scale)")
    ax.set_ylabel("rectification term r_t")
    ax.set_title(f"RAdam's rectification with beta2 = {beta2:g}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def lookahead_paths(lookahead, plain, loss_fn, k: int, alpha: float) -> Figure:
    """Ranger's weights on a 2-D toy loss with Lookahead (`lookahead`) and without (`plain`).

    Both are nbhelpers.compare.Path2D. Left: the paths over the loss's contours, the slow
    weights as red dots; right: the loss of the weights after each step.
    """
    fig, (ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.1, 1]})
    points = torch.cat([lookahead.fast, plain.fast])
    low, high = points.min(0).values - 0.5, points.max(0).values + 0.5
    grid_x, grid_y = torch.meshgrid(torch.linspace(low[0], high[0], 200),
                                    torch.linspace(low[1], high[1], 200), indexing="xy")
    ax.contour(grid_x, grid_y, loss_fn(torch.stack([grid_x, grid_y], dim=-1)), levels=15,
               colors="lightgray", linewidths=0.8)
    without, with_ = "without Lookahead (alpha = 1)", f"with Lookahead (k = {k}, alpha = {alpha:g})"
    ax.plot(plain.fast[:, 0], plain.fast[:, 1], ".-", color="tab:gray", markersize=2,
            linewidth=0.7, label=f"{without}")
    ax.plot(lookahead.fast[:, 0], lookahead.fast[:, 1], ".-", color="tab:blue", markersize=2,
            linewidth=0.7, label=f"{with_}: fast weights")
    ax.plot(lookahead.slow[:, 0], lookahead.slow[:, 1], "o-", color="tab:red", markersize=4,
            linewidth=1.2, label=f"slow weights (every {k} steps)")
    ax.plot(0, 0, "k*", markersize=10, label="minimum")
    ax.set_xlabel("weight 1")
    ax.set_ylabel("weight 2")
    ax.set_title("Ranger on a narrow valley with noisy gradients")
    ax.legend(fontsize=7, loc="lower right")
    for path, label, color in ((plain, without, "tab:gray"), (lookahead, with_, "tab:blue")):
        loss_ax.plot(range(1, len(path.loss) + 1), path.loss, color=color, label=label)
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("optimizer step")
    loss_ax.set_ylabel("toy loss (log scale)")
    loss_ax.set_title("Loss of the weights after each step")
    loss_ax.grid(alpha=0.3, which="both")
    loss_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def one_cycle(traces: dict[str, dict[str, Sequence[float]]], steps_per_epoch: int) -> Figure:
    """Learning rate and beta1 (momentum) against epochs, for each schedule given."""
    fig, (lr_ax, beta_ax) = plt.subplots(1, 2, figsize=(12, 3.4))
    for label, trace in traces.items():
        epochs = np.arange(1, len(trace["lr"]) + 1) / steps_per_epoch
        lr_ax.plot(epochs, trace["lr"], label=label)
        beta_ax.plot(epochs, trace["beta1"], label=label)
    lr_ax.set_ylabel("learning rate")
    beta_ax.set_ylabel("beta1 (momentum coefficient)")
    lr_ax.set_title("Learning rate")
    beta_ax.set_title("beta1: Ranger's momentum")
    steps = len(next(iter(traces.values()))["lr"])
    fig.suptitle(f"OneCycleLR stepped {' vs '.join(traces)}: {steps:,} steps over "
                 f"{steps / steps_per_epoch:g} epochs", fontsize=11)
    for ax in (lr_ax, beta_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(traces) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_comparison(runs: Sequence) -> Figure:
    """Training loss, test loss and test accuracy per epoch of several runs, overlaid.

    `runs` are nbhelpers.compare.RunSummary: the colour follows the first parameter that
    differs between them (e.g. the optimizer), the line style the second (e.g. the schedule).
    """
    varying = list(runs[0].varying) if runs and runs[0].varying else []
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ("-", "--", ":", "-.")

    def index_of(name: str | None, run) -> int:
        if name is None:
            return runs.index(run)
        values = list(dict.fromkeys(str(r.varying[name]) for r in runs))
        return values.index(str(run.varying[name]))

    color_by = varying[0] if varying else None
    style_by = varying[1] if len(varying) > 1 else None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run in runs:
        epochs = [row["epoch"] for row in run.history]
        look = dict(color=palette[index_of(color_by, run) % len(palette)], marker=".",
                    linestyle=styles[index_of(style_by, run) % len(styles)] if style_by else "-")
        for ax, key in zip(axes, ("train_loss", "test_loss", "test_acc")):
            ax.plot(epochs, [row[key] for row in run.history], label=run.label, **look)
    _per_epoch_axes(axes, ("Training loss", "Test loss", "Test accuracy"),
                    ("cross-entropy (nats)", "cross-entropy (nats)", "accuracy (%)"))
    axes[2].legend(fontsize=8, title=", ".join(varying) or None, title_fontsize=8,
                   loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the curves, not on them
    fig.tight_layout()
    return fig
