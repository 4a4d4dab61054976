"""The series' statistics: how large a difference is, and whether the runs can tell.

One rule everywhere. A difference is stated with its 95% interval and called
real only where that interval excludes 0; otherwise it is "not resolved with
N seeds", with the interval's half-width: the smallest difference this design
could have seen. Notebooks 03 (gradient centralization's effect), 04 (the
ablations over test images, calibration, the reliability diagram), 05 (the
sweeps' comparisons) and 06 (the branch mixings) state their differences with
it, and the README's words on results follow its verdicts.

Which interval for which question:
- `paired_interval`: two settings' runs matched by rand_seed, as a sweep runs
  them (seed k of every setting starts from the same initial weights and sees
  the data in the same order): the t interval of the mean per-seed difference;
- `welch_interval`: runs that are not matched: Welch's t interval;
- `paired_bootstrap`: one model against a change of it on the same test
  images (04's ablations): the images resampled, both models scored on each draw;
- `mean_interval`: the mean of many per-image values (04's calibration gap);
- `wilson_interval`: a share of images predicted right (the reliability diagram).

`verdict` puts an interval in words; `seeds_needed` says how many seeds a
comparison would need to be resolved; `simulate_rules` shows, on data whose
truth is known, why the series gave up the old rule "real when larger than the
sum of the two spreads" (05's figure).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import stats as scipy_stats

from .errors import ExplainedError

__all__ = ["Interval", "ComparisonError", "mean_and_sd", "paired_interval", "welch_interval", "seed_interval", "shared_seeds", "seeds_compared", "paired_bootstrap",
           "mean_interval", "wilson_interval", "verdict", "seeds_needed", "RuleRates",
           "simulate_rules", "OLD_RULE", "PAIRED_RULE"]

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


class ComparisonError(ExplainedError):
    """Numbers that cannot support the comparison asked of them (too few seeds, unmatched seeds, NaN)."""


class Interval(NamedTuple):
    """A difference with its interval, low <= difference <= high (in percentage points for accuracies).

    A t interval is centred on the difference; a bootstrap interval need not be.
    """

    difference: float
    low: float
    high: float

    @property
    def is_real(self) -> bool:
        """True only where the interval excludes 0: the difference is more than the noise it was measured in."""
        return self.low > 0 or self.high < 0

    @property
    def half_width(self) -> float:
        """Half the interval's width: about the smallest difference this design could have told from 0."""
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return f"{self.difference:+.2f} pp [{self.low:+.2f}, {self.high:+.2f}]"


# --------------------------------------------------------------------------
# Runs over seeds: paired (matched by rand_seed) or not
# --------------------------------------------------------------------------

Runs = Mapping[int, float] | Sequence[float]  # {rand_seed: value}, or values in seed order


def mean_and_sd(values: Sequence[float], digits: int = 2) -> str:
    """ "mean ± sd" of runs over seeds (the sample standard deviation), or the value alone for one run.

    A description of the runs, how far one seed's run lands from the mean;
    not a verdict: whether two settings differ is the intervals' question.
    """
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return "no runs"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def paired_interval(first: Runs, second: Runs, confidence: float = CONFIDENCE) -> Interval:
    """first minus second, seed by seed: the mean of the per-seed differences and its t interval.

    Give two mappings {rand_seed: value} (the seeds must be the same on both
    sides), or two sequences of equal length already in matched seed order.
    Pairing removes what the two runs of one seed share (their initial weights
    and the order of the data) from the noise; what is left is the spread of
    the differences themselves, with n - 1 degrees of freedom for n seeds.
    """
    return _t_interval(_per_seed_differences(first, second), confidence)


def welch_interval(first: Runs, second: Runs, confidence: float = CONFIDENCE) -> Interval:
    """first's mean minus second's, for runs not matched by seed: Welch's t interval.

    Each side's variance is its own (no equal-variance assumption), and the
    degrees of freedom come from the Welch-Satterthwaite formula. A mapping's
    values are taken, its seeds ignored. Each side needs at least 2 runs.
    """
    a, b = _finite_values(first, "first"), _finite_values(second, "second")
    for which, values in (("first", a), ("second", b)):
        if len(values) < 2:
            raise ComparisonError(f"Welch's interval needs at least 2 runs on each side; the {which} has "
                                  f"{len(values)}: run more seeds")
    _check_confidence(confidence)
    difference = float(a.mean() - b.mean())
    var_a, var_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)  # each mean's variance
    standard_error = math.sqrt(var_a + var_b)
    if standard_error == 0:  # every run alike on both sides: no noise to allow for
        return Interval(difference, difference, difference)
    degrees = (var_a + var_b) ** 2 / (var_a ** 2 / (len(a) - 1) + var_b ** 2 / (len(b) - 1))
    half = _t_quantile(confidence, degrees) * standard_error
    return Interval(difference, difference - half, difference + half)


def seed_interval(first: Mapping[int, float], second: Mapping[int, float],
                  confidence: float = CONFIDENCE) -> Interval | None:
    """first minus second for two settings' runs {rand_seed: value}: paired over the seeds they share
    where they share at least 2 (as a sweep's settings do; a seed only one side has is left out),
    Welch's interval of all the runs where they do not; None with fewer than 2 runs a side."""
    shared = shared_seeds(first, second)
    if len(shared) >= 2:
        return paired_interval({seed: first[seed] for seed in shared},
                               {seed: second[seed] for seed in shared}, confidence)
    if min(len(first), len(second)) < 2:
        return None
    return welch_interval(first, second, confidence)


def shared_seeds(first: Mapping[int, float], second: Mapping[int, float]) -> list[int]:
    """The seeds both sides ran, in order: what a paired comparison matches."""
    return sorted(first.keys() & second.keys())


def seeds_compared(first: Mapping[int, float], second: Mapping[int, float]) -> int:
    """The N of seed_interval's verdict: the shared seeds where it pairs, else the smaller side's runs."""
    shared = shared_seeds(first, second)
    return len(shared) if len(shared) >= 2 else min(len(first), len(second))


def verdict(interval: Interval, n: int, unit: str = "seeds") -> str:
    """'real' only where the interval excludes 0; otherwise 'not resolved with n seeds (±half-width)'.

    The half-width is what the design could have resolved: a true difference
    much smaller than it would not have shown. `unit` names what n counts
    (e.g. "test images" for the paired bootstrap).
    """
    if interval.is_real:
        return "real"
    return f"not resolved with {n:,} {unit} (±{interval.half_width:.2f})"


def seeds_needed(first: Runs, second: Runs, confidence: float = CONFIDENCE) -> int | None:
    """How many seeds the paired interval would need to exclude 0, were the observed mean and spread of
    the per-seed differences the true ones: the smallest n with t(n - 1) * sd / sqrt(n) < |mean|.

    Takes the same runs as `paired_interval`. A planning figure, not a promise:
    at that n a true difference of this size is resolved only about half the
    time (the mean lands on either side of its expectation); plan for more.
    None where the mean difference is exactly 0 (no number of seeds would do).
    """
    differences = _per_seed_differences(first, second)
    _check_confidence(confidence)
    mean, sd = abs(float(differences.mean())), float(differences.std(ddof=1))
    if mean == 0:
        return None
    # With the normal quantile in place of t the answer is (z * sd / mean)^2; t is larger, so start there.
    z = _normal_quantile(confidence)
    n = max(2, math.ceil((z * sd / mean) ** 2))
    while _t_half_width(sd, n, confidence) >= mean:
        n += 1
    return n


def _per_seed_differences(first: Runs, second: Runs) -> np.ndarray:
    """first - second for each seed, from two mappings by rand_seed or two sequences in seed order."""
    if isinstance(first, Mapping) != isinstance(second, Mapping):
        raise ComparisonError("paired runs come as two {rand_seed: value} mappings or as two sequences "
                              "in matched seed order, not one of each")
    if isinstance(first, Mapping):
        only_first, only_second = sorted(first.keys() - second.keys()), sorted(second.keys() - first.keys())
        if only_first or only_second:
            raise ComparisonError(f"paired runs need the same seeds on both sides: rand_seed {only_first} only "
                                  f"in the first, {only_second} only in the second; run the missing seeds, "
                                  "or compare unmatched runs with welch_interval")
        seeds = sorted(first)
        first, second = {seed: first[seed] for seed in seeds}, {seed: second[seed] for seed in seeds}
    differences = _finite_values(first, "first") - _check_length(_finite_values(second, "second"), len(first))
    if len(differences) < 2:
        raise ComparisonError(f"a paired interval needs at least 2 seeds on both sides; got {len(differences)}: "
                              "run more seeds")
    return differences


def _check_length(values: np.ndarray, expected: int) -> np.ndarray:
    if len(values) != expected:
        raise ComparisonError(f"paired runs need one value per seed on each side, in the same seed order; "
                              f"got {expected} and {len(values)}")
    return values


def _finite_values(values: Runs, which: str) -> np.ndarray:
    """The values as a 1-D float array; a NaN, an infinity or a non-number is refused."""
    labels = list(values.keys()) if isinstance(values, Mapping) else None
    raw = list(values.values()) if isinstance(values, Mapping) else values
    try:
        array = np.asarray(raw, dtype=float)
    except (TypeError, ValueError):
        raise ComparisonError(f"the {which} runs' values must be numbers; got {raw!r}") from None
    if array.ndim != 1:
        raise ComparisonError(f"the {which} runs' values must be one number per run; got shape {array.shape}")
    if not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array))
        where = f"rand_seed {labels[bad[0]]}" if labels else f"position {bad[0]}"
        raise ComparisonError(f"the {which} runs hold {array[bad[0]]} at {where}: a run that failed or did "
                              "not finish; leave that seed out on both sides")
    return array


def _t_interval(values: np.ndarray, confidence: float) -> Interval:
    """The mean of the values and its t interval (n - 1 degrees of freedom); needs n >= 2."""
    _check_confidence(confidence)
    mean = float(values.mean())
    half = float(_t_half_width(values.std(ddof=1), len(values), confidence))
    return Interval(mean, mean - half, mean + half)


def _t_half_width(sd, n: int, confidence: float):
    """Half the t interval of a mean of n values whose standard deviation is sd (a number or an array)."""
    return _t_quantile(confidence, n - 1) * sd / math.sqrt(n)


@lru_cache(maxsize=None)
def _t_quantile(confidence: float, degrees: float) -> float:
    """The two-sided quantile of Student's t: the interval is mean ± this many standard errors."""
    return float(scipy_stats.t.ppf((1 + confidence) / 2, degrees))


def _normal_quantile(confidence: float) -> float:
    return float(scipy_stats.norm.ppf((1 + confidence) / 2))


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ComparisonError(f"confidence must lie between 0 and 1 (0.95 for a 95% interval); got {confidence}")


# --------------------------------------------------------------------------
# Many images of one test set: the paired bootstrap, a mean, a share
# --------------------------------------------------------------------------

def paired_bootstrap(right, right_before, resamples: int = BOOTSTRAP_RESAMPLES,
                     confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """Accuracy of `right` minus that of `right_before` (per-image booleans, the same images), in
    percentage points, with a percentile bootstrap interval.

    Paired: every resample draws test images with replacement and scores both
    models on the same draw, so what the two have in common (easy and hard
    images) cancels, and the interval measures only how the change moved the
    answers. The fixed `seed` makes the interval the same on every run.
    """
    _check_confidence(confidence)
    after, before = np.asarray(right, dtype=float), np.asarray(right_before, dtype=float)
    if after.shape != before.shape or after.ndim != 1 or len(after) == 0:
        raise ComparisonError(f"the paired bootstrap needs one answer per image from each model, on the same "
                              f"images; got shapes {after.shape} and {before.shape}")
    per_image = after - before  # -1, 0 or +1 per image
    generator = np.random.default_rng(seed)
    means = []
    chunk = max(1, 2_000_000 // len(per_image))  # a few MB of indices at a time
    for start in range(0, resamples, chunk):
        draws = generator.integers(0, len(per_image), (min(chunk, resamples - start), len(per_image)))
        means.append(per_image[draws].mean(axis=1))
    low, high = np.quantile(np.concatenate(means), [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(100 * float(per_image.mean()), 100 * float(low), 100 * float(high))


def mean_interval(values, confidence: float = CONFIDENCE) -> Interval:
    """The mean of per-image values with its t interval; unbounded for a single value."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        mean = float(values.mean()) if len(values) else math.nan
        return Interval(mean, -math.inf, math.inf)
    return _t_interval(values, confidence)


def wilson_interval(share, count, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """(low, high): the Wilson interval of binomial shares (arrays or numbers) out of `count` each.

    Unlike share ± z·se it is never zero wide at a share of 0 or 1, and it
    stays within 0..1: what a bin of a few images needs.
    """
    share, count = np.asarray(share, dtype=float), np.asarray(count, dtype=float)
    z = _normal_quantile(confidence)
    centre = (share + z ** 2 / (2 * count)) / (1 + z ** 2 / count)
    half = z * np.sqrt(share * (1 - share) / count + z ** 2 / (4 * count ** 2)) / (1 + z ** 2 / count)
    return centre - half, centre + half


# --------------------------------------------------------------------------
# Why not the old rule: both rules on data whose truth is known
# --------------------------------------------------------------------------

OLD_RULE = "beyond the sum of the two spreads"
PAIRED_RULE = "paired 95% interval"


class RuleRates(NamedTuple):
    """How often a rule called a difference real, over the simulated draws."""

    rule: str               # OLD_RULE or PAIRED_RULE
    seeds: int              # runs per setting
    false_positives: float  # share of draws with no true difference called real (0..1)
    power: float            # share of draws with a true difference of `effect` called real (0..1)


def simulate_rules(seeds: Sequence[int] = (2, 3, 5, 10), effect: float = 1.0, seed_share: float = 0.0,
                   draws: int = 20_000, confidence: float = CONFIDENCE, seed: int = 0) -> list[RuleRates]:
    """The old rule and the paired interval, each applied to `draws` simulated comparisons per seed count.

    The model: two settings, each run once per seed. Run k of a setting
    scores (its setting's true mean) + u_k + e, where u_k is what seed k's
    runs share (same initial weights, same data order), normal with variance
    `seed_share`, and e is the run's own noise, normal with variance
    1 - `seed_share`: a single run's standard deviation is 1, and `effect` is
    counted in it. seed_share = 0 makes the runs independent (the floor of
    what pairing gains). The old rule calls a difference real when
    |mean_1 - mean_2| > sd_1 + sd_2 (sample standard deviations); the paired
    rule when the paired t interval excludes 0. A rule's call is counted
    whatever its sign. Pure numpy: 20,000 draws take a fraction of a second.
    """
    if not 0 <= seed_share < 1:
        raise ComparisonError(f"seed_share is the share of a run's variance its seed explains, 0 <= it < 1; "
                              f"got {seed_share}")
    _check_confidence(confidence)
    generator = np.random.default_rng(seed)
    rows = []
    for n in seeds:
        if n < 2:
            raise ComparisonError(f"both rules need at least 2 seeds per setting; got {n}")
        shared = generator.normal(0, math.sqrt(seed_share), (draws, n))
        first = shared + generator.normal(0, math.sqrt(1 - seed_share), (draws, n))
        second = shared + generator.normal(0, math.sqrt(1 - seed_share), (draws, n))
        old, paired = [], []
        for shift in (0.0, effect):  # the same noise, without and with the true difference
            moved = second + shift
            spreads = first.std(axis=1, ddof=1) + moved.std(axis=1, ddof=1)
            old.append(float(np.mean(np.abs(moved.mean(axis=1) - first.mean(axis=1)) > spreads)))
            differences = moved - first
            half = _t_half_width(differences.std(axis=1, ddof=1), n, confidence)
            paired.append(float(np.mean(np.abs(differences.mean(axis=1)) > half)))
        rows += [RuleRates(OLD_RULE, n, *old), RuleRates(PAIRED_RULE, n, *paired)]
    return rows
