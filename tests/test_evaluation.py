"""Calibration computes what notebook 04 says it does (the paired bootstrap: tests/test_stats.py)."""
import math

import pytest
import torch

from nbhelpers.evaluation import calibration, format_calibration


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
    assert table.mean_gap.difference == pytest.approx(expected, abs=1e-3)
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
