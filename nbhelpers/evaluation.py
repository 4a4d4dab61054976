"""Evaluation: logits for a whole split, and the numbers and tables made from them.

`infer` returns logits and `evaluate` the loss and accuracy, so that notebook
04 computes the logits once and reuses them for every table and figure.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .data import CifarLoader, Split

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
