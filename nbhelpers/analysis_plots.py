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
from matplotlib.lines import Line2D

from .plots import BRANCH_COLORS, CORRECT, MISTAKE, as_hwc, image_grid
from .stats import verdict, wilson_interval

__all__ = ["WEIGHT_LABEL", "confusion_matrix", "per_class_accuracy", "prediction_grid",
           "branch_weights", "branch_weight_distributions", "class_branch_heatmaps",
           "weight_extremes", "ablation_panels", "ablation_verdict", "ablation_differences",
           "reliability_diagram",
           "branch_weights_by_epoch", "MIXING_COLORS", "SEED_STYLES", "mixing_accuracy",
           "mixing_effective_branches", "shown_seeds", "mixing_weights_by_epoch"]

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


def per_class_accuracy(accuracies: torch.Tensor, classes: Sequence[str], overall: float,
                       counts: Sequence[int]) -> Figure:
    """Each class's test accuracy (%) as a bar, with its 95% Wilson interval over that class's test images.

    `counts` holds each class's number of test images: a class has a tenth of
    them, so its accuracy is far noisier than the overall one (the red dashed line).
    """
    values = np.asarray(accuracies.tolist(), dtype=float)
    counts = np.asarray(counts, dtype=float)
    low, high = (100 * bound for bound in wilson_interval(values / 100, counts))
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(9, 3.4))
    ax.bar(x, values, color="tab:blue")
    # At 0% or 100% one end of the interval is the share itself, up to rounding: no negative lengths.
    below, above = np.clip(values - low, 0, None), np.clip(high - values, 0, None)
    ax.errorbar(x, values, yerr=[below, above], fmt="none", ecolor="black", elinewidth=1.2, capsize=4)
    for where, value, top in zip(x, values, high):  # above the interval, where no line crosses it
        ax.text(where, top + 1.5, f"{value:.1f}", ha="center", va="bottom", fontsize=8,
                bbox=dict(facecolor="white", edgecolor="none", pad=0.5))  # over the red line, not through it
    ax.axhline(overall, color="tab:red", linestyle="--")
    ax.set_xticks(x, classes, rotation=30)
    ax.set_ylim(0, 112)
    ax.set_xlabel("true class")
    ax.set_ylabel("accuracy (%)")
    fewest, most = int(counts.min()), int(counts.max())
    images = f"{fewest:,}" if fewest == most else f"{fewest:,}-{most:,}"
    # The overall value goes in the title: a legend would cover a bar somewhere.
    ax.set_title(f"Test accuracy per class, black: its 95% interval over its {images} test images "
                 f"(Wilson)\nred dashed line: overall, {overall:.2f}%", fontsize=10)
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

    Both are (blocks, images, branches). Each block has an axis of its own
    scale: compare the branches within a block by shape, and the blocks by the
    numbers on their axes. A branch whose violin is a flat line at 0 is
    switched off for every image; a tall violin means the weight differs from
    image to image.
    """
    blocks, _, branches = trained.shape
    # An axis per block, each on its own scale: one shared scale let a block whose weights reach 2
    # squash another's, a tenth as large, into a flat line that read as "off".
    fig, axes = plt.subplots(1, blocks, figsize=(4.2 * blocks, 3.6), squeeze=False)
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
        ax.set_ylabel(WEIGHT_LABEL if block == 0 else "weight a (its own scale)")
    axes[0, 0].legend(handles=[plt.Rectangle((0, 0), 1, 1, color="0.6", alpha=0.7),
                               plt.Rectangle((0, 0), 1, 1, color=BRANCH_COLORS[0], alpha=0.7)],
                      labels=["untrained (grey, left)", f"{trained_label} (colour, right)"], fontsize=8,
                      loc="best")
    fig.suptitle(f"Branch weights of every block over {trained.shape[1]:,} test images "
                 "(each block on its own scale)")
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


def ablation_panels(rows: Sequence) -> list[tuple[str, str, list]]:
    """The ablation's rows grouped for `ablation_differences`: (title, colour, rows) per panel, in order.

    The fixed mixtures, then the removed branches; each kind split by verdict,
    so that the ties, whose intervals can be a fraction of a point wide, get a
    scale of their own beside losses of tens of points. Empty panels are left out.
    """
    kinds = (("per-image weights replaced by their mean", "tab:blue", "mean weights"),
             ("one branch removed", "tab:orange", "without branch"))
    panels = []
    for title, color, marker in kinds:
        members = [row for row in rows if marker in row.change]
        for real, which in ((True, "interval excludes 0"), (False, "interval includes 0: not resolved")):
            chosen = [row for row in members if row.difference.is_real == real]
            if chosen:
                panels.append((f"{title}: {which}", color, chosen))
    return panels


def ablation_verdict(difference, images: int) -> str:
    """The words beside an ablation's bar: the difference, its interval and nbhelpers.stats.verdict."""
    words = verdict(difference, images, unit="test images")
    if difference.is_real:
        words += ": a loss" if difference.difference < 0 else ": a gain"
    return f"{difference}  {words}"


def ablation_differences(rows: Sequence, images: int) -> Figure:
    """Each ablation's difference from the model as trained: its 95% interval as a bar, its verdict beside it.

    `rows` are nbhelpers.branches.AblationRow, `images` the number of test
    images they were scored on. The panels (`ablation_panels`) each have an
    axis of their own that holds their intervals and 0: the bar spans the
    interval, the black tick is the measured difference, and the words on
    the right give both with the verdict (real only where the interval
    excludes 0). Real differences are filled, ties pale.
    """
    panels = ablation_panels(rows)
    heights = [len(members) for _, _, members in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 0.4 * sum(heights) + 1.1 * len(panels) + 0.6),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (title, color, members) in zip(axes[:, 0], panels):
        y = np.arange(len(members))
        points = np.array([row.difference.difference for row in members])
        low = np.array([row.difference.low for row in members])
        high = np.array([row.difference.high for row in members])
        real = members[0].difference.is_real  # a panel holds one verdict
        ax.barh(y, high - low, left=low, height=0.5, color=color, alpha=0.85 if real else 0.3,
                edgecolor=color, linewidth=1.2)
        ax.scatter(points, y, marker="|", s=220, color="black", zorder=3)
        left, right = min(low.min(), 0.0), max(high.max(), 0.0)
        # Half a point at least: intervals of width 0 (no answer changed) get a scale in points, not in
        # thousandths of one.
        widen = max(0.5 - (right - left), 0.0) / 2
        pad = 0.08 * (right - left + 2 * widen)
        ax.set_xlim(left - widen - pad, right + widen + pad)
        ax.axvline(0, color="0.3", linewidth=1)
        for where, row in zip(y, members):  # in the right margin, outside the bars
            ax.annotate(ablation_verdict(row.difference, images), (1.01, where),
                        xycoords=("axes fraction", "data"), va="center", fontsize=8)
        ax.set_yticks(y, [row.change for row in members], fontsize=8)
        ax.set_ylim(len(members) - 0.5, -0.5)  # in the table's order, from the top
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"{title} (its own scale)", fontsize=10)
    axes[-1, 0].set_xlabel("difference in test accuracy from the model as trained (points): "
                           "bar = 95% interval, black tick = measured")
    fig.suptitle(f"Ablation against the model as trained ({rows[0].baseline:.2f}%, "
                 f"{images:,} test images)", fontsize=11)
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
    """Final test accuracy per mixing: a dot per seed, the mean ± one standard deviation as a bar."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for x, (mixing, runs) in enumerate(groups.items()):
        values = np.array([run.final_acc for run in runs])
        color = MIXING_COLORS.get(mixing, "tab:purple")
        ax.scatter(np.full(len(values), x) + np.linspace(-0.12, 0.12, len(values)), values, color=color,
                   alpha=0.6, s=22, label="a seed" if x == 0 else None)
        if len(values) > 1:
            ax.errorbar(x + 0.3, values.mean(), yerr=values.std(ddof=1), fmt="s", color=color, capsize=5,
                        label="mean ± sd" if x == 0 else None)
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


def shown_seeds(groups: dict, seeds_shown: int = len(SEED_STYLES)) -> dict[int, str]:
    """{rand_seed: line style} for the first `seeds_shown` seeds of any mixing, in seed order.

    The style follows the seed, not a run's place in its group: a sweep runs
    seed k of every mixing from the same initial weights, so one style names
    one starting point in every row.
    """
    seeds = sorted({run.rand_seed for runs in groups.values() for run in runs})[:seeds_shown]
    return {seed: SEED_STYLES[index % len(SEED_STYLES)] for index, seed in enumerate(seeds)}


def mixing_weights_by_epoch(groups: dict, seeds_shown: int = len(SEED_STYLES)) -> Figure:
    """Each block's mean branch weights a through training: a row per mixing, a column per block.

    Colour: the branch; line style: the run's rand_seed (`shown_seeds`: the
    first `seeds_shown` seeds, more would hide each other), both named in the
    legend. Each row has its own scale, since the mixings' weights differ in
    size (softmax's sum to one, sigmoid's lie in 0..1, the seed's are unbounded).
    """
    first = next(iter(groups.values()))[0].history
    blocks, branches = first.mean.shape[1], first.mean.shape[2]
    styles = shown_seeds(groups, seeds_shown)
    fig, axes = plt.subplots(len(groups), blocks, figsize=(3.7 * blocks + 1.8, 2.5 * len(groups) + 0.8),
                             sharex=True, sharey="row", squeeze=False)
    for row, (mixing, runs) in enumerate(groups.items()):
        for block in range(blocks):
            ax = axes[row, block]
            for run in (run for run in runs if run.rand_seed in styles):
                for branch in range(branches):
                    ax.plot(run.history.epochs, run.history.mean[:, block, branch].numpy(),
                            color=BRANCH_COLORS[branch % len(BRANCH_COLORS)],
                            linestyle=styles[run.rand_seed], marker=".")
            ax.axhline(0, color="black", linewidth=0.6)
            _epoch_axis(ax, first.epochs)
            if row == 0:
                ax.set_title(f"block {block}")
        axes[row, 0].set_ylabel(f"{mixing}\nmean weight a")
    for ax in axes[-1]:
        ax.set_xlabel("epoch (0: untrained)")
    # One legend for both codes, beside the panels where it covers no line.
    handles = ([Line2D([], [], color=BRANCH_COLORS[branch % len(BRANCH_COLORS)], label=f"branch {branch}")
                for branch in range(branches)]
               + [Line2D([], [], color="black", linestyle=style, label=f"rand_seed {seed}")
                  for seed, style in styles.items()])
    axes[0, -1].legend(handles=handles, fontsize=8, title="colour: branch\nline style: seed",
                       title_fontsize=8, loc="upper left", bbox_to_anchor=(1.03, 1))
    every = len({run.rand_seed for runs in groups.values() for run in runs})
    shown = ("one seed" if every == 1 else f"all {every} seeds" if every == len(styles)
             else f"the first {len(styles)} of {every} seeds")
    fig.suptitle(f"Mean branch weights through training ({shown}"
                 + (", one line style each)" if len(styles) > 1 else ")"))
    fig.tight_layout()
    return fig
