"""The lr range test: an exact exponential rise, the losses of the steps it took, a cut at divergence."""
import math

import numpy as np
import pytest
import torch.nn.functional as F

from nbhelpers.config import ConfigError, make_config
from nbhelpers.data import CifarLoader, prepare_splits
from nbhelpers.lr_range import (RangeTestError, at_suggested_max_lr, divergence_step, lr_range_test,
                                smoothed_losses)
from nbhelpers.runtime import seed_everything
from nbhelpers.train import build_optimizer
from nbhelpers.config import build_model

# fp32 in NCHW: the same arithmetic as the plain loop below, whatever this CPU's "auto" picks;
# batches of 32 keep each step cheap.
EXACT = dict(size="tiny", device="cpu", progress="none", precision="fp32", channels_last=False,
             batch_size=32)


def test_the_learning_rate_rises_exponentially_from_start_to_end(synthetic_data):
    test = lr_range_test("adamw", start_lr=1e-4, end_lr=1e-2, steps=6, data=synthetic_data, **EXACT)
    assert test.diverged_at is None and len(test.lrs) == len(test.losses) == 6
    assert test.lrs == pytest.approx([1e-4 * 100 ** (i / 5) for i in range(6)], rel=1e-12)
    assert test.lrs[0] == 1e-4 and test.lrs[-1] == pytest.approx(1e-2, rel=1e-12)
    assert test.effective_lrs is None and test.r_t is None  # nothing damps AdamW's step


def test_the_losses_are_those_of_the_steps_taken(synthetic_data):
    """Parity with a plain loop: the same initialization, batches and learning rates, step for step."""
    test = lr_range_test("ranger", start_lr=1e-3, end_lr=1e-1, steps=3, data=synthetic_data, **EXACT)
    config = make_config(size="tiny", precision="fp32", channels_last=False, batch_size=32)
    train = prepare_splits(synthetic_data, config.train_subset).train
    seed_everything(config.rand_seed)
    model = build_model(config, len(synthetic_data.classes))
    optimizer = build_optimizer(model, config)
    loader = CifarLoader(train, config.batch_size, train=True, seed=config.rand_seed)
    loader.set_epoch(1)
    losses = []
    for lr, (images, labels) in zip((1e-3, 1e-2, 1e-1), loader):
        optimizer.param_groups[0]["lr"] = lr
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert test.losses == pytest.approx(losses, rel=1e-6)
    assert test.smoothed[0] == pytest.approx(losses[0])  # bias-corrected: no pull towards 0


def test_ranger_reports_the_step_rectification_lets_through(synthetic_data):
    test = lr_range_test("ranger", start_lr=1e-4, end_lr=1e-3, steps=8, data=synthetic_data, **EXACT)
    # Steps 1-5 are plain momentum (no r_t); from step 6 r_t is small and rising.
    assert all(math.isnan(r) for r in test.r_t[:5])
    assert 0 < test.r_t[5] < test.r_t[6] < test.r_t[7] < 0.1
    assert test.effective_lrs[7] == pytest.approx(test.lrs[7] * test.r_t[7])


def test_divergence_ends_the_curve_where_it_happens(synthetic_data):
    test = lr_range_test("adamw", start_lr=1e-2, end_lr=1e8, steps=20, data=synthetic_data, **EXACT)
    assert test.diverged_at is not None and len(test.lrs) < 20
    assert test.lrs[-1] < test.diverged_at and all(math.isfinite(loss) for loss in test.losses)
    assert max(test.smoothed) <= 4 * min(test.smoothed)
    assert test.suggested_max_lr == pytest.approx(test.min_lr / 10)
    assert test.lrs[0] <= test.min_lr <= test.lrs[-1] and test.lrs[0] <= test.steepest_lr <= test.lrs[-1]


def test_the_rule_reads_the_smoothed_loss_so_one_bad_batch_does_not_end_it():
    flat = [1.0] * 20
    assert divergence_step(flat) is None
    assert divergence_step(flat[:5] + [3.0] + flat[:5]) is None       # one spike: smoothed away
    assert divergence_step(flat + [1e6, 1.0]) == 20                    # a blow-up: the smoothed loss too
    assert divergence_step(flat[:5] + [math.nan] + flat[:5]) == 5      # not finite: at once
    assert smoothed_losses([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])


@pytest.mark.parametrize("arguments, message", [
    (dict(start_lr=1.0, end_lr=1.0), "start_lr=1 must be below end_lr=1"),
    (dict(start_lr=0.0), "start_lr=0.0 is not allowed: it must be a positive number."),
    (dict(steps=1), "steps=1 is not allowed: the test needs an integer of at least 2 steps"),
    (dict(max_lr=0.1), "max_lr: the range test sets the learning rate itself"),
])
def test_bad_input_is_refused_in_one_line_before_any_data_is_read(arguments, message):
    with pytest.raises(RangeTestError) as info:
        lr_range_test("ranger", **arguments)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_an_unknown_optimizer_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"^optimizer='adam' is not allowed: optimizer must be one of 'ranger'"):
        lr_range_test("adam", size="tiny", device="cpu")


def test_the_figure_marks_each_suggestion_and_the_series_max_lr(synthetic_data):
    from nbhelpers import plots
    tests = [lr_range_test(name, start_lr=1e-4, end_lr=1e-1, steps=6, data=synthetic_data, **EXACT)
             for name in ("ranger", "adamw")]
    fig = plots.lr_range_tests(tests)
    ax, taken = fig.axes  # Ranger is damped by r_t: a second panel against lr x r_t
    assert ax.get_xscale() == taken.get_xscale() == "log"
    vertical = sorted(line.get_xdata()[0] for line in ax.lines
                      if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1])
    assert vertical == pytest.approx(sorted([0.1] + [t.suggested_max_lr for t in tests]))
    smoothed = [line for line in ax.lines if list(line.get_ydata()) == list(tests[0].smoothed)]
    assert [list(line.get_xdata()) for line in smoothed] == [list(tests[0].lrs)]
    against = [line for line in taken.lines if list(line.get_ydata()) == list(tests[0].smoothed)]
    assert np.array_equal(against[0].get_xdata(), tests[0].effective_lrs, equal_nan=True)
    assert len(plots.lr_range_tests(tests[1:]).axes) == 1  # AdamW alone: nothing to re-read


def test_a_sweep_of_an_optimizer_at_its_own_suggestion_runs_as_any_sweep_and_pairs_with_ranger(tmp_path):
    from nbhelpers.jobs.sweep import make_sweep
    from nbhelpers.lr_range import RangeTest
    found = RangeTest("adamw", "small", (1e-3, 1e-2), (2.3, 2.2), (2.3, 2.25), 0.0123456, 0.00123456,
                      0.005, None, None)
    runs = at_suggested_max_lr(found)
    sweep = make_sweep(runs, size="tiny", folder=tmp_path, seeds=2, name="own-lr")
    assert sweep.name == "own-lr-tiny" and sweep.sweep == "own-lr"
    assert [(e.name, e.parameters["optimizer"], e.parameters.get("max_lr"), e.parameters["rand_seed"])
            for e in sweep.entries] == [("adamw-lr0.00123", "adamw", 0.00123, 1002),
                                        ("adamw-lr0.00123-seed2", "adamw", 0.00123, 1003)]
    ranger = make_sweep("optimizers", size="tiny", folder=tmp_path, seeds=2, only=["ranger-batch"])
    assert [e.parameters["rand_seed"] for e in ranger.entries] == [1002, 1003]  # the same seeds: they pair
