"""Runs compared over seeds: 05's settings (optimizers, Ranger's parts) and 06's branch mixings.

Each setting is run with several seeds, and a difference between two settings
comes with its 95% interval over the seeds (nbhelpers.stats), paired by seed. The runs come from their folders
through nbhelpers.runs.load.load_runs.

    runs = load_runs(["runs/optimizers-small/ranger-batch/run", ...])
    settings = group_settings(runs)            # the runs of one setting over its seeds
    print(markdown_table(settings))            # final test accuracy: mean ± sd over seeds
    differences_between(settings, "scheduler_step", "batch", "epoch")   # each with its 95% interval

    groups = mixing_groups(load_runs(folders))  # notebook 06: per mixing, its runs over the seeds
    print(describe_mixing_study(groups))       # each mixing against the seed's, in numbers

Notebook 05 uses the first part, on the run folders of a sweep
(nbhelpers.jobs.sweep); notebook 06 the last, on the sweep `mixing`.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import torch

from .branches import BranchHistory, branch_history, leading_branch
from .config import NOT_CHANGING_THE_NUMBERS, build_model, make_config, reached_the_last_epoch
from .model import MIXINGS, count_flops, count_parameters
from .stats import (Interval, mean_and_sd, seed_interval, seeds_compared, seeds_needed, shared_seeds, verdict,
                    wilson_interval)

__all__ = ["RunSummary", "NOT_LABELS", "label_by_what_differs", "Setting", "group_settings",
           "SettingDifference", "differences_between", "against_the_first", "markdown_table",
           "CHANCE", "NEAR_CHANCE", "collapsed_runs", "differences_table", "roughness", "MixingRun",
           "mixing_groups", "final_effective", "mixing_accuracy", "mixing_table", "kept_first_choice",
           "describe_mixing_study"]

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
    branch_weights: list[dict[str, float]] = field(default_factory=list)  # branch_weights.csv (06)
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
        """Every planned epoch trained (the one rule: nbhelpers.config.reached_the_last_epoch)."""
        return reached_the_last_epoch(self.history, self.config["num_epochs"])


# Parameters that say where or how a run was made, not what it computed, are never a
# label. The seed is no label either: runs that differ only in it are one setting, repeated.
NOT_LABELS = NOT_CHANGING_THE_NUMBERS | {"rand_seed"}


def label_by_what_differs(runs: Sequence[RunSummary]) -> None:
    """Set each run's `varying` and `label` to the parameters (NOT_LABELS aside) that differ between the runs."""
    varying = [name for name in runs[0].config if name not in NOT_LABELS
               and len({json.dumps(run.config[name]) for run in runs}) > 1] if runs else []
    for run in runs:
        run.varying = {name: run.config[name] for name in varying}
        run.label = ", ".join(str(value) for value in run.varying.values()) or "all runs"


@dataclass
class Setting:
    """The runs of one setting: alike in everything but their seed."""

    label: str
    varying: dict[str, Any]
    runs: list[RunSummary]

    @property
    def config(self) -> dict[str, Any]:
        """The configuration its runs share (rand_seed aside: that is the first run's)."""
        return self.runs[0].config

    @property
    def finals(self) -> list[float]:
        return [run.final_acc for run in self.runs]

    @property
    def by_seed(self) -> dict[int, float]:
        """{rand_seed: final test accuracy}: what a paired comparison matches run by run."""
        return {run.seed: run.final_acc for run in self.runs}

    @property
    def mean(self) -> float:
        return statistics.fmean(self.finals)

    @property
    def sd(self) -> float:
        """The standard deviation of the final accuracies over the seeds (NaN for one seed)."""
        return statistics.stdev(self.finals) if len(self.runs) > 1 else math.nan


def group_settings(runs: Sequence[RunSummary]) -> list[Setting]:
    """The runs grouped by setting (everything but rand_seed), in the order they first appear."""
    settings: dict[str, Setting] = {}
    for run in runs:
        settings.setdefault(run.label, Setting(run.label, dict(run.varying or {}), [])).runs.append(run)
    for setting in settings.values():
        setting.runs.sort(key=lambda run: run.seed)
    return list(settings.values())


@dataclass
class SettingDifference:
    """first's final accuracy minus second's over their seeds, with its 95% interval (nbhelpers.stats).

    Runs that share their seeds (a sweep's settings do: seed k of each starts
    from the same weights and sees the batches in the same order) are paired
    seed by seed, over the seeds both ran; otherwise Welch's interval of the two means. With a single
    seed on either side there is no interval: no verdict.
    """

    first: Setting
    second: Setting

    @property
    def paired(self) -> bool:
        """Compared seed by seed: the two settings share at least 2 seeds (the others are left out)."""
        return len(shared_seeds(self.first.by_seed, self.second.by_seed)) >= 2

    @property
    def seeds(self) -> int:
        """The seeds compared: those both settings ran if paired, else the smaller side's runs."""
        return seeds_compared(self.first.by_seed, self.second.by_seed)

    @cached_property
    def interval(self) -> Interval | None:
        """Computed once: value, is_real, verdict and the tables all read it."""
        return seed_interval(self.first.by_seed, self.second.by_seed)

    @property
    def value(self) -> float:
        return self.interval.difference if self.interval else self.first.mean - self.second.mean

    @property
    def is_real(self) -> bool:
        return bool(self.interval and self.interval.is_real)

    @property
    def verdict(self) -> str:
        """'real', or 'not resolved with N seeds (±half-width)', or no verdict for a single seed."""
        if self.interval is None:
            return "no verdict (one seed: no interval)"
        return verdict(self.interval, self.seeds)

    @property
    def reading(self) -> str:
        """The interval and what it says, in words: '+1.20 [+0.40, +2.00]: real, ranger higher'."""
        if self.interval is None:
            return self.verdict
        if not self.interval.is_real:
            return f"{self.interval}: {self.verdict}"
        direction = "higher" if self.interval.difference > 0 else "lower"
        return f"{self.interval}: real, {self.first.label} {direction}"

    @property
    def seeds_needed(self) -> int | None:
        """Seeds a paired comparison would need to resolve a difference of this size (None if unpaired)."""
        if not self.paired:
            return None
        shared = shared_seeds(self.first.by_seed, self.second.by_seed)
        return seeds_needed({seed: self.first.by_seed[seed] for seed in shared},
                            {seed: self.second.by_seed[seed] for seed in shared})


def differences_between(settings: Sequence[Setting], parameter: str, first: Any,
                        second: Any) -> list[SettingDifference]:
    """parameter=first against parameter=second, for each pair of settings alike otherwise.

    E.g. parameter="scheduler_step", first="batch", second="epoch": one
    SettingDifference per optimizer run both ways.
    """
    pairs: dict[tuple, dict[Any, Setting]] = {}
    for setting in settings:
        if parameter in setting.varying:
            rest = tuple((k, v) for k, v in setting.varying.items() if k != parameter)
            pairs.setdefault(rest, {})[setting.varying[parameter]] = setting
    return [SettingDifference(pair[first], pair[second]) for pair in pairs.values()
            if first in pair and second in pair]


def against_the_first(settings: Sequence[Setting]) -> list[SettingDifference]:
    """The first setting of each group against every other, where a group shares all but the
    first varying parameter: e.g. Ranger against each other optimizer, per batch and per epoch."""
    if not settings or not settings[0].varying:
        return []
    parameter = next(iter(settings[0].varying))
    groups: dict[tuple, list[Setting]] = {}
    for setting in settings:
        rest = tuple((k, v) for k, v in setting.varying.items() if k != parameter)
        groups.setdefault(rest, []).append(setting)
    return [SettingDifference(group[0], other) for group in groups.values() for other in group[1:]]


def markdown_table(settings: Sequence[Setting]) -> str:
    """A row per setting: its seeds, the final test accuracy's mean and sd, each seed's.

    Seconds per epoch are listed seed by seed, not averaged: a run slowed by
    another job on the machine then shows as the one that stands out.
    """
    what = ", ".join(settings[0].varying) if settings and settings[0].varying else "setting"
    lines = [f"| {what} | seeds | epochs | final test acc. (%), mean ± sd | each seed's (%) | each seed's seconds per epoch |",
             "| --- | ---: | ---: | ---: | --- | ---: |"]
    for setting in settings:
        epochs = {f"{len(run.history)}" + ("" if run.finished else f" of {run.config['num_epochs']}")
                  for run in setting.runs}
        lines.append(f"| {setting.label} | {len(setting.runs)} | {', '.join(sorted(epochs))} | "
                     f"{mean_and_sd(setting.finals)} | {', '.join(f'{a:.2f}' for a in setting.finals)} | "
                     f"{', '.join(f'{run.seconds_per_epoch:.1f}' for run in setting.runs)} |")
    return "\n".join(lines)


# A run that ends within this many points of chance (10% on CIFAR-10's ten classes) learned nothing:
# one such seed drags its setting's mean and sd, and a reader should see it named, not averaged away.
CHANCE, NEAR_CHANCE = 10.0, 5.0


def collapsed_runs(settings: Sequence[Setting]) -> list[RunSummary]:
    """The runs whose final test accuracy stayed within NEAR_CHANCE points of chance."""
    return [run for setting in settings for run in setting.runs if run.final_acc < CHANCE + NEAR_CHANCE]


# Beyond this many seeds a difference is too small for a sweep of this series to chase: the table
# says so instead of printing a planning figure of thousands (a mean difference near 0 makes it huge).
SEEDS_WORTH_PLANNING = 100


def seeds_to_plan(needed: int | None) -> str:
    """The "seeds to resolve it" cell: "about N", "over 100" for a difference near 0, "" where unknown."""
    if needed is None:
        return ""
    return f"about {needed}" if needed <= SEEDS_WORTH_PLANNING else f"over {SEEDS_WORTH_PLANNING}"


def differences_table(differences: Sequence[SettingDifference]) -> str:
    """A row per difference: its value, its 95% interval, the verdict and the seeds it would need."""
    lines = ["| first | second | seeds | difference (points) | 95% interval | verdict | seeds to resolve it |",
             "| --- | --- | ---: | ---: | --- | --- | ---: |"]
    for difference in differences:
        interval = difference.interval
        span = f"[{interval.low:+.2f}, {interval.high:+.2f}]" if interval else ""
        pairing = "paired" if difference.paired else "unpaired"
        needed = "" if difference.is_real else seeds_to_plan(difference.seeds_needed)
        lines.append(f"| {difference.first.label} | {difference.second.label} | {difference.seeds}, {pairing} | "
                     f"{difference.value:+.2f} | {span} | {difference.verdict} | {needed} |")
    return "\n".join(lines)


def roughness(run: RunSummary) -> float:
    """How jagged a run's training loss is from one steps.csv row to the next.

    The standard deviation of the row-to-row changes: the slow trend of the
    loss changes little between neighbouring rows, the noise a lot. NaN without steps.csv.
    """
    losses = [row["train_loss"] for row in run.steps]
    changes = [b - a for a, b in zip(losses, losses[1:])]
    return statistics.stdev(changes) if len(changes) > 1 else math.nan


# --------------------------------------------------------------------------
# Notebook 06: the mixings side by side, over seeds
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class MixingRun:
    """One run of the mixing sweep, read back from its folder."""

    folder: Path
    mixing: str
    rand_seed: int
    final_acc: float
    seconds_per_epoch: float
    parameters: int
    step_flops: float        # FLOPs of one training step per image (forward and backward)
    history: BranchHistory


def mixing_groups(runs: Sequence[RunSummary]) -> dict[str, list[MixingRun]]:
    """Runs read back (nbhelpers.runs.load.load_runs), grouped by their mixing in MIXINGS' order (seeds in order)."""
    groups: dict[str, list[MixingRun]] = {}
    for summary in runs:
        config = make_config(**summary.config)
        with torch.device("meta"):  # the counts need shapes only
            model = build_model(config)
        groups.setdefault(config.mixing, []).append(MixingRun(
            summary.folder, config.mixing, config.rand_seed, summary.final_acc,
            summary.seconds_per_epoch, count_parameters(model), count_flops(model)["train_step"],
            branch_history(summary.branch_weights, str(summary.folder))))
    return {mixing: sorted(groups[mixing], key=lambda run: run.rand_seed)
            for mixing in MIXINGS if mixing in groups}


def final_effective(runs: list[MixingRun]) -> list[dict[int, float]]:
    """Per block: the effective number of branches at the end of training, {rand_seed: value}."""
    blocks = runs[0].history.effective.shape[1]
    return [{run.rand_seed: float(run.history.effective[-1][block]) for run in runs} for block in range(blocks)]


def mixing_accuracy(runs: list[MixingRun]) -> dict[int, float]:
    """{rand_seed: final test accuracy} of one mixing's runs."""
    return {run.rand_seed: run.final_acc for run in runs}


def mixing_table(groups: dict[str, list[MixingRun]]) -> str:
    """Per mixing, as Markdown: accuracy, branches in use at start and end, parameters and time (mean ± sd)."""
    blocks = next(iter(groups.values()))[0].history.mean.shape[1]
    lines = ["| mixing | seeds | final test accuracy (%), mean ± sd | effective branches per block, "
             "untrained → trained | parameters | seconds per epoch |",
             "| --- | ---: | ---: | --- | ---: | ---: |"]
    for mixing, runs in groups.items():
        starts = torch.stack([run.history.effective[0] for run in runs]).mean(dim=0)
        ends = final_effective(runs)
        use = "; ".join(f"{starts[block]:.2f} → {mean_and_sd(list(ends[block].values()))}" for block in range(blocks))
        lines.append(f"| {mixing} | {len(runs)} | {mean_and_sd([r.final_acc for r in runs])} | {use} | "
                     f"{runs[0].parameters:,} | {mean_and_sd([r.seconds_per_epoch for r in runs], 1)} |")
    return "\n".join(lines)


def kept_first_choice(runs: list[MixingRun]) -> tuple[int, int]:
    """In how many (run, block) pairs the branch with the largest share at epoch 0 still has it at the end.

    Blocks where no single branch leads at epoch 0 are not counted.
    """
    pairs = [first == leading_branch(run.history.shares[-1, block])
             for run in runs for block in range(run.history.shares.shape[1])
             if (first := leading_branch(run.history.shares[0, block])) is not None]
    return int(sum(pairs)), len(pairs)


def _first_choice_verdict(kept: int, pairs: int, branches: int) -> str:
    """The first hypothesis of notebook 06 against the count of blocks that kept their leading branch.

    Strictly, "the branches on at initialization stay on" predicts that every block keeps it; were the
    end unrelated to the start, a block would keep it about 1 time in `branches`. The share's 95%
    Wilson interval says which the count can tell apart (counting blocks as independent, which blocks
    of one run only approximately are).
    """
    low, high = (float(bound) for bound in wilson_interval(kept / pairs, pairs))
    interval = f"share {kept / pairs:.0%}, 95% interval [{low:.0%}, {high:.0%}] (blocks counted as independent)"
    strict = ("as the hypothesis predicts (every block keeps it)" if kept == pairs else
              f"so the hypothesis in its strict form (every block keeps it) does not hold: the lead moved "
              f"in {pairs - kept} of {pairs} blocks")
    chance = 1 / branches
    start = ("the start predicts the end more often than chance" if low > chance else
             f"not resolved from chance (about 1 in {branches}, the share were the end unrelated to the start)")
    return f"{interval}: {strict}; {start}."


def _against(first: dict[int, float], second: dict[int, float]) -> tuple[str, Interval | None]:
    """'higher', 'lower' (the 95% interval excludes 0), 'unresolved', or 'unknown' (one seed), and the interval."""
    interval = seed_interval(first, second)
    if interval is None:
        return "unknown", None
    if not interval.is_real:
        return "unresolved", interval
    return ("higher" if interval.difference > 0 else "lower"), interval


def describe_mixing_study(groups: dict[str, list[MixingRun]], reference: str = "seed") -> str:
    """What the sweep says, each mixing against the seed's, in numbers: notebook 06's conclusion.

    Each difference comes with its 95% interval, paired over the seeds the
    mixings share (nbhelpers.stats); it counts only where the interval
    excludes 0, and is "not resolved" otherwise. One seed gives no interval.
    """
    if reference not in groups or len(groups) < 2:
        return (f"Nothing to compare: the runs hold {', '.join(groups) or 'no mixing'}; the conclusion "
                f"needs the {reference!r} mixing and at least one other.")
    base = groups[reference]
    base_accuracy, base_use = mixing_accuracy(base), final_effective(base)
    lines = [f"{reference}: {mean_and_sd(list(base_accuracy.values()))}% final test accuracy over {len(base)} "
             f"seed(s); effective branches per block at the end: "
             f"{', '.join(mean_and_sd(list(block.values())) for block in base_use)}"]
    others = [mixing for mixing in groups if mixing != reference]
    against: dict[str, str] = {}
    more_branches = []
    for mixing in others:
        accuracy, use = mixing_accuracy(groups[mixing]), final_effective(groups[mixing])
        against[mixing], interval = _against(accuracy, base_accuracy)
        said = (f"{interval} against {reference}, {verdict(interval, seeds_compared(accuracy, base_accuracy))}"
                if interval else f"{statistics.fmean(accuracy.values()) - statistics.fmean(base_accuracy.values()):+.2f} "
                f"points against {reference}, no interval with one seed")
        lines.append(f"{mixing}: {mean_and_sd(list(accuracy.values()))}% ({said}); effective branches per "
                     f"block at the end: {', '.join(mean_and_sd(list(block.values())) for block in use)}")
        if all(_against(after, before)[0] == "higher" for after, before in zip(use, base_use)):
            more_branches.append(mixing)
    kept, pairs = kept_first_choice(base)
    lines += ["", "Conclusion (real: the 95% interval excludes 0):"]
    if any(len(runs) < 2 for runs in groups.values()):
        lines.append("- with a single seed for some mixing there is no interval to judge a difference "
                     "by: run the sweep with more seeds (seeds) before concluding anything.")
        return "\n".join(lines)
    if pairs:
        lines.append(f"- {reference}'s first choice: the branch with the largest share at epoch 0 still has "
                     f"it at the end in {kept} of {pairs} blocks ({len(base)} seeds); "
                     + _first_choice_verdict(kept, pairs, base[0].history.shares.shape[-1]))
    lines.append("- branches in use: " + (
        f"{', '.join(more_branches)} use more branches than {reference} in every block (real in each)."
        if more_branches else
        f"no mixing uses more branches than {reference} in every block with an interval that excludes 0."))
    better = [m for m in others if against[m] == "higher"]
    worse = [m for m in others if against[m] == "lower"]
    unresolved = [m for m in others if against[m] == "unresolved"]
    parts = ([f"{', '.join(better)} more accurate than {reference}"] if better else []) + \
            ([f"{', '.join(worse)} less accurate than {reference}"] if worse else []) + \
            ([f"{', '.join(unresolved)} not resolved from {reference}"] if unresolved else [])
    lines.append(f"- accuracy against {reference}: {'; '.join(parts)}.")
    pairs_among = [(a, b, _against(mixing_accuracy(groups[a]), mixing_accuracy(groups[b])))
                   for k, a in enumerate(others) for b in others[k + 1:]]
    if pairs_among:
        lines.append("- accuracy among the others: " + "; ".join(
            f"{a} against {b}: {interval} ({'not resolved' if said == 'unresolved' else a + ' ' + said})"
            for a, b, (said, interval) in pairs_among) + ".")
    if "equal" in others and better:
        beats_equal = [m for m in better if m != "equal" and _against(
            mixing_accuracy(groups[m]), mixing_accuracy(groups["equal"]))[0] == "higher"]
        if beats_equal:
            lines.append(f"- so: {', '.join(beats_equal)} more accurate than equal (real): at this size, "
                         "weights learned image by image add accuracy beyond a fixed average of the branches.")
        elif "equal" in better:
            lines.append(f"- so: equal, with no per-image weights at all, is more accurate than {reference} "
                         "(real), and no per-image mixing is resolved above equal.")
            lines.append(f"- open question: is equal's gain over {reference} the gain of using every branch? "
                         f"These runs do not isolate it: equal also changes each block's scale (its weights "
                         f"sum to one, {reference}'s are unbounded) and drops the learned sign of the weights. "
                         "A control that keeps one of these and changes the other would tell.")
    if not better and not worse:
        lines.append(f"- so: no difference in accuracy from {reference} is resolved at this size and "
                     "number of seeds (the intervals above say how large one could still be).")
    return "\n".join(lines)
