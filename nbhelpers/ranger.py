"""Ranger = RAdam + Lookahead + gradient centralization, as the seed used it.

Every run trains with it (nbhelpers.train.build_optimizer); notebook 03
writes its update out and shows each part (nbhelpers.ranger_parts), 05
compares it with its parts switched off.

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

The update runs on flat buffers: every parameter, and its three state
tensors, is a view into one long tensor per cohort, so each line of the
algorithm is one kernel over all parameters (about a dozen per step in all)
instead of about fifteen small kernels per parameter tensor. Gradient
centralization needs a mean per weight row; tensors whose rows have the same
length are laid side by side, so that is one reduction per row length.
OneCycleLR may cycle beta1 through `betas`, as it does for Adam.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim import Optimizer

__all__ = ["Ranger", "FlatCohort", "centralized", "sma_length", "rectification_term",
           "rectification"]


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
        self._flats: dict[tuple[int, ...], FlatCohort] = {}
        # Lay the parameters out flat now, before a torch.compile'd model first
        # runs, so that their storage does not move under it at the first step.
        for group in self.param_groups:
            trainable = [p for p in group["params"] if p.requires_grad]
            if trainable:
                self._flat(trainable)

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
                flat = self._flat(members)
                flat.attach_state([self.state[p] for p in flat.params])
                self._update(group, flat, step + 1)
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._flats = {}  # the loaded state is per tensor: lay it out flat again at the next step

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._flats = {}

    def _state_of(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["slow_buffer"] = p.detach().clone()  # Lookahead's slow weights
        return state

    def _flat(self, params: list[torch.Tensor]) -> "FlatCohort":
        """The flat layout of these parameters, made again if anything moved them."""
        key = tuple(map(id, params))
        flat = self._flats.get(key)
        if flat is None or not flat.intact():
            # A tensor can be a view into one buffer only: drop every layout sharing one.
            self._flats = {k: v for k, v in self._flats.items() if not set(k) & set(key)}
            flat = self._flats[key] = FlatCohort(params)
        return flat

    def _update(self, group: dict, flat: "FlatCohort", step: int) -> None:
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        grad = flat.gradients()
        if group["use_gc"]:
            flat.centralize(grad, group["gc_conv_only"])
        flat.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        flat.exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)

        n_sma, step_size = rectification(step, beta1, beta2, group["N_sma_threshhold"])
        param = flat.param
        if wd != 0:
            param.add_(param, alpha=-wd * lr)
        if n_sma > group["N_sma_threshhold"]:
            denom = flat.exp_avg_sq.sqrt().add_(group["eps"])
            param.addcdiv_(flat.exp_avg, denom, value=-step_size * lr)
        else:
            param.add_(flat.exp_avg, alpha=-step_size * lr)
        if step % group["k"] == 0:
            flat.slow_buffer.add_(param - flat.slow_buffer, alpha=group["alpha"])
            param.copy_(flat.slow_buffer)
        for state in flat.states:
            state["step"] = step


class FlatCohort:
    """Parameters and their Ranger state, each laid end to end in one flat buffer.

    After construction every parameter's `.data`, and its state tensors, are
    views into the buffers (with their own shapes and strides), so a single
    kernel on a buffer updates all of them. Weights that gradient
    centralization treats alike (conv weights, other matrices) and whose rows
    have the same length are placed next to each other, so that one reduction
    centralizes all of them.
    """

    STATE = ("exp_avg", "exp_avg_sq", "slow_buffer")

    def __init__(self, params: list[torch.Tensor]):
        for p in params:
            if not _is_dense(p):
                p.data = p.data.contiguous()
        self.params = sorted(params, key=_gc_key)
        self.offsets, offset = [], 0
        for p in self.params:
            self.offsets.append(offset)
            offset += p.numel()
        self.param = self._lay_out([p.detach() for p in self.params])
        for p, view in zip(self.params, self._views(self.param)):
            p.data = view
        self.states: list[dict] = []
        self._pointers = [p.data_ptr() for p in self.params]
        self._contiguous = all(p.is_contiguous() for p in self.params)
        self._runs = self._centralization_runs()

    def attach_state(self, states: list[dict]) -> None:
        """Lay out the parameters' state (in `self.params` order) flat, the first time."""
        if self.states:
            return
        for name in self.STATE:
            flat = self._lay_out([state[name] for state in states])
            setattr(self, name, flat)
            for state, view in zip(states, self._views(flat)):
                state[name] = view
        self.states = states

    def _lay_out(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([_memory_order(t, like=p) for t, p in zip(tensors, self.params)])

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat.as_strided(p.shape, p.stride(), offset)
                for p, offset in zip(self.params, self.offsets)]

    def intact(self) -> bool:
        """False if something replaced a parameter's storage (e.g. model.to(...))."""
        return all(p.data_ptr() == ptr for p, ptr in zip(self.params, self._pointers))

    def gradients(self) -> torch.Tensor:
        """All gradients in one flat tensor, in the buffers' order."""
        if self._contiguous:
            try:  # the common case, with the least Python per tensor
                return torch.cat([p.grad.view(-1) for p in self.params])
            except RuntimeError:  # a gradient in another layout than its parameter
                pass
        return torch.cat([_memory_order(p.grad, like=p) for p in self.params])

    def _centralization_runs(self) -> list[tuple[int, int, int, int]]:
        """(start, end, row length, kind) of each stretch of alike weights; kind 4 = conv."""
        runs: list[list[int]] = []
        for p, offset in zip(self.params, self.offsets):
            kind, row = _gc_key(p)[:2]
            if kind == 0 or p.numel() == 0:
                continue
            if runs and runs[-1][1] == offset and runs[-1][2:] == [row, kind]:
                runs[-1][1] = offset + p.numel()
            else:
                runs.append([offset, offset + p.numel(), row, kind])
        return [tuple(run) for run in runs]

    def centralize(self, grad: torch.Tensor, conv_only: bool) -> None:
        """Subtract from every weight row its mean: the seed's GC, one run at a time."""
        for start, end, row, kind in self._runs:
            if kind == 4 or not conv_only:
                rows = grad[start:end].view(-1, row)
                rows.sub_(rows.mean(dim=1, keepdim=True))


def _is_dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _memory_order(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The elements of `t` as a flat view in the memory order of `like` (copied if laid out otherwise)."""
    if t.stride() != like.stride() or not _is_dense(t):
        t = torch.empty_like(like).copy_(t)
    return t.as_strided((t.numel(),), (1,))


def _gc_key(p: torch.Tensor) -> tuple[int, int]:
    """Sort key and GC class: (4 conv weight | 2 other matrix | 0 not centralized, row length)."""
    kind = 4 if p.dim() >= 4 else 2 if p.dim() >= 2 else 0
    row = p.numel() // p.shape[0] if p.dim() and p.shape[0] else 0
    return (kind, row)


def centralized(grad: torch.Tensor, conv_only: bool = False) -> torch.Tensor:
    """Gradient centralization: subtract the mean over all but the first dimension."""
    min_dims = 4 if conv_only else 2
    if grad.dim() < min_dims:
        return grad
    return grad - grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True)


def sma_length(step: int, beta2: float) -> float:
    """RAdam's rho_t: how many recent squared gradients the variance estimate effectively averages.

    It starts at 1 and grows towards rho_inf = 2 / (1 - beta2) - 1 (1999 for beta2 = 0.999).
    """
    beta2_t = beta2 ** step
    rho_inf = 2 / (1 - beta2) - 1
    return rho_inf - 2 * step * beta2_t / (1 - beta2_t)


def rectification_term(step: int, beta2: float) -> float:
    """RAdam's r_t, the factor that shrinks Adam's step while the variance estimate is young.

    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t)); it is
    defined once rho_t > 4, rises from near 0 and tends to 1. Below the threshold RAdam
    does not use it: the step is plain momentum (see `rectification`).
    """
    rho_t, rho_inf = sma_length(step, beta2), 2 / (1 - beta2) - 1
    if rho_t <= 4:
        return math.nan
    return math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))


def rectification(step: int, beta1: float, beta2: float, threshold: float) -> tuple[float, float]:
    """RAdam's rho_t and the step size Ranger multiplies by lr.

    Above the threshold: r_t with both bias corrections, for the step exp_avg / sqrt(exp_avg_sq);
    at or below it: only beta1's bias correction, for the momentum step exp_avg alone.
    """
    rho_t = sma_length(step, beta2)
    if rho_t > threshold:
        step_size = rectification_term(step, beta2) * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    else:
        step_size = 1.0 / (1 - beta1 ** step)
    return rho_t, step_size
