"""Ranger = RAdam + Lookahead + gradient centralization, as the seed used it.

This is the algorithm of lessw2020's ranger.py (2020 edition, with gradient
centralization), written for current PyTorch:

1. Gradient centralization (GC): from every gradient with more than one
   dimension (conv and linear weights; only conv weights with
   gc_conv_only=True) subtract its mean over all but the first dimension.
2. RAdam: Adam's moment estimates; while the variance estimate is still
   unreliable (N_sma <= N_sma_threshhold, the first 5 steps with the default
   betas) the step is plain momentum, afterwards it is Adam's step scaled by
   the rectification term. Weight decay is the original's: p -= wd * lr * p.
3. Lookahead: every k steps, the slow weights move alpha of the way towards
   the fast ones, and the fast weights restart from there.

The update runs as a handful of multi-tensor (torch._foreach_*) kernels over
all parameters at once instead of about fifteen small kernels per tensor.
Only GC needs one reduction per centralized tensor. OneCycleLR may cycle
beta1 through `betas`, as it does for Adam.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim import Optimizer


class Ranger(Optimizer):
    def __init__(self, params: Iterable, lr: float = 1e-3, alpha: float = 0.5, k: int = 6,
                 N_sma_threshhold: float = 5, betas: tuple[float, float] = (0.95, 0.999),
                 eps: float = 1e-5, weight_decay: float = 0, use_gc: bool = True,
                 gc_conv_only: bool = False):
        checks = {"lr": lr > 0, "alpha": 0 <= alpha <= 1, "k": int(k) == k and k >= 1,
                  "betas": len(betas) == 2 and all(0 <= b < 1 for b in betas),
                  "eps": eps > 0, "weight_decay": weight_decay >= 0}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"Ranger: invalid {name}: {locals()[name]!r}")
        defaults = dict(lr=lr, alpha=alpha, k=int(k), N_sma_threshhold=N_sma_threshhold,
                        betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        use_gc=use_gc, gc_conv_only=gc_conv_only)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("Ranger does not support sparse gradients")
            # Parameters that joined later (or skipped steps) are on another
            # step count: update each cohort with its own bias corrections.
            cohorts: dict[int, list[torch.Tensor]] = {}
            for p in params:
                cohorts.setdefault(self._state_of(p)["step"], []).append(p)
            for step, members in cohorts.items():
                self._update(group, members, step + 1)
        return loss

    def _state_of(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["slow_buffer"] = p.detach().clone()  # Lookahead's slow weights
        return state

    def _update(self, group: dict, params: list[torch.Tensor], step: int) -> None:
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        states = [self.state[p] for p in params]
        grads = [centralized(p.grad, group["gc_conv_only"]) if group["use_gc"] else p.grad
                 for p in params]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]

        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)

        n_sma, step_size = rectification(step, beta1, beta2, group["N_sma_threshhold"])
        if wd != 0:
            torch._foreach_add_(params, params, alpha=-wd * lr)
        if n_sma > group["N_sma_threshhold"]:
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(denom, group["eps"])
            torch._foreach_addcdiv_(params, exp_avgs, denom, value=-step_size * lr)
        else:
            torch._foreach_add_(params, exp_avgs, alpha=-step_size * lr)

        for s in states:
            s["step"] = step
        if step % group["k"] == 0:
            slow = [s["slow_buffer"] for s in states]
            torch._foreach_add_(slow, torch._foreach_sub(params, slow), alpha=group["alpha"])
            torch._foreach_copy_(params, slow)


def centralized(grad: torch.Tensor, conv_only: bool = False) -> torch.Tensor:
    """Gradient centralization: subtract the mean over all but the first dimension."""
    min_dims = 4 if conv_only else 2
    if grad.dim() < min_dims:
        return grad
    return grad - grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True)


def rectification(step: int, beta1: float, beta2: float, threshold: float) -> tuple[float, float]:
    """RAdam's length of the approximated SMA and the bias-corrected step size."""
    beta2_t = beta2 ** step
    n_sma_max = 2 / (1 - beta2) - 1
    n_sma = n_sma_max - 2 * step * beta2_t / (1 - beta2_t)
    if n_sma > threshold:
        step_size = math.sqrt((1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2)
                              / n_sma * n_sma_max / (n_sma_max - 2)) / (1 - beta1 ** step)
    else:
        step_size = 1.0 / (1 - beta1 ** step)
    return n_sma, step_size
