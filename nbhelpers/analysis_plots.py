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
from .stats import wilson_interval

__all__ = ["WEIGHT_LABEL", "confusion_matrix", "per_class_accuracy", "prediction_grid",
           "branch_weights", "branch_weight_distributions", "class_branch_heatmaps",
           "weight_extremes", "ablation_differences", "reliability_diagram",
           "branch_weights_by_epoch", "MIXING_COLORS", "SEED_STYLES", "mixing_accuracy",
           "mixing_effective_branches", "mixing_weights_by_epoch"]

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
                      loc="best")
    fig.suptitle(f"Branch weights of every block over {trained.shape[1]:,} test images")
    fig.tight_layout()
    return fig


def class_branch_heatmaps(per_class: torch.Tensor, standard_errors: torch.Tensor,
                          classes: Sequence[str]) -> Figure:
    """How each class's mean branch weight differs from the branch's mean, one heatmap per block.

    `per_class` and `standard_errors` are (blocks, classes, branches). The colour
    and the number in a cell are the class's mean weight minus the mean of
    that column over the classes, on a scale centred on 0 (red above, blue
    below) and symmetric per block: a scale from 0 would spend its colours on
    the difference between branches and leave the differences between classes,
    the question here, invisible. Each column's tick gives the branch's mean;
    each title the largest standard error of a cell, the noise to read the
    differences against.
    """
    blocks, _, branches = per_class.shape
    fig, axes = plt.subplots(1, blocks, figsize=(3.6 * blocks + 1.5, 4.8), squeeze=False)
    for block, ax in enumerate(axes[0]):
        values = per_class[block].double()
        column_means = values.mean(dim=0)
        deviations = (values - column_means).numpy()
        reach = max(float(np.abs(deviations).max()), 1e-12)
        image = ax.imshow(deviations, cmap="RdBu_r", vmin=-reach, vmax=reach, aspect="auto")
        for (row, col), value in np.ndenumerate(deviations):
            ax.text(col, row, f"{value:+.3f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(value) > 0.6 * reach else "black")
        ax.set_xticks(range(branches), [f"{b}\n{column_means[b]:+.3f}" for b in range(branches)], fontsize=8)
        ax.set_xlabel("branch (below it: its mean a)", fontsize=9)
        ax.set_yticks(range(len(classes)), classes if block == 0 else [])
        # Two significant digits: a block's errors can lie far below the cells' third decimal.
        ax.set_title(f"block {block}\n(standard error of a cell up to {float(standard_errors[block].max()):.2g})",
                     fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.08, label="class mean minus branch mean" if block == blocks - 1 else None)
    axes[0, 0].set_ylabel("true class")
    fig.suptitle("Mean branch weight per class, as a difference from the branch's mean over all classes")
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


def ablation_differences(rows: Sequence) -> Figure:
    """Each ablation's difference from the model as trained, with its 95% interval (nbhelpers.branches).

    Two panels, each on an axis centred on 0: the fixed mixtures (per-image
    weights replaced by their mean) and the removed branches, whose effects
    can be a hundred times larger. A filled dot: the interval excludes 0 (a
    real difference); a hollow one: it includes 0 (a tie).
    """
    groups = [("per-image weights replaced by their mean", "tab:blue",
               [row for row in rows if "mean weights" in row.change]),
              ("one branch removed", "tab:orange",
               [row for row in rows if "without branch" in row.change])]
    groups = [group for group in groups if group[2]]
    heights = [len(group[2]) for group in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(8.5, 0.34 * sum(heights) + 1.2 * len(groups) + 0.6),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (title, color, members) in zip(axes[:, 0], groups):
        y = np.arange(len(members))
        points = np.array([row.difference.difference for row in members])
        low = np.array([row.difference.low for row in members])
        high = np.array([row.difference.high for row in members])
        ax.errorbar(points, y, xerr=[points - low, high - points], fmt="none", ecolor=color,
                    elinewidth=1.5, capsize=3)
        real = np.array([row.difference.is_real for row in members])
        ax.scatter(points[real], y[real], color=color, zorder=3, label="interval excludes 0: real")
        ax.scatter(points[~real], y[~real], facecolor="white", edgecolor=color, zorder=3,
                   label="interval includes 0: a tie")
        reach = max(np.abs(low).max(), np.abs(high).max(), 0.5) * 1.1
        ax.set_xlim(-reach, reach)
        ax.axvline(0, color="0.3", linewidth=1)
        ax.set_yticks(y, [row.change for row in members], fontsize=8)
        ax.invert_yaxis()  # in the table's order, from the top
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(title, fontsize=10)
    axes[0, 0].legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("difference in test accuracy from the model as trained (points, 95% interval)")
    fig.suptitle(f"Ablation against the model as trained ({rows[0].baseline:.2f}%)", fontsize=11)
    fig.tight_layout()
    return fig


def reliability_diagram(table) -> Figure:
    """How sure the model is against how often it is right (nbhelpers.evaluation.calibration).

    Top: per confidence bin, the share of its images predicted right (bars),
    with its 95% interval at the bin's mean confidence, and the diagonal a
    calibrated model would follow; bars below the diagonal are overconfidence,
    and a gap whose interval reaches the diagonal is within the bin's noise.
    Bottom: how many images each bin holds.
    """
    edges = table.edges.numpy()
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    filled = (table.counts > 0).numpy()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6.2), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.3]})
    top.bar(centres[filled], table.accuracy.numpy()[filled], width[filled], color="tab:blue",
            edgecolor="white", label="share right in the bin")
    accuracy, counts = table.accuracy.numpy()[filled], table.counts.numpy()[filled]
    low, high = wilson_interval(accuracy, counts)
    top.errorbar(table.confidence.numpy()[filled], accuracy, yerr=[accuracy - low, high - accuracy],
                 fmt="o", color="black",
                 markersize=3.5, capsize=2.5, linewidth=1, zorder=3,
                 label="at the bin's mean confidence, 95% interval")
    top.plot([0, 1], [0, 1], color="tab:red", linestyle="--", label="calibrated: right as often as sure")
    top.set_ylim(0, 1)
    top.set_ylabel("share predicted right")
    top.legend(fontsize=8, loc="upper left")
    top.grid(alpha=0.3)
    top.set_title(f"Reliability diagram (expected calibration error "
                  f"{table.expected_calibration_error:.2f} points)", fontsize=10)
    bars = bottom.bar(centres, table.counts.numpy(), width, color="0.6", edgecolor="white")
    bottom.bar_label(bars, [f"{count:,}" for count in table.counts.tolist()], fontsize=7)
    bottom.set_ylim(0, table.counts.max().item() * 1.3 + 1)
    bottom.set_ylabel("test images")
    bottom.set_xlabel("confidence: the model's top class probability")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    return fig


def _epoch_axis(ax, epochs: Sequence[int]) -> None:
    ax.set_xticks(list(epochs))
    ax.set_xlim(min(epochs) - 0.2, max(epochs) + 0.2)
    ax.grid(alpha=0.3)


def branch_weights_by_epoch(history) -> Figure:
    """One run's branch weights through training (nbhelpers.branches.BranchHistory), a column per block.

    Top: each branch's mean weight a; bottom: its share of the block's mean |a|.
    Epoch 0 is the untrained model.
    """
    epochs = history.epochs
    _, blocks, branches = history.mean.shape
    fig, axes = plt.subplots(2, blocks, figsize=(3.8 * blocks, 5.6), sharex=True, squeeze=False)
    for block in range(blocks):
        for branch in range(branches):
            color = BRANCH_COLORS[branch % len(BRANCH_COLORS)]
            axes[0, block].plot(epochs, history.mean[:, block, branch].numpy(), marker="o", color=color,
                                label=f"branch {branch}")
            axes[1, block].plot(epochs, 100 * history.shares[:, block, branch].numpy(), marker="o",
                                color=color)
        axes[0, block].axhline(0, color="black", linewidth=0.6)
        axes[0, block].set_title(f"block {block}")
        axes[1, block].set_ylim(0, 100)
        axes[1, block].set_xlabel("epoch (0: untrained)")
        for ax in axes[:, block]:
            _epoch_axis(ax, epochs)
    axes[0, 0].set_ylabel("mean weight a")
    axes[1, 0].set_ylabel("share of the block's\nmean |a| (%)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Branch weights through training (the same test images at every epoch)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# Notebook 06: the mixings side by side (groups of nbhelpers.compare.mixing_groups)
# --------------------------------------------------------------------------

MIXING_COLORS = {"seed": "tab:red", "softmax": "tab:blue", "sigmoid": "tab:green", "equal": "0.45"}
SEED_STYLES = ("-", "--", ":")


def mixing_accuracy(groups: dict) -> Figure:
    """Final test accuracy per mixing: a dot per seed, the mean ± spread (standard deviation) as a bar."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for x, (mixing, runs) in enumerate(groups.items()):
        values = np.array([run.final_acc for run in runs])
        color = MIXING_COLORS.get(mixing, "tab:purple")
        ax.scatter(np.full(len(values), x) + np.linspace(-0.12, 0.12, len(values)), values, color=color,
                   alpha=0.6, s=22, label="a seed" if x == 0 else None)
        if len(values) > 1:
            ax.errorbar(x + 0.3, values.mean(), yerr=values.std(ddof=1), fmt="s", color=color, capsize=5,
                        label="mean ± spread" if x == 0 else None)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_xlim(-0.5, len(groups) - 0.3)
    ax.set_xlabel("mixing")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Test accuracy per mixing, over seeds", fontsize=10)
    fig.tight_layout()
    return fig


def mixing_effective_branches(groups: dict) -> Figure:
    """The effective number of branches of every block through training, one line per mixing.

    A thin line per seed, a thick one for their mean; epoch 0 is the untrained model.
    """
    first = next(iter(groups.values()))[0].history
    blocks, branches = first.mean.shape[1], first.mean.shape[2]
    fig, axes = plt.subplots(1, blocks, figsize=(3.9 * blocks, 3.6), sharey=True, squeeze=False)
    for block, ax in enumerate(axes[0]):
        for mixing, runs in groups.items():
            color = MIXING_COLORS.get(mixing, "tab:purple")
            curves = np.stack([run.history.effective[:, block].numpy() for run in runs])
            epochs = runs[0].history.epochs
            for curve in curves:
                ax.plot(epochs, curve, color=color, linewidth=0.8, alpha=0.45)
            ax.plot(epochs, curves.mean(axis=0), color=color, linewidth=2.2, marker="o", label=mixing)
        ax.set_ylim(0.9, branches + 0.1)
        ax.set_title(f"block {block}")
        ax.set_xlabel("epoch (0: untrained)")
        _epoch_axis(ax, first.epochs)
    axes[0, 0].set_ylabel("effective number of branches\n(1: one branch, 3: all alike)")
    # Outside the panels, where it covers no line.
    axes[0, -1].legend(fontsize=8, title="mixing (thin: each seed)", title_fontsize=8,
                       loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle("How many branches each mixing uses, through training")
    fig.tight_layout()
    return fig


def mixing_weights_by_epoch(groups: dict, seeds_shown: int = len(SEED_STYLES)) -> Figure:
    """Each block's mean branch weights a through training: a row per mixing, a column per block.

    Colour: the branch; line style: the seed (solid the first; the first
    `seeds_shown` seeds, more would hide each other). Each row has its own
    scale, since the mixings' weights differ in size (softmax's sum to one,
    sigmoid's lie in 0..1, the seed's are unbounded).
    """
    first = next(iter(groups.values()))[0].history
    blocks, branches = first.mean.shape[1], first.mean.shape[2]
    fig, axes = plt.subplots(len(groups), blocks, figsize=(3.7 * blocks, 2.5 * len(groups) + 0.8),
                             sharex=True, sharey="row", squeeze=False)
    for row, (mixing, runs) in enumerate(groups.items()):
        for block in range(blocks):
            ax = axes[row, block]
            for index, run in enumerate(runs[:seeds_shown]):
                for branch in range(branches):
                    ax.plot(run.history.epochs, run.history.mean[:, block, branch].numpy(),
                            color=BRANCH_COLORS[branch % len(BRANCH_COLORS)],
                            linestyle=SEED_STYLES[index % len(SEED_STYLES)], marker=".",
                            label=f"branch {branch}" if index == 0 else None)
            ax.axhline(0, color="black", linewidth=0.6)
            _epoch_axis(ax, first.epochs)
            if row == 0:
                ax.set_title(f"block {block}")
        axes[row, 0].set_ylabel(f"{mixing}\nmean weight a")
    for ax in axes[-1]:
        ax.set_xlabel("epoch (0: untrained)")
    axes[0, -1].legend(fontsize=7, loc="best")
    shown = min(seeds_shown, max(len(runs) for runs in groups.values()))
    fig.suptitle(f"Mean branch weights through training (line style: the seed, solid the first; "
                 f"{shown} seed{'s' if shown > 1 else ''})")
    fig.tight_layout()
    return fig
