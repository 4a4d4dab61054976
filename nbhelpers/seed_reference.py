"""The seed's own formulation, kept as an oracle and a baseline, not for training.

Tests check that `nbhelpers.Model` and `nbhelpers.Ranger` compute what these
compute; the benchmarks time them side by side; notebook 02 counts the seed's
dead branch in it. The model is the original
notebook's code with only its comments shortened (dead 4th branch and
torch.jit.fork included); the optimizer is lessw2020's per-parameter Ranger
loop with its deprecated calls replaced by their current spellings.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

__all__ = ["SeedBasicBlock", "SeedBackbone", "SeedClassifier", "SeedModel", "SeedRanger"]


class SeedBasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, num_conv_layer):
        super().__init__()
        self.spatial_avg_pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_channels, num_conv_layer)
        self.activation = nn.LeakyReLU(inplace=True)
        self.convs = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=1),
                nn.BatchNorm2d(out_channels),
                nn.LeakyReLU(inplace=True),
                nn.MaxPool2d(kernel_size=2, stride=2))
            for _ in range(num_conv_layer)])
        # The seed's extra branch: created, counted, never used by forward.
        self.convs.append(nn.Sequential(
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, stride=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2)))

    def forward(self, x):
        spatial_avg = self.spatial_avg_pool(x).view(x.size(0), -1)
        a = self.activation(self.linear(spatial_avg))

        def apply_conv(conv: nn.Sequential, x: Tensor) -> Tensor:
            return conv(x)

        with warnings.catch_warnings():  # torch.jit.fork is deprecated
            warnings.simplefilter("ignore")
            outputs = [torch.jit.fork(apply_conv, self.convs[i], x) for i in range(a.size(1))]
            return sum(a[:, i].view(-1, 1, 1, 1) * torch.jit.wait(outputs[i])
                       for i in range(a.size(1)))


class SeedBackbone(nn.Module):
    def __init__(self, num_blocks, in_channels, out_channels, num_conv_layer):
        super().__init__()
        self.blocks = nn.ModuleList([
            SeedBasicBlock(in_channels if i == 0 else out_channels, out_channels, num_conv_layer)
            for i in range(num_blocks)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class SeedClassifier(nn.Module):
    def __init__(self, in_features, hidden_size, num_classes):
        super().__init__()
        self.spatial_avg_pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden_size), nn.BatchNorm1d(hidden_size),
            nn.LeakyReLU(inplace=True), nn.Dropout(p=0.5),
            nn.Linear(hidden_size, hidden_size), nn.BatchNorm1d(hidden_size),
            nn.LeakyReLU(inplace=True), nn.Dropout(p=0.5),
            nn.Linear(hidden_size, num_classes))

    def forward(self, x):
        return self.mlp(self.spatial_avg_pool(x).view(x.size(0), -1))


class SeedModel(nn.Module):
    def __init__(self, num_blocks, input_channels, backbone_out_channels, num_conv_layer,
                 hidden_size, num_classes):
        super().__init__()
        self.backbone = SeedBackbone(num_blocks, input_channels, backbone_out_channels,
                                     num_conv_layer)
        self.classifier = SeedClassifier(backbone_out_channels, hidden_size, num_classes)

    def forward(self, x):
        return self.classifier(self.backbone(x))


class SeedRanger(Optimizer):
    """Ranger step by step, one parameter at a time, as lessw2020's ranger.py does it."""

    def __init__(self, params, lr=1e-3, alpha=0.5, k=6, N_sma_threshhold=5,
                 betas=(0.95, 0.999), eps=1e-5, weight_decay=0, use_gc=True,
                 gc_conv_only=False):
        defaults = dict(lr=lr, alpha=alpha, k=k, betas=betas, eps=eps,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.N_sma_threshhold = N_sma_threshhold
        self.use_gc = use_gc
        self.gc_gradient_threshold = 3 if gc_conv_only else 1

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float().clone()
                p_fp32 = p.float()
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p_fp32)
                    state["exp_avg_sq"] = torch.zeros_like(p_fp32)
                    state["slow_buffer"] = p.clone()
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                beta1, beta2 = group["betas"]
                if self.use_gc and grad.dim() > self.gc_gradient_threshold:
                    grad.add_(-grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True))
                state["step"] += 1
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                beta2_t = beta2 ** state["step"]
                n_sma_max = 2 / (1 - beta2) - 1
                n_sma = n_sma_max - 2 * state["step"] * beta2_t / (1 - beta2_t)
                if n_sma > self.N_sma_threshhold:
                    step_size = math.sqrt((1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4)
                                          * (n_sma - 2) / n_sma * n_sma_max / (n_sma_max - 2)
                                          ) / (1 - beta1 ** state["step"])
                else:
                    step_size = 1.0 / (1 - beta1 ** state["step"])
                if group["weight_decay"] != 0:
                    p_fp32.add_(p_fp32, alpha=-group["weight_decay"] * group["lr"])
                if n_sma > self.N_sma_threshhold:
                    denom = exp_avg_sq.sqrt().add_(group["eps"])
                    p_fp32.addcdiv_(exp_avg, denom, value=-step_size * group["lr"])
                else:
                    p_fp32.add_(exp_avg, alpha=-step_size * group["lr"])
                p.copy_(p_fp32)
                if state["step"] % group["k"] == 0:
                    slow_p = state["slow_buffer"]
                    slow_p.add_(p - slow_p, alpha=group["alpha"])
                    p.copy_(slow_p)
        return loss
