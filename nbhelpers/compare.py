"""Runs compared over seeds: 05's settings (optimizers, Ranger's parts) and 06's branch mixings.

Each setting is run with several seeds, and a difference between two settings
is set against the noise between the seeds. The runs come from their folders
through nbhelpers.runs.load.load_runs.

    runs = load_runs(["runs/optimizers-small/ranger-batch/run", ...])
    settings = group_settings(runs)            # the runs of one setting over its seeds
    print(markdown_table(settings))            # final test accuracy: mean and spread over seeds
    differences_between(settings, "scheduler_step", "batch", "epoch")   # real or a tie, each

    groups = mixing_groups(load_runs(folders))  # notebook 06: per mixing, its runs over the seeds
    print(describe_mixing_study(groups))       # each mixing against the seed's, in numbers

Notebook 05 uses the first part, on the run folders of a sweep
(nbhelpers.jobs.sweep); notebook 06 the last, on the sweep `mixing`; 03 sets
one batch's numbers against the next with `Spread`.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .branches import BranchHistory, branch_history, leading_branch
from .config import NOT_CHANGING_THE_NUMBERS, build_model, make_config, reached_the_last_epoch
from .model import MIXINGS, count_flops, count_parameters

__all__ = ["RunSummary", "NOT_LABELS", "label_by_what_differs", "Spread", "compare_spreads", "Setting",
           "group_settings", "SettingDifference", "differences_between", "against_the_first",
           "markdown_table", "differences_table", "roughness", "MixingRun", "mixing_groups",
           "final_effective", "mixing_table", "kept_first_choice", "describe_mixing_study"]

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


@dataclass(frozen=True)
class Spread:
    """Values of several seeds: their mean and spread (the sample standard deviation; NaN for one).

    Written "mean ± spread", or the mean alone for a single seed.
    """

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def spread(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    def __str__(self) -> str:
        if len(self.values) == 1:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} ± {self.spread:.2f}"


def compare_spreads(first: Spread, second: Spread) -> str:
    """'higher', 'lower', 'tie' (mean ± spread overlap), or 'unknown' (a single seed: no spread)."""
    if len(first.values) < 2 or len(second.values) < 2:
        return "unknown"
    if abs(first.mean - second.mean) <= first.spread + second.spread:
        return "tie"
    return "higher" if first.mean > second.mean else "lower"


@dataclass
class Setting:
    """The runs of one setting: alike in everything but their seed."""

    label: str
    varying: dict[str, Any]
    runs: list[RunSummary]

    @property
    def finals(self) -> list[float]:
        return [run.final_acc for run in self.runs]

    @property
    def accuracy(self) -> Spread:
        """The final test accuracies over the seeds."""
        return Spread(tuple(self.finals))

    @property
    def mean(self) -> float:
        return self.accuracy.mean

    @property
    def spread(self) -> float:
        """The standard deviation of the final accuracies over the seeds (NaN for one seed)."""
        return self.accuracy.spread


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
    """first's mean final accuracy minus second's, set against the two settings' spread.

    It is called real when it is larger than the sum of the two spreads (their
    mean ± one standard deviation do not overlap); otherwise a tie. With a
    single seed on either side there is no spread to compare with: unknown.
    """

    first: Setting
    second: Setting

    @property
    def value(self) -> float:
        return self.first.mean - self.second.mean

    @property
    def spread(self) -> float:
        return self.first.spread + self.second.spread

    @property
    def verdict(self) -> str:
        said = compare_spreads(self.first.accuracy, self.second.accuracy)
        return {"unknown": "unknown (one seed: no spread)", "tie": "tie"}.get(said, "real")


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
    """A row per setting: its seeds, the final test accuracy's mean and spread, each seed's.

    Seconds per epoch are listed seed by seed, not averaged: a run slowed by
    another job on the machine then shows as the one that stands out.
    """
    what = ", ".join(settings[0].varying) if settings and settings[0].varying else "setting"
    lines = [f"| {what} | seeds | epochs | final test acc. (%), mean ± sd | each seed's (%) | each seed's seconds per epoch |",
             "| --- | ---: | ---: | ---: | --- | ---: |"]
    for setting in settings:
        epochs = {f"{len(run.history)}" + ("" if run.finished else f" of {run.config['num_epochs']}")
                  for run in setting.runs}
        spread = "" if math.isnan(setting.spread) else f" ± {setting.spread:.2f}"
        lines.append(f"| {setting.label} | {len(setting.runs)} | {', '.join(sorted(epochs))} | "
                     f"{setting.mean:.2f}{spread} | {', '.join(f'{a:.2f}' for a in setting.finals)} | "
                     f"{', '.join(f'{run.seconds_per_epoch:.1f}' for run in setting.runs)} |")
    return "\n".join(lines)


def differences_table(differences: Sequence[SettingDifference]) -> str:
    """A row per difference: its value, the spread it is set against, and the verdict."""
    lines = ["| first | second | difference of means (points) | sum of the two spreads (points) | verdict |",
             "| --- | --- | ---: | ---: | --- |"]
    for difference in differences:
        spread = "" if math.isnan(difference.spread) else f"{difference.spread:.2f}"
        lines.append(f"| {difference.first.label} | {difference.second.label} | "
                     f"{difference.value:+.2f} | {spread} | {difference.verdict} |")
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


def final_effective(runs: list[MixingRun]) -> list[Spread]:
    """Per block: the effective number of branches at the end of training, over the runs' seeds."""
    ends = torch.stack([run.history.effective[-1] for run in runs])  # (seeds, blocks)
    return [Spread(tuple(ends[:, block].tolist())) for block in range(ends.shape[1])]


def mixing_table(groups: dict[str, list[MixingRun]]) -> str:
    """Per mixing, as Markdown: accuracy, branches in use at start and end, parameters and time."""
    blocks = next(iter(groups.values()))[0].history.mean.shape[1]
    lines = ["| mixing | seeds | final test accuracy (%), mean ± spread | effective branches per block, "
             "untrained → trained | parameters | seconds per epoch |",
             "| --- | ---: | ---: | --- | ---: | ---: |"]
    for mixing, runs in groups.items():
        starts = torch.stack([run.history.effective[0] for run in runs]).mean(dim=0)
        ends = final_effective(runs)
        use = "; ".join(f"{starts[block]:.2f} → {ends[block]}" for block in range(blocks))
        lines.append(f"| {mixing} | {len(runs)} | {Spread(tuple(r.final_acc for r in runs))} | {use} | "
                     f"{runs[0].parameters:,} | {Spread(tuple(r.seconds_per_epoch for r in runs))} |")
    return "\n".join(lines)


def kept_first_choice(runs: list[MixingRun]) -> tuple[int, int]:
    """In how many (run, block) pairs the branch with the largest share at epoch 0 still has it at the end.

    Blocks where no single branch leads at epoch 0 are not counted.
    """
    pairs = [first == leading_branch(run.history.shares[-1, block])
             for run in runs for block in range(run.history.shares.shape[1])
             if (first := leading_branch(run.history.shares[0, block])) is not None]
    return int(sum(pairs)), len(pairs)


def _accuracy(runs: list[MixingRun]) -> Spread:
    return Spread(tuple(run.final_acc for run in runs))


_SAID = {"tie": "a tie (inside the seeds' spreads)", "unknown": "no verdict (one seed: no spread to judge by)",
         "higher": "higher, beyond the seeds' spreads", "lower": "lower, beyond the seeds' spreads"}


def describe_mixing_study(groups: dict[str, list[MixingRun]], reference: str = "seed") -> str:
    """What the sweep says, each mixing against the seed's, in numbers: notebook 06's conclusion.

    A difference counts only where the two means ± spreads do not overlap;
    inside them it is a tie, and with one seed there is no spread to judge by.
    """
    if reference not in groups or len(groups) < 2:
        return (f"Nothing to compare: the runs hold {', '.join(groups) or 'no mixing'}; the conclusion "
                f"needs the {reference!r} mixing and at least one other.")
    base_accuracy, base_use = _accuracy(groups[reference]), final_effective(groups[reference])
    lines = [f"{reference}: {base_accuracy}% final test accuracy over {len(groups[reference])} seed(s); "
             f"effective branches per block at the end: {', '.join(map(str, base_use))}"]
    others = [mixing for mixing in groups if mixing != reference]
    against: dict[str, str] = {}
    more_branches = []
    for mixing in others:
        accuracy, use = _accuracy(groups[mixing]), final_effective(groups[mixing])
        against[mixing] = compare_spreads(accuracy, base_accuracy)
        lines.append(f"{mixing}: {accuracy}% ({accuracy.mean - base_accuracy.mean:+.2f} points against "
                     f"{reference}: {_SAID[against[mixing]]}); effective branches per block at the end: "
                     f"{', '.join(map(str, use))}")
        if all(compare_spreads(after, before) == "higher" for after, before in zip(use, base_use)):
            more_branches.append(mixing)
    kept, pairs = kept_first_choice(groups[reference])
    lines += ["", "Conclusion:"]
    if any(len(runs) < 2 for runs in groups.values()):
        lines.append("- with a single seed for some mixing there is no spread to judge a difference "
                     "by: run the sweep with more seeds (seeds) before concluding anything.")
        return "\n".join(lines)
    if pairs:
        lines.append(f"- {reference}'s first choice: the branch with the largest share at epoch 0 still has "
                     f"it at the end in {kept} of {pairs} blocks ({len(groups[reference])} seeds).")
    lines.append("- branches in use: " + (
        f"{', '.join(more_branches)} use more branches than {reference} in every block, beyond the "
        "seeds' spreads." if more_branches else
        f"no mixing uses more branches than {reference} in every block beyond the seeds' spreads."))
    better = [m for m in others if against[m] == "higher"]
    worse = [m for m in others if against[m] == "lower"]
    tied = [m for m in others if against[m] == "tie"]
    parts = ([f"{', '.join(better)} more accurate than {reference}"] if better else []) + \
            ([f"{', '.join(worse)} less accurate than {reference}"] if worse else []) + \
            ([f"{', '.join(tied)} tied with {reference}"] if tied else [])
    lines.append(f"- accuracy against {reference}: {'; '.join(parts)} (differences beyond the seeds' spreads "
                 "count, those inside them are ties).")
    pairs_among = [(a, b, compare_spreads(_accuracy(groups[a]), _accuracy(groups[b])))
                   for k, a in enumerate(others) for b in others[k + 1:]]
    if pairs_among:
        lines.append("- accuracy among the others: " + "; ".join(
            f"{a} against {b}: {'a tie' if v == 'tie' else a + ' ' + v}" for a, b, v in pairs_among) + ".")
    if "equal" in others and better:
        beats_equal = [m for m in better if m != "equal" and compare_spreads(
            _accuracy(groups[m]), _accuracy(groups["equal"])) == "higher"]
        if beats_equal:
            lines.append(f"- so: {', '.join(beats_equal)} beat(s) equal beyond the spreads: choosing "
                         "branches image by image adds accuracy beyond averaging them.")
        elif "equal" in better:
            lines.append("- so: equal, with no per-image weights at all, beats the seed's mixing and no "
                         "per-image mixing beats equal beyond the spreads: at this size the gain comes "
                         "from using every branch, not from choosing between them image by image.")
    if not better and not worse:
        lines.append(f"- so: no difference in accuracy at this size; every mixing ties with {reference}.")
    return "\n".join(lines)
