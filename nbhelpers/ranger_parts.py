"""Ranger's parts made concrete: Lookahead on a 2-D valley, centralization on a real layer, r_t over a run.

Notebook 03 uses these to show each piece of the optimizer it trains with
(nbhelpers.ranger): Lookahead's fast and slow weights, gradient centralization
on a conv layer's gradient, and the step RAdam's r_t lets through at each step
of the schedule (whose learning rate and beta1 come from
nbhelpers.train.schedule_trace). Notebook 05 asks `peak_of` where a run's
schedule peaks.

    lookahead = ranger_path_2d(alpha=0.5)       # fast and slow weights on the valley
    effect = centralization_effect(name, gradient_of_one_batch(model, images, labels, name))
    peak = peak_of(learning_rates(config, steps_per_epoch))   # the peak step, its lr and r_t
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .ranger import Ranger, centralized, rectification_term

__all__ = ["VALLEY_START", "valley_loss", "Path2D", "ranger_path_2d", "Centralization",
           "gradient_of_one_batch", "centralization_effect", "RANGER_BETA2", "Peak",
           "effective_learning_rates", "peak_of"]

# --------------------------------------------------------------------------
# Lookahead on a 2-D problem
# --------------------------------------------------------------------------

# A long, narrow valley lying diagonally: the loss is 0.05 * (0.5 u^2 + 8 v^2) with
# u, v the coordinates along and across it, so across is 16 times steeper than along.
VALLEY_START = (-3.0, -1.0)


def valley_loss(points: torch.Tensor) -> torch.Tensor:
    """The toy loss at points of shape (..., 2); its minimum is 0 at (0, 0)."""
    x, y = points[..., 0], points[..., 1]
    along, across = (x + y) / math.sqrt(2), (x - y) / math.sqrt(2)
    return 0.05 * (0.5 * along ** 2 + 8 * across ** 2)


@dataclass
class Path2D:
    fast: torch.Tensor   # (steps + 1 + syncs, 2): every fast weight, incl. the one just before each sync
    slow: torch.Tensor   # (syncs + 1, 2): the slow weights, from the start and after each sync
    loss: list[float]    # the loss at the weights after every step (what the model would use)


def ranger_path_2d(alpha: float = 0.5, k: int = 6, lr: float = 1.0, steps: int = 150,
                   noise: float = 0.2, seed: int = 0) -> Path2D:
    """Ranger's weights on the valley, gradients with Gaussian noise (as minibatches give).

    Ranger copies the slow weights over the fast ones at every k-th step, so the fast
    weights just before that sync are recovered from the slow weights' move:
    slow_new = slow_old + alpha * (fast - slow_old).
    """
    generator = torch.Generator().manual_seed(seed)
    point = torch.tensor(VALLEY_START, requires_grad=True)
    optimizer = Ranger([point], lr=lr, alpha=alpha, k=k)
    fast, slow, losses = [point.detach().clone()], [point.detach().clone()], []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        valley_loss(point).backward()
        point.grad += noise * torch.randn(2, generator=generator)
        slow_before = slow[-1]
        optimizer.step()
        if step % k == 0:
            slow_now = optimizer.state[point]["slow_buffer"].clone()
            if alpha > 0:
                fast.append(slow_before + (slow_now - slow_before) / alpha)
            slow.append(slow_now)
        fast.append(point.detach().clone())
        losses.append(valley_loss(point.detach()).item())
    return Path2D(torch.stack(fast), torch.stack(slow), losses)


# --------------------------------------------------------------------------
# Gradient centralization on a real layer
# --------------------------------------------------------------------------

@dataclass
class Centralization:
    """What gradient centralization does to one weight's gradient, one value per output unit."""

    parameter: str
    mean_before: torch.Tensor  # the mean of each output unit's gradient, as backward gives it
    mean_after: torch.Tensor   # the same after centralization (zero, up to rounding)
    removed: torch.Tensor      # the share of each unit's squared gradient norm that GC takes away


def gradient_of_one_batch(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          parameter: str) -> torch.Tensor:
    """The gradient of one parameter on one training batch, as training computes it.

    A copy of the model runs in training mode (batch statistics, dropout), so
    the model itself, BatchNorm's running statistics included, stays as it was.
    The batch goes to the model's device; the gradient comes back as float32 on the CPU.
    """
    model = copy.deepcopy(model).train()
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    F.cross_entropy(model(images.to(device)), labels.to(device)).backward()
    return dict(model.named_parameters())[parameter].grad.detach().float().cpu()


def centralization_effect(parameter: str, grad: torch.Tensor) -> Centralization:
    """Each output unit's gradient before and after Ranger's centralization (nbhelpers.ranger)."""
    before, after = grad.flatten(1), centralized(grad).flatten(1)
    return Centralization(parameter, before.mean(dim=1), after.mean(dim=1),
                          1 - after.pow(2).sum(dim=1) / before.pow(2).sum(dim=1))


# --------------------------------------------------------------------------
# The step RAdam's rectification lets through, over a whole run
# --------------------------------------------------------------------------

RANGER_BETA2 = 0.999  # Ranger's default, the seed's


@dataclass
class Peak:
    """The schedule's highest learning rate, and how much of it r_t lets through there."""

    step: int       # counted from 1, as the optimizer counts
    lr: float
    r_t: float

    @property
    def effective_lr(self) -> float:
        return self.lr * self.r_t


def effective_learning_rates(lrs: Sequence[float], beta2: float = RANGER_BETA2) -> list[float]:
    """lr x r_t at every step: the learning rate that Adam's rectified step really gets.

    NaN for the first steps, where rho_t <= 5 and Ranger takes plain momentum steps instead.
    """
    return [lr * rectification_term(step, beta2) if step > 5 else math.nan
            for step, lr in enumerate(lrs, start=1)]


def peak_of(lrs: Sequence[float], beta2: float = RANGER_BETA2) -> Peak:
    """Where the schedule peaks (the first step at its highest learning rate) and r_t there."""
    index = max(range(len(lrs)), key=lambda i: (lrs[i], -i))
    return Peak(index + 1, lrs[index], rectification_term(index + 1, beta2))
