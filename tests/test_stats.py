"""nbhelpers.stats: its intervals agree with scipy.stats, its verdict is right 95% of the time on data
with no difference, and the old sum-of-spreads rule is shown to be wrong where the series said it was."""
import math

import numpy as np
import pytest
from nbhelpers import stats as S
import torch
from scipy import stats as scipy_stats

from nbhelpers.errors import ExplainedError
from nbhelpers.stats import (OLD_RULE, PAIRED_RULE, ComparisonError, Interval, mean_interval,
                             paired_bootstrap, paired_interval, seeds_needed, simulate_rules, verdict,
                             welch_interval, wilson_interval)

# Final test accuracies of two settings, by rand_seed (made up, in the range of the CPU sweeps).
RANGER = {0: 71.2, 1: 70.1, 2: 69.8, 3: 70.9, 4: 71.5}
NO_GC = {0: 69.9, 1: 66.9, 2: 66.9, 3: 70.2, 4: 68.8}


def _close(interval: Interval, low: float, high: float) -> bool:
    return interval.low == pytest.approx(low, abs=1e-9) and interval.high == pytest.approx(high, abs=1e-9)


def test_the_paired_interval_is_scipys_paired_t_interval_with_runs_matched_by_seed():
    seeds = sorted(RANGER)
    first, second = [RANGER[s] for s in seeds], [NO_GC[s] for s in seeds]
    expected = scipy_stats.ttest_rel(first, second).confidence_interval()
    shuffled = dict(reversed(NO_GC.items()))  # matched by rand_seed, not by the order the runs came in
    interval = paired_interval(RANGER, shuffled)
    assert interval.difference == pytest.approx(np.mean(np.subtract(first, second)))
    assert _close(interval, expected.low, expected.high)
    assert paired_interval(first, second) == interval  # sequences in matched order: the same
    at_90 = scipy_stats.ttest_rel(first, second).confidence_interval(confidence_level=0.9)
    assert _close(paired_interval(RANGER, NO_GC, confidence=0.9), at_90.low, at_90.high)
    # The same numbers unpaired: the shared luck of each seed stays in the noise, and the interval widens.
    assert welch_interval(RANGER, NO_GC).half_width > interval.half_width


def test_welchs_interval_is_scipys_with_unequal_variances_and_sizes():
    first, second = [71.2, 70.1, 69.8, 70.9], [69.9, 66.9, 66.9, 70.2, 68.8, 64.0]
    expected = scipy_stats.ttest_ind(first, second, equal_var=False).confidence_interval()
    interval = welch_interval(first, second)
    assert interval.difference == pytest.approx(np.mean(first) - np.mean(second))
    assert _close(interval, expected.low, expected.high)
    assert welch_interval(dict(enumerate(first)), dict(enumerate(second))) == interval  # a mapping's values
    at_99 = scipy_stats.ttest_ind(first, second, equal_var=False).confidence_interval(confidence_level=0.99)
    assert _close(welch_interval(first, second, confidence=0.99), at_99.low, at_99.high)


def test_runs_without_noise_give_a_zero_wide_interval():
    assert paired_interval([70.0, 71.0, 72.0], [70.0, 71.0, 72.0]) == (0, 0, 0)  # alike seed by seed
    assert not paired_interval([70.0, 71.0], [70.0, 71.0]).is_real
    assert paired_interval([71.0, 72.0, 73.0], [70.0, 71.0, 72.0]) == (1, 1, 1)
    assert paired_interval([71.0, 72.0, 73.0], [70.0, 71.0, 72.0]).is_real
    assert welch_interval([71.0, 71.0], [70.0, 70.0, 70.0]) == (1, 1, 1)


@pytest.mark.parametrize("first, second, message", [
    ({0: 70.0}, {0: 69.0}, "at least 2 seeds on both sides; got 1"),
    ({}, {}, "at least 2 seeds on both sides; got 0"),
    ([], [], "at least 2 seeds on both sides; got 0"),
    ({0: 70.0, 1: 71.0, 2: 72.0}, {0: 69.0, 1: 70.0, 3: 71.0},
     "the same seeds on both sides: rand_seed [2] only in the first, [3] only in the second"),
    ({0: 70.0, 1: 71.0, 2: float("nan")}, {0: 69.0, 1: 70.0, 2: 71.0}, "nan at rand_seed 2"),
    ([70.0, 71.0, 72.0], [69.0, math.inf, 71.0], "the second runs hold inf at position 1"),
    ([70.0, 71.0, 72.0], [69.0, 70.0], "one value per seed on each side, in the same seed order; got 3 and 2"),
    ({0: 70.0, 1: 71.0}, [69.0, 70.0], "not one of each"),
    (["70", "x"], [69.0, 70.0], "must be numbers"),
])
def test_a_paired_interval_refuses_what_it_cannot_pair_in_one_line(first, second, message):
    with pytest.raises(ComparisonError, match=r"^[^\n]*$") as raised:
        paired_interval(first, second)
    assert message in str(raised.value) and isinstance(raised.value, ExplainedError)
    with pytest.raises(ComparisonError):
        seeds_needed(first, second)


def test_welchs_interval_and_the_confidence_level_refuse_bad_input():
    with pytest.raises(ComparisonError, match="at least 2 runs on each side; the second has 1"):
        welch_interval([70.0, 71.0], [69.0])
    with pytest.raises(ComparisonError, match="the first runs hold nan at position 0"):
        welch_interval([math.nan, 71.0], [69.0, 70.0])
    for confidence in (0, 1, 95):
        with pytest.raises(ComparisonError, match="between 0 and 1"):
            paired_interval(RANGER, NO_GC, confidence=confidence)


def test_an_interval_is_real_only_where_it_excludes_zero():
    assert Interval(1.0, 0.2, 1.8).is_real and Interval(-1.0, -1.8, -0.1).is_real
    assert not Interval(0.5, -0.1, 1.1).is_real
    assert not Interval(1.0, 0.0, 2.0).is_real  # touching 0 does not exclude it


def test_the_verdict_says_real_or_what_the_design_could_not_resolve():
    unresolved = Interval(2.1, -0.4, 4.6)
    assert str(unresolved) == "+2.10 pp [-0.40, +4.60]"
    assert verdict(unresolved, 3) == "not resolved with 3 seeds (±2.50)"
    assert f"{unresolved}: {verdict(unresolved, 3)}" == "+2.10 pp [-0.40, +4.60]: not resolved with 3 seeds (±2.50)"
    assert verdict(Interval(-2.0, -2.6, -1.4), 5) == "real"
    assert verdict(Interval(-0.1, -0.7, 0.5), 10_000, "test images") == \
        "not resolved with 10,000 test images (±0.60)"


def test_seeds_needed_is_the_smallest_count_whose_t_interval_excludes_the_observed_mean():
    # Per-seed differences 0, 1, 2: mean 1, sd 1. t(5) / sqrt(6) = 1.05 > 1, t(6) / sqrt(7) = 0.92 < 1.
    first, second = [10.0, 11.0, 12.0], [10.0, 10.0, 10.0]
    assert seeds_needed(first, second) == 7
    assert scipy_stats.t.ppf(0.975, 5) / math.sqrt(6) > 1 > scipy_stats.t.ppf(0.975, 6) / math.sqrt(7)
    # Runs with that mean and spread of differences: 7 seeds resolve it, 6 do not.
    for n, resolved in ((7, True), (6, False)):
        noise = np.random.default_rng(n).normal(size=n)
        differences = 1 + (noise - noise.mean()) / noise.std(ddof=1)
        assert paired_interval(list(differences), [0.0] * n).is_real is resolved
    assert seeds_needed(first, second, confidence=0.99) > 7
    assert seeds_needed([71.0, 72.0, 73.0], [70.0, 71.0, 72.0]) == 2  # no noise: the fewest a t interval takes
    assert seeds_needed([70.0, 72.0], [71.0, 71.0]) is None  # a mean difference of 0: no count would do
    # A small mean against a large spread: hundreds of thousands of seeds, and still the smallest count.
    differences = np.array([0.01, -1.0, 1.0])
    mean, sd = differences.mean(), differences.std(ddof=1)
    many = seeds_needed(list(differences), [0.0] * 3)
    assert many > 100_000
    assert scipy_stats.t.ppf(0.975, many - 1) * sd / math.sqrt(many) < mean
    assert scipy_stats.t.ppf(0.975, many - 2) * sd / math.sqrt(many - 1) >= mean


def test_on_data_with_no_difference_the_verdict_says_real_about_one_time_in_twenty():
    """The real code path, draw by draw: two settings alike, each run's accuracy normal noise."""
    generator = np.random.default_rng(2024)
    draws = 20_000
    for seeds in (3, 5):
        first, second = generator.normal(70, 1, (2, draws, seeds))
        real = sum(verdict(paired_interval(a, b), seeds) == "real" for a, b in zip(first, second))
        assert 0.04 < real / draws < 0.06  # 5% expected; the standard error of the rate is 0.15 points


def test_the_simulation_shows_the_old_rule_calls_noise_real_and_loses_power_as_seeds_are_added():
    rates = {(row.rule, row.seeds): row for row in simulate_rules(seeds=(2, 3, 5, 10))}
    old = [rates[OLD_RULE, n] for n in (2, 3, 5, 10)]
    paired = [rates[PAIRED_RULE, n] for n in (2, 3, 5, 10)]
    assert old[0].false_positives > 0.15  # about 21%: four times what a 95% interval allows
    assert all(0.04 < row.false_positives < 0.06 for row in paired)
    assert [row.power for row in old] == sorted((row.power for row in old), reverse=True)  # blinder with seeds
    assert old[-1].power < 0.1
    # The paired interval's power is the paired t-test's, which the noncentral t gives exactly.
    for row in paired:
        noncentrality = 1.0 / math.sqrt(2) * math.sqrt(row.seeds)  # independent runs: sd of a difference is sqrt(2)
        quantile = scipy_stats.t.ppf(0.975, row.seeds - 1)
        exact = scipy_stats.nct.sf(quantile, row.seeds - 1, noncentrality) + \
            scipy_stats.nct.cdf(-quantile, row.seeds - 1, noncentrality)
        assert row.power == pytest.approx(exact, abs=0.015)
    # Where a seed's runs share part of their luck, pairing removes it: more power for the same seeds.
    shared = {row.seeds: row for row in simulate_rules(seeds=(5,), seed_share=0.5) if row.rule == PAIRED_RULE}
    assert shared[5].power > rates[PAIRED_RULE, 5].power + 0.1


def test_the_simulation_refuses_a_model_it_cannot_draw():
    with pytest.raises(ComparisonError, match="at least 2 seeds"):
        simulate_rules(seeds=(1,))
    with pytest.raises(ComparisonError, match="seed_share"):
        simulate_rules(seed_share=1.0)


# --------------------------------------------------------------------------
# One model's test images: the paired bootstrap, a mean, a share (notebook 04)
# --------------------------------------------------------------------------

def test_the_paired_bootstrap_of_identical_answers_is_exactly_zero_and_not_real():
    right = torch.rand(500, generator=torch.Generator().manual_seed(0)) < 0.6
    difference = paired_bootstrap(right, right)
    assert difference == (0, 0, 0) and not difference.is_real


def test_the_paired_bootstrap_matches_the_normal_approximation_and_is_real_only_beyond_noise():
    generator = torch.Generator().manual_seed(1)
    before = torch.rand(4000, generator=generator) < 0.5
    # 120 answers lost, 40 gained: -2 points, the paired standard error sqrt(160) / 4000 = 0.32 points.
    after = before.clone()
    after[torch.nonzero(before).flatten()[:120]] = False
    after[torch.nonzero(~before).flatten()[:40]] = True
    difference = paired_bootstrap(after, before)
    assert difference.difference == pytest.approx(-2.0)
    se = 100 * np.sqrt((120 + 40) / 4000 - (80 / 4000) ** 2) / np.sqrt(4000)
    assert difference.low == pytest.approx(-2.0 - 1.96 * se, abs=0.15)
    assert difference.high == pytest.approx(-2.0 + 1.96 * se, abs=0.15)
    assert difference.is_real and str(difference).startswith("-2.00 pp [")
    # The same change on 100 images: the interval widens past 0, not resolved.
    small = paired_bootstrap(after[:100] | (torch.arange(100) < 3), before[:100])
    assert small.low < 0 < small.high and not small.is_real
    assert verdict(small, 100, "test images").startswith("not resolved with 100 test images (±")
    assert paired_bootstrap(after, before) == difference  # a fixed seed: the same interval every time
    with pytest.raises(ComparisonError, match="on the same images; got shapes"):
        paired_bootstrap(after, before[:100])


def test_the_mean_interval_is_scipys_one_sample_t_interval_and_unbounded_for_one_value():
    values = np.random.default_rng(3).normal(-1.5, 4.0, 50)
    expected = scipy_stats.ttest_1samp(values, 0).confidence_interval()
    interval = mean_interval(torch.from_numpy(values))
    assert interval.difference == pytest.approx(values.mean())
    assert _close(interval, expected.low, expected.high)
    assert mean_interval([2.5]) == (2.5, -math.inf, math.inf)


def test_the_wilson_interval_is_scipys_and_stays_inside_0_to_1():
    successes, counts = np.array([0, 3, 7, 10, 412]), np.array([10, 10, 10, 10, 500])
    low, high = wilson_interval(successes / counts, counts)
    for k, n, lo, hi in zip(successes, counts, low, high):
        expected = scipy_stats.binomtest(int(k), int(n)).proportion_ci(method="wilson")
        assert (lo, hi) == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert low[0] == pytest.approx(0) and high[0] > 0.2 and high[3] == pytest.approx(1) and low[3] < 0.8


def test_seed_interval_pairs_shared_seeds_and_falls_back_to_welch_otherwise():
    first, second = {1: 60.0, 2: 62.0, 3: 64.0}, {1: 50.0, 2: 51.0, 3: 52.0}
    assert S.seed_interval(first, second) == S.paired_interval(first, second)
    other_seeds = {7: 50.0, 8: 51.0, 9: 52.0}
    assert S.seed_interval(first, other_seeds) == S.welch_interval(first, other_seeds)
    assert S.seed_interval({1: 60.0}, {1: 50.0}) is None  # one run a side: no interval


def test_mean_and_sd_describes_runs_and_a_single_run_without_an_sd():
    assert S.mean_and_sd([60.0, 62.0, 64.0]) == "62.00 ± 2.00"
    assert S.mean_and_sd([55.0]) == "55.00" and S.mean_and_sd([]) == "no runs"
    assert S.mean_and_sd([1.25, 1.35], digits=1) == "1.3 ± 0.1"


def test_seed_interval_pairs_over_the_seeds_both_sides_ran():
    first, second = {1: 60.0, 2: 62.0, 3: 64.0, 4: 70.0}, {1: 50.0, 2: 51.0, 3: 52.0}
    assert S.shared_seeds(first, second) == [1, 2, 3]
    assert S.seed_interval(first, second) == S.paired_interval({1: 60.0, 2: 62.0, 3: 64.0}, second)
