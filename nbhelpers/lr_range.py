"""The learning-rate range test (Smith 2015, sec. 3.3; fastai's lr_find): how high may max_lr go?

    test = lr_range_test("adamw", size="small")   # 300 steps from the model's initialization
    test.suggested_max_lr                         # the lr at the smoothed loss's minimum, / 10
    plots.lr_range_tests([lr_range_test("ranger"), test])

The series' model trains from its initialization for a few hundred steps while
the learning rate rises exponentially, step by step, from `start_lr` to
`end_lr`; each step's training loss is recorded. At first the loss hardly
moves (the rate is too small to matter), then it falls ever faster, then it
turns and climbs: the rate has become too large. The test stops where the loss
diverges. It serves the series' comparison of optimizers (notebook 05): does
the series' max_lr of 0.1 suit Ranger and AdamW both, or does one only survive
it? (`at_suggested_max_lr` makes the sweep that asks; notebook 07 runs it.)

Reading the curve. One batch's loss is noisy, so the curve read is fastai's:
exponentially smoothed (beta 0.98) and bias-corrected like Adam's moments.
`suggested_max_lr` is the classic rule of fastai's lr_find (its `minimum`):
the rate at the smoothed loss's minimum, divided by ten, since at the minimum
itself the loss is about to turn. It rests on one argmin of a smoothed curve;
the other common rule, the rate where the smoothed loss falls fastest per
factor of lr (`steepest_lr`, fastai's `steep`), rests on the slope of that
curve, which noise moves far more, so it is returned beside it, not chosen.

Why Ranger's curve is not read at its lr. RAdam's rectification r_t
(nbhelpers.ranger.rectification_term) shrinks Adam's step for the first
thousands of steps: r_t is still below 0.4 at step 300, so over a test this
short Ranger (and RAdam) takes steps of lr x r_t, not lr, and Lookahead pulls
the weights halfway back every six steps besides. Its curve therefore shows
where a run as short as the test (the size small's 189 steps) may put max_lr;
a 60-epoch run, where r_t is near 1 at the schedule's peak, meets the full lr.
For these optimizers `effective_lrs` holds lr x r_t per step (and `r_t` the
factor), so the curve can be read against the step really taken.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from .ranger_parts import effective_learning_rates
from .config import make_config, pick_size
from .data import CIFAR10Data, CifarLoader, load_cifar10, prepare_splits
from .errors import ExplainedError
from .progress import progress_mode
from .runtime import pick_device, seed_everything
from .train import build_training, check_batch_size, train_epoch

__all__ = ["RangeTest", "RangeTestError", "lr_range_test", "smoothed_losses", "divergence_step",
           "at_suggested_max_lr", "SMOOTHING", "DIVERGED", "RECTIFIED"]

SMOOTHING = 0.98   # fastai's beta for the running average of the loss
DIVERGED = 4       # the smoothed loss at this many times its lowest value so far ends the test (fastai's)
CHECK_EVERY = 10   # steps between looks at the losses (train_epoch reads them back once per call)
# The optimizers whose Adam step RAdam's r_t scales (nbhelpers.train.build_optimizer).
RECTIFIED = frozenset({"ranger", "ranger_no_lookahead", "ranger_no_gc", "radam"})
# Training parameters the test sets itself: the schedule is its exponential rise.
SET_BY_THE_TEST = ("learning_rate", "max_lr", "scheduler_step", "num_epochs")


class RangeTestError(ExplainedError, ValueError):
    """A range test cannot run as asked (its learning-rate range or its length)."""


@dataclass(frozen=True)
class RangeTest:
    """One range test's curve, cut where the loss diverged, and what it suggests."""

    optimizer: str                    # as in TrainConfig.optimizer
    size: str                         # the size whose model and data it trained (nbhelpers.config.SIZES)
    lrs: tuple[float, ...]            # each step's learning rate, rising exponentially
    losses: tuple[float, ...]         # each step's training loss (cross-entropy of its batch)
    smoothed: tuple[float, ...]       # the losses smoothed (SMOOTHING) and bias-corrected
    min_lr: float                     # the lr at the smoothed loss's minimum
    suggested_max_lr: float           # min_lr / 10 (this module's docstring says why)
    steepest_lr: float                # the lr where the smoothed loss falls fastest per factor of lr
    diverged_at: float | None         # the lr of the step at which it diverged; None if it never did
    effective_lrs: tuple[float, ...] | None  # lr x r_t per step where RAdam's r_t applies (NaN
                                             # for its first, plain-momentum steps); else None

    @property
    def r_t(self) -> tuple[float, ...] | None:
        """RAdam's rectification factor at each step (None for optimizers without it)."""
        if self.effective_lrs is None:
            return None
        return tuple(effective / lr for effective, lr in zip(self.effective_lrs, self.lrs))


def lr_range_test(optimizer: str = "ranger", *, size: str = "small", start_lr: float = 1e-5,
                  end_lr: float = 10.0, steps: int = 300, rand_seed: int = 1002,
                  device: torch.device | str | None = None, data: CIFAR10Data | None = None,
                  progress: str = "auto", **overrides: Any) -> RangeTest:
    """Train `size`'s model from its initialization with the lr rising from start_lr to end_lr.

    Step i (from 0) uses start_lr x (end_lr / start_lr) ** (i / (steps - 1)), so
    the last one uses end_lr; there is no one-cycle schedule, and beta1 stays at
    the optimizer's default. It is the training loop of `fit` (train_epoch), with
    the exponential rise as its scheduler, stepped after every batch, over
    `size`'s training images (epoch after epoch, as many as the steps need).
    `overrides` are other training parameters (make_config), e.g. precision="fp32";
    `data` reuses loaded CIFAR-10; size "auto" is small on a CPU, full on a GPU.
    """
    _check_range(start_lr, end_lr, steps)
    taken = sorted(set(overrides) & set(SET_BY_THE_TEST))
    if taken:
        raise RangeTestError(f"{', '.join(taken)}: the range test sets the learning rate itself "
                             "(start_lr, end_lr, steps); leave them out.")
    device = torch.device(device) if device is not None else pick_device()
    config = make_config(size=pick_size(size, device, sweep=True), optimizer=optimizer,
                         rand_seed=rand_seed, learning_rate=start_lr, **overrides)
    data = data or load_cifar10(config.data_dir or None, config.download)
    # Training images only: the test measures no accuracy, so the test split is not cut (0: as is).
    train = prepare_splits(data, config.train_subset, 0, config.val_size).train
    check_batch_size(config, len(train))

    seed_everything(config.rand_seed, config.deterministic)  # the initialization fit would start from
    _, step_model, built, chosen = build_training(config, device, len(data.classes))
    growth = end_lr / start_lr
    rise = LambdaLR(built, lambda step: growth ** (step / (steps - 1)))  # closed form: no drift
    batches = _endless(CifarLoader(train, config.batch_size, train=True, device=device,
                                   seed=config.rand_seed))
    show = _Progress(progress, steps, config.optimizer)
    lrs: list[float] = []
    losses: list[float] = []

    def on_step(group: dict[str, Any]) -> None:
        lrs.append(group["lr"])  # the lr this step used: the scheduler moves it right after
        show.step()

    while len(losses) < steps:
        chunk = _Batches(batches, min(CHECK_EVERY, steps - len(losses)), device)
        trained = train_epoch(step_model, chunk, built, rise, per_batch=True,
                              precision=chosen["precision"], channels_last=chosen["channels_last"],
                              on_step=on_step)
        losses += trained["step_losses"]
        show.checked(len(losses), lrs[-1], losses[-1])
        if divergence_step(losses) is not None:
            break
    show.close()
    beta2 = built.param_groups[0]["betas"][1] if config.optimizer in RECTIFIED else None
    return _summarize(config.optimizer, config.size, lrs, losses, steps, beta2)


def at_suggested_max_lr(test: RangeTest) -> dict[str, dict[str, Any]]:
    """A sweep's run: test.optimizer at its own suggested max_lr (3 significant digits), named by it.

    Run over seeds (nbhelpers.jobs.sweep.make_sweep(..., name="own-lr")) and set
    against the sweep `optimizers`' Ranger per batch at the series' 0.1: the
    seeds are the same, so the runs pair, and the comparison can tell an
    optimizer that wins from one that only survives a max_lr too high for the
    other (notebook 07). The lr is in the name, so a test that suggests another
    rate on another machine makes a run of its own instead of clashing with this one.
    """
    max_lr = float(f"{test.suggested_max_lr:.3g}")
    return {f"{test.optimizer}-lr{max_lr:g}": {"optimizer": test.optimizer, "max_lr": max_lr}}


def smoothed_losses(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """fastai's smoothed loss: a running average beta * avg + (1 - beta) * loss, divided by 1 - beta^n.

    The division removes the average's pull towards its starting value 0, as
    Adam's bias correction does, so the first values are the losses' own scale.
    """
    average, smoothed = 0.0, []
    for n, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta ** n))
    return smoothed


def divergence_step(losses: list[float], beta: float = SMOOTHING) -> int | None:
    """The first step whose loss is not finite, or whose smoothed loss passes DIVERGED x its lowest so far.

    The smoothed loss, not the raw one: one unlucky batch does not end the test.
    None if there is none.
    """
    lowest = math.inf
    for step, (loss, smooth) in enumerate(zip(losses, smoothed_losses(losses, beta))):
        if not math.isfinite(loss) or smooth > DIVERGED * lowest:
            return step
        lowest = min(lowest, smooth)
    return None


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def _check_range(start_lr: float, end_lr: float, steps: int) -> None:
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                or not math.isfinite(value):
            raise RangeTestError(f"{name}={value!r} is not allowed: it must be a positive number.")
    if start_lr >= end_lr:
        raise RangeTestError(f"start_lr={start_lr:g} must be below end_lr={end_lr:g}: the test "
                             "raises the learning rate from the one to the other.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise RangeTestError(f"steps={steps!r} is not allowed: the test needs an integer of at "
                             "least 2 steps (a few hundred to see a curve).")


def _summarize(optimizer: str, size: str, lrs: list[float], losses: list[float], steps: int,
               beta2: float | None) -> RangeTest:
    """The curve up to (not including) the step where it diverged, and what it suggests.

    `beta2`: the optimizer's, where RAdam's r_t scales its step (else None).
    """
    end = divergence_step(losses)
    diverged_at = lrs[end] if end is not None else None
    lrs, losses = lrs[:end], losses[:end]
    if len(losses) < 2:
        raise RangeTestError(f"the loss diverged at step {len(losses) + 1} (lr {diverged_at:.3g}), "
                             "before there was a curve to read: choose a smaller start_lr.")
    smoothed = smoothed_losses(losses)
    # Like fastai, the suggestions skip the first tenth of the steps: there the smoothed
    # loss rests on a few batches only. (All of it, if the test diverged that early.)
    skip = steps // 10 if len(losses) - steps // 10 >= 2 else 0
    considered = np.array(smoothed[skip:])
    log_lrs = np.log(lrs[skip:])
    min_lr = lrs[skip + int(considered.argmin())]
    steepest_lr = lrs[skip + int(np.gradient(considered, log_lrs).argmin())]
    effective = tuple(effective_learning_rates(lrs, beta2)) if beta2 is not None else None
    return RangeTest(optimizer, size, tuple(lrs), tuple(losses), tuple(smoothed), min_lr,
                     min_lr / 10, steepest_lr, diverged_at, effective)


def _endless(loader: CifarLoader) -> Iterator:
    """The loader's batches epoch after epoch (epochs 1, 2, ..., as `fit` numbers them)."""
    for epoch in itertools.count(1):
        loader.set_epoch(epoch)
        yield from loader


class _Batches:
    """The next `count` batches of a stream: what train_epoch needs of a loader (len, device, batches)."""

    def __init__(self, stream: Iterator, count: int, device: torch.device):
        self.stream, self.count, self.device = stream, count, device

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator:
        return itertools.islice(self.stream, self.count)


class _Progress:
    """A bar where one can be drawn; under papermill's log a line every LOG_EVERY steps."""

    LOG_EVERY = 100

    def __init__(self, requested: str, steps: int, optimizer: str):
        self.mode, self.steps, self.name = progress_mode(requested), steps, optimizer
        self.bar, self.next_line = None, self.LOG_EVERY
        if self.mode == "bar":
            from tqdm.auto import tqdm
            self.bar = tqdm(total=steps, desc=f"range test, {optimizer}", unit="step", leave=False)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def checked(self, done: int, lr: float, loss: float) -> None:
        """After each look at the losses: `done` steps so far, the last one's lr and loss."""
        if self.mode == "log" and (done >= self.next_line or done == self.steps):
            self.next_line += self.LOG_EVERY
            print(f"range test, {self.name}: step {done}/{self.steps}, lr {lr:.3g}, loss {loss:.4f}",
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
