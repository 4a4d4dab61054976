"""What the figures of 01, 04 and 06 must show: tick labels apart, intervals drawn, a scale per block, styles named.

Each test draws one figure from a few made-up numbers and reads back what
matplotlib drew (bars, error bars, axis limits, legend entries, pixels).
"""
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from nbhelpers import analysis_plots, plots  # noqa: E402
from nbhelpers.branches import AblationRow  # noqa: E402
from nbhelpers.stats import Interval, wilson_interval  # noqa: E402

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------
# 01: the class balance
# --------------------------------------------------------------------------

def _ink(fig) -> np.ndarray:
    """Where the rendered figure is not white."""
    fig.canvas.draw()
    return (np.asarray(fig.canvas.buffer_rgba())[..., :3] < 230).any(axis=2)


def _only_tick_labels(fig, keep) -> None:
    """Hide everything but the x tick labels whose index `keep` accepts."""
    for ax in fig.axes:
        for artist in ax.get_children():
            if artist is not ax.xaxis:
                artist.set_visible(False)
        ax.xaxis.label.set_visible(False)
        for index, tick in enumerate(ax.xaxis.get_major_ticks()):
            for line in (tick.tick1line, tick.tick2line, tick.gridline):
                line.set_visible(False)
            tick.label1.set_visible(keep(index))


def test_no_class_name_under_the_class_balance_touches_its_neighbour():
    per_batch = torch.stack([torch.bincount(torch.randint(0, 10, (128,), generator=torch.Generator().manual_seed(i)),
                                            minlength=10) for i in range(20)])
    fig = plots.class_balance({"train": [5000] * 10, "test": [1000] * 10}, CLASSES, per_batch)
    # Neighbours are one even and one odd: drawn apart, their nearest pixels must lie a gap apart.
    # (At 30 degrees and centred, "automobile" came within 2 pixels of "airplane": it read as one word.)
    _only_tick_labels(fig, lambda index: index % 2 == 0)
    even = _ink(fig)
    _only_tick_labels(fig, lambda index: index % 2 == 1)
    odd = _ink(fig)
    assert even.any() and odd.any()
    distance_from_even = ndimage.distance_transform_edt(~even)
    assert distance_from_even[odd].min() >= 5  # pixels, at the figure's own dpi


# --------------------------------------------------------------------------
# 04: per-class accuracy, the branch weights, the ablation
# --------------------------------------------------------------------------

def test_each_class_bar_carries_the_wilson_interval_of_its_own_test_images():
    # 100% and 0%, as a collapsed model answers: one end of the interval is the share itself.
    accuracies = torch.tensor([90.0, 50.0, 50.0, 10.0, 100.0, 0.0])
    counts = [100, 100, 1000, 100, 50, 50]
    fig = analysis_plots.per_class_accuracy(accuracies, CLASSES[:6], 50.0, counts)
    ax = fig.axes[0]
    (intervals,) = [c for c in ax.collections if len(c.get_segments()) == 6]
    drawn = np.array([[segment[:, 1].min(), segment[:, 1].max()] for segment in intervals.get_segments()])
    low, high = wilson_interval(accuracies.numpy() / 100, np.array(counts))
    np.testing.assert_allclose(drawn, 100 * np.stack([low, high], axis=1), atol=1e-9)
    widths = drawn[:, 1] - drawn[:, 0]
    assert widths[2] < widths[1] / 3  # ten times the images: about a third as wide
    assert [round(bar.get_height(), 6) for bar in ax.patches] == accuracies.tolist()


def test_the_branch_weight_violins_get_an_axis_per_block_on_its_own_scale():
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.01, 1.0, 10.0]).view(3, 1, 1)
    trained = scales * (1 + 0.1 * torch.randn(3, 200, 3, generator=generator))
    untrained = scales * (1 + 0.1 * torch.randn(3, 200, 3, generator=generator))
    fig = analysis_plots.branch_weight_distributions(trained, untrained)
    assert len(fig.axes) == 3
    tops = [ax.get_ylim()[1] for ax in fig.axes]
    assert tops[0] < 0.05 and 0.5 < tops[1] < 5 and tops[2] > 5
    assert not fig.axes[0].get_shared_y_axes().joined(fig.axes[0], fig.axes[1])


def _row(change: str, low: float, high: float) -> AblationRow:
    return AblationRow(change, 60 + (low + high) / 2, 60.0, Interval((low + high) / 2, low, high))


ABLATION = [_row("as trained", 0, 0),
            _row("block 0: mean weights", -0.8, 0.6), _row("every block: mean weights", -1.2, 0.2),
            _row("block 0: without branch 0", -52.0, -48.0), _row("block 0: without branch 1", -0.3, 0.1),
            _row("block 1: without branch 0", -0.1, 0.2), _row("block 1: without branch 1", 0.5, 1.5)]


def test_the_ablation_gives_the_ties_a_panel_and_a_scale_of_their_own():
    panels = analysis_plots.ablation_panels(ABLATION)
    assert [[row.change for row in members] for _, _, members in panels] == [
        ["block 0: mean weights", "every block: mean weights"],
        ["block 0: without branch 0", "block 1: without branch 1"],
        ["block 0: without branch 1", "block 1: without branch 0"]]
    fig = analysis_plots.ablation_differences(ABLATION, 2000)
    ties = fig.axes[2]
    low, high = ties.get_xlim()
    assert low <= -0.3 and high >= 0.2 and high - low < 1  # not the -52 of the loss above it


def test_every_ablation_interval_is_a_bar_with_its_verdict_beside_it():
    fig = analysis_plots.ablation_differences(ABLATION, 2000)
    drawn = [(bar.get_x(), bar.get_x() + bar.get_width()) for ax in fig.axes for bar in ax.patches
             if bar.get_height() < 1]  # the interval bars, not the axes' background
    shown = [row for _, _, members in analysis_plots.ablation_panels(ABLATION) for row in members]
    np.testing.assert_allclose(drawn, [(row.difference.low, row.difference.high) for row in shown])
    words = [text.get_text() for ax in fig.axes for text in ax.texts]
    assert words == [analysis_plots.ablation_verdict(row.difference, 2000) for row in shown]
    assert "real: a loss" in words[2] and "real: a gain" in words[3]
    assert "not resolved with 2,000 test images (±0.20)" in words[4]


# --------------------------------------------------------------------------
# 06: the seeds' line styles
# --------------------------------------------------------------------------

def _mixing_run(seed: int) -> SimpleNamespace:
    history = SimpleNamespace(epochs=[0, 1, 2], mean=torch.rand(3, 2, 3, generator=torch.Generator().manual_seed(seed)))
    return SimpleNamespace(rand_seed=seed, history=history)


def test_the_seed_line_styles_are_named_in_a_legend_and_follow_the_seed_not_the_place_in_the_group():
    # softmax lacks seed 3: its seed 5 must still be drawn in seed 5's style.
    groups = {"seed": [_mixing_run(3), _mixing_run(5), _mixing_run(9), _mixing_run(11)],
              "softmax": [_mixing_run(5), _mixing_run(9)]}
    styles = analysis_plots.shown_seeds(groups)
    assert list(styles) == [3, 5, 9] and len(set(styles.values())) == 3
    fig = analysis_plots.mixing_weights_by_epoch(groups)
    legend = next(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)
    named = {text.get_text(): line.get_linestyle() for text, line in zip(legend.get_texts(), legend.get_lines())}
    assert {name for name in named if name.startswith("rand_seed")} == {"rand_seed 3", "rand_seed 5", "rand_seed 9"}
    softmax_block_0 = fig.axes[2]  # row 1, column 0
    drawn = {line.get_linestyle() for line in softmax_block_0.get_lines() if line.get_marker() == "."}
    assert drawn == {named["rand_seed 5"], named["rand_seed 9"]}
    assert "3 of 4 seeds" in fig._suptitle.get_text()


# --------------------------------------------------------------------------
# 05 and 07: the curves of a sweep, a row per optimizer
# --------------------------------------------------------------------------

def _setting(optimizer: str, stepping: str) -> SimpleNamespace:
    history = [dict(epoch=e, train_loss=2.0 / e, test_loss=2.0 / e, test_acc=40.0 + e) for e in (1, 2, 3)]
    steps = [dict(step=s, epoch=(s + 1) // 2, train_loss=2.0 / s) for s in (1, 2, 3, 4, 5, 6)]
    runs = [SimpleNamespace(history=history, steps=steps, rand_seed=seed) for seed in (1, 2)]
    return SimpleNamespace(label=f"{optimizer}, per {stepping}", runs=runs,
                           varying=dict(optimizer=optimizer, per_batch=stepping))


def test_the_steppings_in_a_row_of_the_curves_differ_in_colour_and_are_named_in_both_panels():
    settings = [_setting(optimizer, stepping) for optimizer in ("ranger", "adamw") for stepping in ("batch", "epoch")]
    fig = plots.run_comparison(settings)
    for ax in fig.axes:  # two rows of a loss and an accuracy panel
        means = [line for line in ax.get_lines() if line.get_linewidth() > 1]
        assert len({line.get_color() for line in means}) == 2
        assert len({line.get_linestyle() for line in means}) == 2
        assert ax.get_legend() is not None and len(ax.get_legend().get_texts()) == 2
