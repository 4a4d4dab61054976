"""Calibration and the paired bootstrap compute what notebook 04 says they do."""
import math

import numpy as np
import pytest
import torch

from nbhelpers.evaluation import (DifferenceWithInterval, calibration, format_calibration,
                                  paired_bootstrap_difference)


def _logits_with_confidence(confidences: list[float], num_classes: int = 10) -> torch.Tensor:
    """Logits whose softmax puts `confidence` on class 0 and shares the rest among the others."""
    rows = []
    for confidence in confidences:
        rest = (1 - confidence) / (num_classes - 1)
        rows.append(torch.log(torch.tensor([confidence] + [rest] * (num_classes - 1))))
    return torch.stack(rows)


def test_calibration_bins_by_confidence_and_counts_how_often_each_bin_is_right():
    confidences = [0.15, 0.25, 0.35, 0.95, 0.92, 0.91, 1.0]
    right = [True, False, True, True, True, False, True]
    logits = _logits_with_confidence(confidences[:-1] + [0.999999])
    labels = torch.tensor([0 if r else 1 for r in right])
    table = calibration(logits, labels, bins=10)
    assert table.counts.tolist() == [0, 1, 1, 1, 0, 0, 0, 0, 0, 4]
    assert math.isnan(table.accuracy[0]) and math.isnan(table.confidence[0])  # an empty bin
    assert table.accuracy[9] == pytest.approx(0.75)
    assert table.confidence[9] == pytest.approx((0.95 + 0.92 + 0.91 + 0.999999) / 4, abs=1e-5)
    # ECE by hand: the gap of each filled bin, weighted by its share of the 7 images.
    gaps = [(1, abs(1 - 0.15)), (1, abs(0 - 0.25)), (1, abs(1 - 0.35)),
            (4, abs(0.75 - (0.95 + 0.92 + 0.91 + 0.999999) / 4))]
    assert table.expected_calibration_error == pytest.approx(100 * sum(n * g for n, g in gaps) / 7, abs=1e-3)
    certain = torch.tensor([[100.0] + [0.0] * 9])  # a confidence of exactly 1: the last bin
    assert calibration(certain, torch.tensor([0])).counts.tolist() == [0] * 9 + [1]
    text = format_calibration(table)
    assert "0.9-1.0" in text and "75.0%" in text and "expected calibration error" in text
    # Right minus sure per image, averaged: (0.85 - 0.25 + 0.65 + 0.05 + 0.08 - 0.91 + 0.000001) / 7.
    expected = 100 * (0.85 - 0.25 + 0.65 + 0.05 + 0.08 - 0.91 + 0.000001) / 7
    assert table.mean_gap.points == pytest.approx(expected, abs=1e-3)
    assert table.mean_gap.low < 0 < table.mean_gap.high  # 7 images: far too few to say which way
    assert text.endswith(f"{table.mean_gap}: calibrated on average, within the noise")
    sure_and_wrong = calibration(_logits_with_confidence([0.9] * 400), torch.ones(400, dtype=torch.long))
    assert format_calibration(sure_and_wrong).endswith("over-confident on average")


def test_a_model_right_exactly_as_often_as_it_is_sure_has_no_calibration_error():
    # 10 images at 0.8 confidence, 8 of them right; 10 at 0.4, 4 right.
    logits = _logits_with_confidence([0.8] * 10 + [0.4] * 10)
    labels = torch.tensor([0] * 8 + [1] * 2 + [0] * 4 + [1] * 6)
    table = calibration(logits, labels)
    assert table.expected_calibration_error == pytest.approx(0, abs=1e-4)
    overconfident = calibration(logits, torch.ones(20, dtype=torch.long))  # never right
    assert overconfident.expected_calibration_error == pytest.approx(100 * (0.8 + 0.4) / 2, abs=1e-4)


def test_paired_bootstrap_difference_of_identical_answers_is_exactly_zero_and_a_tie():
    right = torch.rand(500, generator=torch.Generator().manual_seed(0)) < 0.6
    difference = paired_bootstrap_difference(right, right)
    assert (difference.points, difference.low, difference.high) == (0, 0, 0)
    assert not difference.is_real


def test_paired_bootstrap_difference_interval_matches_the_normal_approximation_and_says_real_only_beyond_noise():
    generator = torch.Generator().manual_seed(1)
    before = torch.rand(4000, generator=generator) < 0.5
    # 120 answers lost, 40 gained: -2 points, the paired standard error sqrt(160) / 4000 = 0.32 points.
    after = before.clone()
    after[torch.nonzero(before).flatten()[:120]] = False
    after[torch.nonzero(~before).flatten()[:40]] = True
    difference = paired_bootstrap_difference(after, before)
    assert difference.points == pytest.approx(-2.0)
    se = 100 * np.sqrt((120 + 40) / 4000 - (80 / 4000) ** 2) / np.sqrt(4000)
    assert difference.low == pytest.approx(-2.0 - 1.96 * se, abs=0.15)
    assert difference.high == pytest.approx(-2.0 + 1.96 * se, abs=0.15)
    assert difference.is_real and str(difference).startswith("-2.00 pp [")
    # The same change on 100 images: the interval widens past 0, a tie.
    small = paired_bootstrap_difference(after[:100] | (torch.arange(100) < 3), before[:100])
    assert small.low < 0 < small.high and not small.is_real
    assert paired_bootstrap_difference(after, before) == difference  # a fixed seed: the same interval every time


def test_a_difference_is_real_only_when_its_interval_excludes_zero():
    assert DifferenceWithInterval(1.0, 0.2, 1.8).is_real and DifferenceWithInterval(-1.0, -1.8, -0.1).is_real
    assert not DifferenceWithInterval(0.5, -0.1, 1.1).is_real
