"""The figures of the data, the training and the optimizers. Each returns a Figure; `save` writes PNGs.

Notebooks 01 (the data), 02 and 03 (the training and Ranger's parts) and 05
(runs side by side) draw these.

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
from .runtime import project_path

__all__ = ["FiguresError", "MISTAKE", "CORRECT", "SPLIT_COLORS", "BRANCH_COLORS", "mark_figures",
           "save", "as_hwc", "image_grid", "class_examples", "class_balance", "steps_per_epoch_of",
           "training_curves", "learning_rate_schedules", "rectification", "lookahead_paths",
           "one_cycle", "run_comparison", "setting_accuracies", "differences", "rule_simulation", "gradient_centralization",
           "effective_step"]


class FiguresError(ExplainedError, OSError):
    """The figures' folder cannot be written."""

MISTAKE, CORRECT = "tab:red", "tab:green"
SPLIT_COLORS = {"train": "tab:blue", "val": "tab:green", "test": "tab:orange"}
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
        folder = project_path(folder)
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


def class_balance(counts: dict[str, Sequence[int]], classes: Sequence[str],
                  per_batch: torch.Tensor) -> Figure:
    """Each class's share of each split, and how many of each class one epoch's batches hold.

    `counts`: images per class for each split; `per_batch`: (batches, classes) counts of
    one shuffled epoch. The splits' bars are all equal on a balanced dataset; the batches' are not.
    """
    fig, (share_ax, batch_ax) = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"width_ratios": [1, 1.2]})
    width = 0.8 / len(counts)
    x = np.arange(len(classes))
    for i, (split, values) in enumerate(counts.items()):
        shares = 100 * np.asarray(values) / sum(values)
        share_ax.bar(x + i * width, shares, width, label=f"{split} ({sum(values):,} images)")
    share_ax.axhline(100 / len(classes), color="black", linewidth=0.8, linestyle="--")
    # At 30 degrees, centred, "automobile" ran into its neighbours: slanted further and anchored at its
    # right end under the tick, each name keeps clear of the next.
    slanted = dict(rotation=45, ha="right", rotation_mode="anchor")
    share_ax.set_xticks(x + width * (len(counts) - 1) / 2, classes, **slanted)
    share_ax.set_ylabel("share of the split (%)")
    share_ax.set_title("Each class's share of each split")
    share_ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.36), ncols=len(counts))
    batch_size = int(per_batch.sum(dim=1).max())
    batch_ax.boxplot(per_batch.numpy(), whis=(0, 100), widths=0.6)
    batch_ax.axhline(batch_size / len(classes), color="black", linewidth=0.8, linestyle="--",
                     label=f"{batch_size} / {len(classes)}: a perfectly balanced batch")
    batch_ax.set_xticks(x + 1, classes, **slanted)
    batch_ax.set_ylabel(f"images in a batch of {batch_size}")
    batch_ax.set_title(f"The same classes in one shuffled epoch's {len(per_batch)} batches")
    batch_ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.36))
    for ax in (share_ax, batch_ax):
        ax.grid(alpha=0.3, axis="y")
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


def steps_per_epoch_of(steps: Sequence[dict[str, float]]) -> int:
    """The number of training steps in an epoch, from steps.csv's rows (its first epoch's last step)."""
    return int(max(row["step"] for row in steps if row["epoch"] == 1))


def training_curves(history: Sequence[dict[str, float]], steps: Sequence[dict[str, float]] = (),
                    lrs: Sequence[float] = (), steps_per_epoch: int | None = None) -> Figure:
    """Loss, accuracy and learning rate against the epoch, for every split measured.

    With `steps` (steps.csv's rows) the training loss is drawn every few steps,
    not once per epoch; with `lrs` (one per step, nbhelpers.train.schedule_trace)
    and `steps_per_epoch` the learning rate panel is exact. The per-epoch values
    sit at the end of their epoch.
    """
    epochs = [row["epoch"] for row in history]
    splits = [s for s in ("train", "val", "test") if f"{s}_loss" in history[0]]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    if steps:
        per_epoch = steps_per_epoch or steps_per_epoch_of(steps)
        axes[0].plot([row["step"] / per_epoch for row in steps], [row["train_loss"] for row in steps],
                     linewidth=0.8, alpha=0.8, color=SPLIT_COLORS["train"], label="train (every few steps)")
    for split in splits:
        color = SPLIT_COLORS[split]
        by_step = split == "train" and bool(steps)
        style = dict(marker="o", linestyle="none") if by_step else dict(marker=".")
        axes[0].plot(epochs, [r[f"{split}_loss"] for r in history], color=color,
                     label="train (epoch mean)" if by_step else split, **style)
        axes[1].plot(epochs, [r[f"{split}_acc"] for r in history], marker=".", color=color, label=split)
    if lrs and steps_per_epoch:
        axes[2].plot(np.arange(len(lrs)) / steps_per_epoch, lrs, color="tab:purple")
        lr_title = "Learning rate (every step)"
    else:
        axes[2].plot(epochs, [r["lr"] for r in history], marker=".", color="tab:purple")
        lr_title = "Learning rate (first step of each epoch)"
    _per_epoch_axes(axes, ("Loss", "Accuracy", lr_title),
                    ("cross-entropy (nats per image)", "accuracy (%)", "learning rate"))
    last_epoch = len(lrs) / steps_per_epoch if lrs and steps_per_epoch else max(epochs)
    for ax in axes:
        ax.set_xlim(0, last_epoch * 1.03)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    last = history[-1]
    axes[1].annotate(f"final test {last['test_acc']:.2f}%", (last["epoch"], last["test_acc"]),
                     textcoords="offset points", xytext=(-90, -25), fontsize=8,
                     arrowprops=dict(arrowstyle="->"))
    fig.tight_layout()
    return fig


def learning_rate_schedules(schedules: dict[str, Sequence[float]], steps_per_epoch: int,
                            magnify: str | None = None) -> Figure:
    """Learning rate against epochs for several schedules (e.g. per batch vs the seed's per epoch).

    `magnify` names a schedule drawn again on its own in a second panel, on an axis
    fitted to its values: a line that hugs the floor beside the others becomes readable.
    """
    fig, axes = plt.subplots(1, 2 if magnify else 1, figsize=(13 if magnify else 8, 3.4), squeeze=False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = dict(zip(schedules, palette))
    for label, rates in schedules.items():
        axes[0, 0].plot(np.arange(len(rates)) / steps_per_epoch, rates, label=label, color=colors[label])
    axes[0, 0].set_title("OneCycleLR, stepped " + " vs ".join(schedules))
    axes[0, 0].legend(fontsize=8)
    if magnify:
        rates, zoom = schedules[magnify], axes[0, 1]
        epochs = np.arange(len(rates)) / steps_per_epoch
        zoom.plot(epochs, rates, color=colors[magnify])
        for x, y, where, offset in ((epochs[0], rates[0], "start", (10, -4)),
                                    (epochs[-1], rates[-1], "end", (-75, 6))):
            zoom.annotate(f"{where}: {y:.4f}", (x, y), textcoords="offset points", xytext=offset, fontsize=8)
        span = max(rates) - min(rates)
        zoom.set_ylim(min(rates) - 0.3 * span, max(rates) + 0.3 * span)
        zoom.set_title(f"{magnify}, magnified (its own y axis)")
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# Optimizers side by side (notebooks 03 and 05; helper functions in nbhelpers.ranger_parts and nbhelpers.compare)
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

    Both are nbhelpers.ranger_parts.Path2D. Left: the paths over the loss's contours, the slow
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
    ax.legend(fontsize=7, loc="best")  # a fixed corner covered the first, largest steps
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


def _looks(settings: Sequence, rows_by_first: bool = False) -> dict[str, dict]:
    """A colour per value of the first parameter that differs, a line style per value of the second.

    With `rows_by_first` the first parameter already has a row of panels per value, so a colour
    would say nothing inside a row: the second parameter takes both colour and line style, and
    settings side by side in a panel differ in both (a dashed line under a dense solid one hides).
    """
    varying = list(settings[0].varying) if settings and settings[0].varying else []
    if rows_by_first and len(varying) > 1:
        varying = varying[1:2] * 2
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ("-", "--", ":", "-.")

    def index_of(name: str | None, setting) -> int:
        if name is None:
            return list(settings).index(setting)
        values = list(dict.fromkeys(str(s.varying[name]) for s in settings))
        return values.index(str(setting.varying[name]))

    color_by = varying[0] if varying else None
    style_by = varying[1] if len(varying) > 1 else None
    return {s.label: dict(color=palette[index_of(color_by, s) % len(palette)],
                          linestyle=styles[index_of(style_by, s) % len(styles)] if style_by else "-")
            for s in settings}


def _seeds(setting) -> str:
    return f"{len(setting.runs)} seed" + ("s" if len(setting.runs) > 1 else "")


def _mean_and_spread(rows_per_run: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over runs (cut to the shortest run; no spread for one run)."""
    length = min(len(rows) for rows in rows_per_run)
    values = np.array([rows[:length] for rows in rows_per_run], dtype=float)
    spread = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(length)
    return values.mean(axis=0), spread


def _curves_of(setting) -> list[tuple[list[float], list[list[float]], bool]]:
    """(x in epochs, one list of values per run, per step?) for the three panels of run_comparison."""
    runs = setting.runs
    if all(run.steps for run in runs):
        per_epoch = steps_per_epoch_of(runs[0].steps)
        training = ([row["step"] / per_epoch for row in runs[0].steps],
                    [[row["train_loss"] for row in run.steps] for run in runs], True)
    else:  # run folders from before steps.csv existed
        training = ([row["epoch"] for row in runs[0].history],
                    [[row["train_loss"] for row in run.history] for run in runs], False)
    epochs = [row["epoch"] for row in runs[0].history]
    return [training] + [(epochs, [[row[key] for row in run.history] for run in runs], False)
                         for key in ("test_loss", "test_acc")]


def _panels_of(settings: Sequence) -> dict[str, list]:
    """The settings grouped by the first parameter that differs (a panel each), in the order they appear."""
    varying = list(settings[0].varying) if settings and settings[0].varying else []
    panels: dict[str, list] = {}
    for setting in settings:
        key = str(setting.varying[varying[0]]) if varying else setting.label
        panels.setdefault(key, []).append(setting)
    return panels


def run_comparison(settings: Sequence) -> Figure:
    """Small multiples: a row per value of the first parameter that differs (in the default sweep the
    optimizer), the training loss every few steps (steps.csv) and the test accuracy per epoch.

    `settings` are nbhelpers.compare.Setting. In a row, each setting has its
    colour and line style (by the second parameter that differs, e.g. per batch
    blue and solid, per epoch orange and dashed), named in both panels' legends; every seed is a thin line and the setting's mean
    over its seeds a thick one, so a seed that goes its own way shows as itself.
    All rows share their axes, so rows compare at a glance.
    """
    panels = _panels_of(settings)
    looks = _looks(settings, rows_by_first=True)
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 2.6 * len(panels) + 0.6), squeeze=False,
                             sharex="col", sharey="col")
    for (name, members), (loss_ax, acc_ax) in zip(panels.items(), axes):
        for setting in members:
            look = looks[setting.label]
            training, _, accuracy = _curves_of(setting)
            for ax, (x, rows, per_step) in ((loss_ax, training), (acc_ax, accuracy)):
                for rows_of_a_seed in rows:
                    ax.plot(x[:len(rows_of_a_seed)], rows_of_a_seed, color=look["color"],
                            linestyle=look["linestyle"], linewidth=0.5, alpha=0.35)
                mean, _ = _mean_and_spread(rows)
                ax.plot(x[:len(mean)], mean, color=look["color"], linestyle=look["linestyle"],
                        linewidth=1.8, marker=None if per_step else ".",
                        label=f"{setting.label} ({_seeds(setting)})")
        loss_ax.set_ylabel(f"{name}\ntraining loss (nats)")
        acc_ax.set_ylabel("test accuracy (%)")
        loss_ax.legend(fontsize=8, loc="upper right")
        acc_ax.legend(fontsize=8, loc="lower right")
        for ax in (loss_ax, acc_ax):
            ax.grid(alpha=0.3)
    axes[0, 0].set_title("Training loss, every few steps (steps.csv)")
    axes[0, 1].set_title("Test accuracy after each epoch")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Thin lines: each seed; thick: the mean over the seeds", fontsize=10)
    fig.tight_layout()
    return fig


def setting_accuracies(settings: Sequence) -> Figure:
    """Each setting's final test accuracy: every seed a dot, the mean ± one sd a black bar (a description
    of the runs; whether two settings differ is `differences`' question)."""
    looks = _looks(settings)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(settings) + 1.5))
    for row, setting in enumerate(settings):
        ax.scatter(setting.finals, [row] * len(setting.finals), color=looks[setting.label]["color"],
                   alpha=0.7, s=28, zorder=3)
        sd = 0 if np.isnan(setting.sd) else setting.sd
        ax.errorbar(setting.mean, row, xerr=sd, fmt="|", color="black", markersize=14, capsize=5, zorder=4)
    ax.set_yticks(range(len(settings)), [f"{s.label} ({_seeds(s)})" for s in settings])
    ax.invert_yaxis()
    ax.set_xlabel("final test accuracy (%)")
    ax.set_title("Final test accuracy: each seed (dots), mean ± one standard deviation (black)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def differences(comparisons: Sequence) -> Figure:
    """A row per nbhelpers.compare.SettingDifference: each seed's difference as a dot (paired runs), the
    mean difference with its 95% interval as a bar, green where the interval excludes 0 (real)."""
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(comparisons) + 1.6))
    for row, comparison in enumerate(comparisons):
        if comparison.paired:
            per_seed = [comparison.first.by_seed[seed] - comparison.second.by_seed[seed]
                        for seed in comparison.first.by_seed]
            ax.scatter(per_seed, [row] * len(per_seed), color="tab:gray", alpha=0.7, s=22, zorder=3)
        interval = comparison.interval
        if interval is not None:
            color = "tab:green" if interval.is_real else "tab:orange"
            ax.errorbar(interval.difference, row, xerr=[[interval.difference - interval.low],
                                                        [interval.high - interval.difference]],
                        fmt="o", color=color, capsize=5, markersize=6, zorder=4)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(comparisons)),
                  [f"{c.first.label}  −  {c.second.label}" for c in comparisons])
    ax.invert_yaxis()
    ax.set_xlabel("difference in final test accuracy (percentage points)")
    ax.set_title("Each seed's difference (grey) and the mean's 95% interval: green excludes 0 (real), "
                 "orange does not", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def rule_simulation(rates: Sequence, effect: float, nominal: float = 0.05) -> Figure:
    """Two rules on simulated comparisons (nbhelpers.stats.simulate_rules): how often each calls a
    difference real when there is none (left) and when there is one of `effect` sd (right), by seeds."""
    fig, (false_ax, power_ax) = plt.subplots(1, 2, figsize=(11, 3.6), sharex=True)
    for rule, marker in zip(dict.fromkeys(rate.rule for rate in rates), ("s", "o")):
        rows = [rate for rate in rates if rate.rule == rule]
        seeds = [rate.seeds for rate in rows]
        false_ax.plot(seeds, [100 * rate.false_positives for rate in rows], marker=marker, label=rule)
        power_ax.plot(seeds, [100 * rate.power for rate in rows], marker=marker, label=rule)
    false_ax.axhline(100 * nominal, color="black", linewidth=0.8, linestyle=":",
                     label=f"{nominal:.0%}: what a 95% interval promises")
    false_ax.set_title("No true difference: how often it is called real", fontsize=10)
    power_ax.set_title(f"A true difference of {effect:g} sd: how often it is found", fontsize=10)
    for ax in (false_ax, power_ax):
        ax.set_xlabel("seeds per setting")
        ax.set_ylabel("% of simulated comparisons")
        ax.set_xticks(sorted({rate.seeds for rate in rates}))
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    false_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def gradient_centralization(effects: Sequence) -> Figure:
    """What gradient centralization does to real gradients: a row per nbhelpers.ranger_parts.Centralization.

    Left: the mean of each output channel's gradient, before and after GC. Right:
    the share of each channel's gradient (its squared norm) that GC removes.
    """
    fig, axes = plt.subplots(len(effects), 2, figsize=(13, 3.1 * len(effects)), squeeze=False)
    for (mean_ax, share_ax), effect in zip(axes, effects):
        channels = np.arange(len(effect.mean_before))
        mean_ax.bar(channels, effect.mean_before.numpy(), color="tab:blue", label="before GC")
        mean_ax.plot(channels, effect.mean_after.numpy(), "o", color="tab:orange", markersize=3,
                     label="after GC")
        mean_ax.axhline(0, color="black", linewidth=0.6)
        mean_ax.set_ylabel("mean of its gradient")
        mean_ax.set_title(f"{effect.parameter}: each output channel's mean gradient", fontsize=10)
        mean_ax.legend(fontsize=8)
        share_ax.bar(channels, 100 * effect.removed.numpy(), color="tab:green")
        share_ax.set_ylabel("share removed (%)")
        share_ax.set_title("The share of each channel's gradient (squared norm) GC removes", fontsize=10)
        for ax in (mean_ax, share_ax):
            ax.set_xlabel("output channel")
            ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def effective_step(schedules: dict[str, tuple[Sequence[float], Sequence[float]]]) -> Figure:
    """The schedule's learning rate and what RAdam's r_t lets through of it (lr x r_t).

    `schedules`: {label: (lr per step, lr x r_t per step)}, runs of one recipe and
    different lengths. The x axis is the share of the run, so that they line up: the
    schedule is then one and the same curve (OneCycleLR peaks at 30% of any run).
    """
    fig, ax = plt.subplots(figsize=(9, 3.8))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    first = next(iter(schedules.values()))[0]
    ax.plot(np.arange(1, len(first) + 1) / len(first), first, linestyle="--", linewidth=1, color="gray",
            label="lr, the schedule (the same shape for every length)")
    for (label, (lrs, effective)), color in zip(schedules.items(), palette):
        share = np.arange(1, len(lrs) + 1) / len(lrs)
        ax.plot(share, effective, color=color, label=f"{label}: lr x r_t")
        peak = int(np.argmax(lrs))
        ax.plot(share[peak], effective[peak], "o", color=color)
    ax.set_xlabel("share of the run's steps")
    ax.set_ylabel("learning rate")
    ax.set_title("The step Adam's update really gets: the schedule's lr times RAdam's r_t")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def lr_range_tests(tests: Sequence, series_max_lr: float = 0.1) -> Figure:
    """Training loss against the learning rate (log axis), one colour per nbhelpers.lr_range.RangeTest.

    Each step's loss faint, the smoothed loss solid, its minimum a triangle; a dotted
    line at each test's suggested max_lr and a broad grey one at the series' max_lr.
    Where a test's optimizer is damped by RAdam's r_t (Ranger, RAdam), a second panel
    draws the smoothed curves against the step Adam's update really got, lr x r_t.
    """
    damped = any(test.effective_lrs is not None for test in tests)
    fig, axes = plt.subplots(1, 2 if damped else 1, figsize=(15 if damped else 9, 4.6),
                             sharey=True, squeeze=False)
    ax = axes[0][0]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # Broad and pale, so that a suggestion that falls on it stays visible on top.
    ax.axvline(series_max_lr, color="gray", linewidth=5, alpha=0.35,
               label=f"the series' max_lr {series_max_lr:g}")
    for test, color in zip(tests, palette):
        ended = f"; diverged at lr {test.diverged_at:.2g}" if test.diverged_at is not None else ""
        ax.plot(test.lrs, test.losses, color=color, alpha=0.25, linewidth=0.7)
        ax.plot(test.lrs, test.smoothed, color=color, linewidth=1.6,
                label=f"{test.optimizer}: each step (faint), smoothed{ended}")
        ax.plot(test.min_lr, min(test.smoothed), "v", color=color, markersize=8)
        ax.axvline(test.suggested_max_lr, color=color, linestyle=":", linewidth=1.6,
                   label=f"{test.optimizer}: suggested max_lr {test.suggested_max_lr:.2g} "
                         f"(the minimum {test.min_lr:.2g} / 10)")
    ax.set_xlabel("learning rate (rising exponentially, one value per step)")
    ax.set_title(f"Range test: loss against lr ({max(len(t.lrs) for t in tests)} steps at most, "
                 f"size {', '.join(dict.fromkeys(t.size for t in tests))})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    if damped:
        _against_the_step_taken(axes[0][1], tests, palette)
    ax.set_ylim(*_range_test_window(tests))
    ax.set_ylabel("training loss (cross-entropy, nats)")
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _against_the_step_taken(ax, tests: Sequence, palette: Sequence[str]) -> None:
    """The smoothed curves against lr x r_t (lr itself for optimizers that r_t does not damp)."""
    for test, color in zip(tests, palette):
        taken = test.effective_lrs if test.effective_lrs is not None else test.lrs
        what = "lr x r_t" if test.effective_lrs is not None else "lr (nothing damps it)"
        ax.plot(taken, test.smoothed, color=color, linewidth=1.6, label=f"{test.optimizer}: against {what}")
        ax.plot(taken[test.lrs.index(test.min_lr)], min(test.smoothed), "v", color=color, markersize=8)
    ax.set_xlabel("the step Adam's update really got: lr x r_t (RAdam's first 5 steps have none)")
    ax.set_title("The same smoothed curves against the step really taken", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")


def _range_test_window(tests: Sequence) -> tuple[float, float]:
    """Loss limits that show the curves' fall and the start of their rise, not every spike.

    A range test ends at 4x its lowest smoothed loss, and single batches spike past
    that, while the fall worth reading may be a tenth of a nat: the window is the
    fall, with twice its height above the start for the rise.
    """
    start = max(test.smoothed[0] for test in tests)
    low = min(min(test.smoothed) for test in tests)
    fall = max(start - low, 0.05 * start)
    return low - fall, start + 2 * fall
