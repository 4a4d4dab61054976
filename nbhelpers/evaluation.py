"""Evaluation: logits for a whole split, and the numbers and tables made from them.

Notebook 04 is built on it; `fit` evaluates every epoch with `evaluate` and
records the branch weights with `collect_branch_weights`, which 02 and 04
also show.

`infer` returns logits and `evaluate` the loss and accuracy, so that notebook
04 computes the logits once and reuses them for every table and figure: per
class, confused pairs, calibration (how sure against how often right). A
difference between two models on the same images, with its bootstrap
interval, is nbhelpers.stats.paired_bootstrap.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from .data import CifarLoader, Split
from .model import MixingOverride, Model
from .stats import Interval, mean_interval

__all__ = ["EVAL_BATCH_SIZE", "autocast", "infer", "evaluate", "accuracy", "confusion_matrix",
           "per_class_accuracy", "most_confident_mistakes", "Calibration", "calibration",
           "format_calibration", "mixing_overridden", "collect_branch_weights"]

EVAL_BATCH_SIZE = 1000  # evaluation needs no gradients: large batches, few launches


def autocast(device: torch.device, precision: str):
    """bf16 autocast where chosen; fp32 otherwise."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def infer(model: torch.nn.Module, data: Split | CifarLoader, device: torch.device | str | None = None,
          precision: str = "fp32", channels_last: bool = False) -> torch.Tensor:
    """The model's logits (float32, on the CPU) for every image of a split, in order.

    `data` is a Split, or an evaluation CifarLoader already on the device
    (fit keeps one per split, so the images cross to the GPU only once).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = data if isinstance(data, CifarLoader) else \
        CifarLoader(data, EVAL_BATCH_SIZE, train=False, device=device)
    model.eval()
    outputs = []
    for images, _ in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            outputs.append(model(images).float())
    return torch.cat(outputs).cpu()


def evaluate(model, data: Split | CifarLoader, device, precision="fp32",
             channels_last=False) -> dict[str, float]:
    """Mean cross-entropy and accuracy (%) over a whole split."""
    logits = infer(model, data, device, precision, channels_last)
    labels = data.labels.cpu()
    return {"loss": F.cross_entropy(logits, labels).item(),
            "acc": accuracy(logits.argmax(dim=1), labels)}


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return 100 * (predictions == labels).double().mean().item()


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """counts[true, predicted]."""
    flat = labels * num_classes + predictions
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes)


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> torch.Tensor:
    """Accuracy (%) on each true class."""
    counts = confusion_matrix(predictions, labels, num_classes)
    return 100 * counts.diag().double() / counts.sum(dim=1).clamp(min=1)


def most_confident_mistakes(logits: torch.Tensor, labels: torch.Tensor, count: int = 16):
    """Indices of the wrong predictions the model was surest of, surest first."""
    confidence, predictions = logits.softmax(dim=1).max(dim=1)
    wrong = torch.nonzero(predictions != labels).flatten()
    order = confidence[wrong].argsort(descending=True)
    return wrong[order[:count]]


# --------------------------------------------------------------------------
# How sure, and how right: calibration
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """A reliability table: the test images binned by the model's confidence (its top softmax probability).

    Per bin: how many images fall in it, their mean confidence and the share of
    them the model gets right (both 0..1; NaN in an empty bin). A calibrated
    model is right as often as it is sure: accuracy = confidence in every bin.
    """

    edges: torch.Tensor      # (bins + 1,) from 0 to 1
    counts: torch.Tensor     # (bins,) images per bin
    confidence: torch.Tensor  # (bins,) mean confidence of the bin's images
    accuracy: torch.Tensor   # (bins,) share of the bin's images predicted right
    mean_gap: Interval       # right (1 or 0) minus sure, per image, averaged: which way the model leans

    @property
    def expected_calibration_error(self) -> float:
        """The gap |accuracy - confidence| averaged over the images (each bin weighs by its count), in %."""
        filled = self.counts > 0
        gaps = (self.accuracy[filled] - self.confidence[filled]).abs()
        return 100 * float((gaps * self.counts[filled]).sum() / self.counts.sum())


def calibration(logits: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> Calibration:
    """Bin the images by confidence into `bins` equal bins of 0..1 (the usual reliability diagram)."""
    confidence, predictions = logits.float().softmax(dim=1).max(dim=1)
    right = (predictions == labels.cpu()).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    # Bin i holds edges[i] < confidence <= edges[i + 1]: a confidence of exactly 1 lands in the last bin.
    which = (torch.bucketize(confidence.double(), edges) - 1).clamp(0, bins - 1)
    counts = torch.bincount(which, minlength=bins)
    zeros = torch.zeros(bins, dtype=torch.float64)
    mean_confidence = zeros.index_add(0, which, confidence.double()) / counts  # 0 / 0: NaN when empty
    mean_right = zeros.index_add(0, which, right) / counts
    return Calibration(edges, counts, mean_confidence, mean_right,
                       mean_interval(100 * (right - confidence.double())))


def format_calibration(table: Calibration) -> str:
    lines = [f"{'confidence':<13}{'images':>8}{'mean confidence':>17}{'right':>9}"]
    for i, count in enumerate(table.counts.tolist()):
        span = f"{table.edges[i]:.1f}-{table.edges[i + 1]:.1f}"
        if count:
            lines.append(f"{span:<13}{count:>8,}{100 * table.confidence[i]:>16.1f}%"
                         f"{100 * table.accuracy[i]:>8.1f}%")
        else:
            lines.append(f"{span:<13}{count:>8,}{'-':>17}{'-':>9}")
    lines.append(f"expected calibration error: {table.expected_calibration_error:.2f} points "
                 "(the gap between confidence and accuracy, averaged over the images)")
    gap = table.mean_gap
    leaning = ("under-confident on average" if gap.low > 0 else "over-confident on average"
               if gap.high < 0 else "calibrated on average, within the noise")
    lines.append(f"right minus sure, over all {int(table.counts.sum()):,} images: {gap}: {leaning}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The branch weights each block computes, image by image
# --------------------------------------------------------------------------

@contextlib.contextmanager
def mixing_overridden(model: Model, overrides: dict[int, MixingOverride]) -> Iterator[Model]:
    """Inside the `with`, block i mixes its branches through overrides[i]; afterwards as before."""
    blocks = model.backbone.blocks
    previous = {i: blocks[i].mixing_override for i in overrides}
    try:
        for i, override in overrides.items():
            blocks[i].mixing_override = override
        yield model
    finally:
        for i, override in previous.items():
            blocks[i].mixing_override = override


def collect_branch_weights(model: Model, split: Split, device: torch.device | str | None = None,
                           precision: str = "fp32", channels_last: bool = False) -> torch.Tensor:
    """The weights every block gives every image of `split`: (blocks, images, branches), float32, CPU.

    The images go through the model in evaluation mode, in the split's order,
    and each block's weights are recorded as it computes them. `device`,
    `precision` and `channels_last` are passed on to `infer`.
    """
    recorded: list[list[torch.Tensor]] = [[] for _ in model.backbone.blocks]

    def recorder(block: int) -> MixingOverride:
        def record(computed: torch.Tensor) -> torch.Tensor:
            recorded[block].append(computed.detach().float().cpu())
            return computed
        return record

    with mixing_overridden(model, {i: recorder(i) for i in range(len(recorded))}):
        infer(model, split, device, precision, channels_last)
    return torch.stack([torch.cat(batches) for batches in recorded])
