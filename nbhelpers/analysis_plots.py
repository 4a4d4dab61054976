"""The figures of a model's results: how often it is right, how sure, what its branch mixing does.

Notebooks 04 and 06 (and 02, for the untrained model's branch weights) draw
these; nbhelpers.plots holds the figures of the data, the training and the
optimizers, and what every figure shares (`save`, `image_grid`).
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .plots import BRANCH_COLORS, CORRECT, MISTAKE, as_hwc, image_grid

WEIGHT_LABEL = "branch weight a (a factor, no unit)"


def confusion_matrix(counts: torch.Tensor, classes: Sequence[str]) -> Figure:
    """Rows: true class; columns: predicted class; each cell the % of its row (dark = many)."""
    percent = (100 * counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    for (row, col), value in np.ndenumerate(percent):
        ax.text(col, row, f"{value:.0f}", ha="center", va="center", fontsize=8,
                color="white" if value > 50 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (% of each true class)")
    fig.colorbar(image, ax=ax, fraction=0.046, label="% of the true class's test images")
    fig.tight_layout()
    return fig


def per_class_accuracy(accuracies: torch.Tensor, classes: Sequence[str], overall: float) -> Figure:
    fig, ax = plt.subplots(figsize=(9, 3.2))
    bars = ax.bar(classes, accuracies.tolist(), color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.axhline(overall, color="tab:red", linestyle="--")
    ax.set_ylim(0, 105)
    ax.set_xlabel("true class")
    ax.set_ylabel("accuracy (%)")
    # The overall value goes in the title: a legend would cover a bar somewhere.
    ax.set_title(f"Test accuracy per class (red dashed line: overall, {overall:.2f}%)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def prediction_grid(images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
                    classes: Sequence[str], confidences: torch.Tensor | None = None,
                    ncols: int = 8, suptitle: str = "") -> Figure:
    """Images with predicted and true class names; mistakes in red, correct in green."""
    titles, colors = [], []
    for i, (label, prediction) in enumerate(zip(labels.tolist(), predictions.tolist())):
        confidence = f" {100 * confidences[i]:.0f}%" if confidences is not None else ""
        if label == prediction:
            titles.append(f"{classes[prediction]}{confidence}")
            colors.append(CORRECT)
        else:
            titles.append(f"{classes[prediction]}{confidence}\n(true: {classes[label]})")
            colors.append(MISTAKE)
    return image_grid(images, titles, ncols=ncols, colors=colors, size=1.6, suptitle=suptitle)


def branch_weights(weights: torch.Tensor, image_names: Sequence[str], model_state: str) -> Figure:
    """Each image's mixing weights over the branches, as grouped bars, one panel per block.

    `weights` is (blocks, images, branches); `model_state` says which model they
    come from ("untrained", "trained 60 epochs").
    """
    blocks, count, branches = weights.shape
    fig, axes = plt.subplots(blocks, 1, figsize=(9, 1.9 * blocks + 0.9), sharex=True, squeeze=False)
    width = 0.8 / branches
    for block, ax in enumerate(axes[:, 0]):
        for b in range(branches):
            ax.bar(np.arange(count) + b * width, weights[block, :, b].tolist(), width,
                   label=f"branch {b}", color=BRANCH_COLORS[b % len(BRANCH_COLORS)])
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylabel(f"block {block}\nweight a", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    # Above the first panel, where it covers no bar.
    axes[0, 0].legend(fontsize=8, ncols=branches, loc="lower right", bbox_to_anchor=(1, 1),
                      frameon=False)
    axes[-1, 0].set_xticks(np.arange(count) + width * (branches - 1) / 2, image_names, rotation=30,
                           fontsize=8)
    axes[-1, 0].set_xlabel("test image (its true class)")
    fig.suptitle(f"Branch weights a (a factor, no unit) of {count} test images, {model_state} model")
    fig.tight_layout()
    return fig


def branch_weight_distributions(trained: torch.Tensor, untrained: torch.Tensor,
                                trained_label: str = "trained") -> Figure:
    """Each block's weights over a split, per branch: untrained (grey) beside trained (colour).

    Both are (blocks, images, branches). A branch whose violin is a flat line at
    0 is switched off for every image; a tall violin means the weight differs
    from image to image.
    """
    blocks, _, branches = trained.shape
    fig, axes = plt.subplots(1, blocks, figsize=(4.2 * blocks, 3.6), sharey=True, squeeze=False)
    for block, ax in enumerate(axes[0]):
        for branch in range(branches):
            for offset, weights, color in ((-0.2, untrained, "0.6"),
                                           (0.2, trained, BRANCH_COLORS[branch % len(BRANCH_COLORS)])):
                parts = ax.violinplot(weights[block, :, branch].numpy(), [branch + offset],
                                      widths=0.35, showextrema=True, showmedians=True)
                for body in parts["bodies"]:
                    body.set_facecolor(color)
                    body.set_edgecolor(color)
                    body.set_alpha(0.7)
                for line in ("cbars", "cmins", "cmaxes", "cmedians"):
                    parts[line].set_color(color)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(branches), [f"branch {b}" for b in range(branches)])
        ax.set_title(f"block {block}")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel(WEIGHT_LABEL)
    axes[0, 0].legend(handles=[plt.Rectangle((0, 0), 1, 1, color="0.6", alpha=0.7),
                               plt.Rectangle((0, 0), 1, 1, color=BRANCH_COLORS[0], alpha=0.7)],
                      labels=["untrained (grey, left)", f"{trained_label} (colour, right)"], fontsize=8,
                      loc="upper left")
    fig.suptitle(f"Branch weights of every block over {trained.shape[1]:,} test images")
    fig.tight_layout()
    return fig


def class_branch_heatmaps(per_class: torch.Tensor, classes: Sequence[str]) -> Figure:
    """Mean branch weight per true class, one heatmap per block (blocks, classes, branches).

    Every block has its own colour scale (dark = a larger weight), since the
    blocks' weights differ in size; the numbers in the cells are the weights.
    """
    blocks, _, branches = per_class.shape
    fig, axes = plt.subplots(1, blocks, figsize=(3.0 * blocks + 1.5, 4.6), squeeze=False)
    for block, ax in enumerate(axes[0]):
        values = per_class[block].numpy()
        image = ax.imshow(values, cmap="Blues", aspect="auto")
        middle = (values.min() + values.max()) / 2
        for (row, col), value in np.ndenumerate(values):
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value > middle else "black")
        ax.set_xticks(range(branches), [str(b) for b in range(branches)])
        ax.set_xlabel("branch")
        ax.set_yticks(range(len(classes)), classes if block == 0 else [])
        ax.set_title(f"block {block}")
        fig.colorbar(image, ax=ax, fraction=0.08, label="mean weight a (no unit)")
    axes[0, 0].set_ylabel("true class")
    fig.suptitle("Mean branch weight per class")
    fig.tight_layout()
    return fig


def weight_extremes(rows: Sequence[dict], classes: Sequence[str], size: float = 1.25) -> Figure:
    """Rows of test images: those with the lowest, then the highest weight on one branch.

    Each row is a dict with `label` (e.g. "block 0, branch 1"), `images` (uint8,
    the lowest first, then the highest), `weights` and `labels` of those images,
    and `count`, how many of them are the lowest.
    """
    ncols = max(len(row["images"]) for row in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * size + 1.2, len(rows) * (size + 0.45)),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row["images"]):
                ax.axis("off")
                continue
            ax.imshow(as_hwc(row["images"][c]), interpolation="nearest")
            ax.set_title(f"{classes[int(row['labels'][c])]}\na = {float(row['weights'][c]):.2f}",
                         fontsize=7)
            highest = c >= row["count"]
            for spine in ax.spines.values():
                spine.set_color("tab:red" if highest else "tab:blue")
                spine.set_linewidth(2)
        axes[r, 0].set_ylabel(row["label"], rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle("Test images with the lowest (blue frame) and highest (red frame) branch weight")
    fig.tight_layout()
    return fig


def ablation_bars(rows: Sequence, chance: float) -> Figure:
    """Test accuracy with each change of the ablation (rows of nbhelpers.branches.ablation)."""
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.4))
    names = [row.change for row in rows]
    values = [row.accuracy for row in rows]
    colors = ["0.4" if row.change == "as trained" else
              "tab:blue" if "mean weights" in row.change else "tab:orange" for row in rows]
    bars = ax.barh(names, values, color=colors)
    ax.bar_label(bars, [f"{row.accuracy:.1f}% ({row.difference:+.1f} pp)" for row in rows],
                 fontsize=7, padding=2)
    ax.axvline(rows[0].baseline, color="0.3", linestyle="--", linewidth=1, label="as trained")
    ax.axvline(chance, color="tab:red", linestyle=":", linewidth=1, label=f"chance ({chance:.0f}%)")
    ax.invert_yaxis()  # in the table's order, from the top
    ax.set_xlim(0, max(values) * 1.25)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title("Ablation: per-image weights replaced by their mean (blue), a branch removed (orange)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
