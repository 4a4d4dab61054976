"""The seed's network: blocks of parallel conv branches mixed per sample, then an MLP.

Each block looks at its input twice. A tiny linear layer reads the input's
spatial mean and gives every sample `num_conv_layer` weights; the branches
(conv3x3 -> BatchNorm -> LeakyReLU -> MaxPool 2x2) each see the same input;
the block's output is the weighted sum of the branches. The weights depend
on the sample, so the block chooses, per image, which branch to listen to: a
form of attention over branches. `BasicBlock.mixing_override` lets analysis
code (nbhelpers.evaluation, nbhelpers.branches) record those weights or replace them.
Notebook 02 takes it apart (layer table, parameters, FLOPs); every run trains it.

Compared with the seed's code the function and the parameter names are the
same, but:
- the seed's unused extra branch is gone (28.3M parameters that forward never
  touched), and so is torch.jit.fork, which ran the branches one after
  another anyway; `load_seed_state_dict` still reads the seed's checkpoints;
- each branch pools before its LeakyReLU: the activation is strictly
  increasing, so max and LeakyReLU commute and the numbers are the same, on
  a 4x smaller tensor;
- the weighted sum accumulates in place instead of building a new tensor
  per branch;
- on a CPU with several threads, a narrow branch's batch norm runs in NCHW
  (`batch_norm` says why): the same function, in the layout whose kernel is fast.
(One convolution with 3x the channels instead of three was tried: under
torch.compile on a GPU it is no faster; on a CPU its 3x larger activations
made an fp32 step about 30% slower, and a bf16 one 0.80-1.05x as fast at
widths 8-32 on a Xeon with AMX. Neither torch.compile nor a fused batch
norm + pooling + LeakyReLU paid there either: benchmarks/cpu_candidates.py.
torch.compile over the whole model does pay in fp32 below 16 channels, where
its own fused kernels replace the narrow batch norm and pooling: "auto" uses
it there for long runs, nbhelpers.config.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["CACHE_LINE_FLOATS", "batch_norm", "ConvBranch", "MixingOverride", "MIXINGS", "BasicBlock",
           "Backbone", "Classifier", "Model", "count_parameters", "LayerRow", "layer_table", "format_layer_table",
           "count_flops"]


# PyTorch's channels-last batch norm on a CPU sums each thread's share of the pixels into its own
# row of C floats, the rows side by side in one buffer. With fewer than 16 channels (one 64-byte
# cache line of floats) two threads' rows share a cache line, and every pixel's update makes the
# cores take the line from each other ("false sharing"): on two threads of an AMD EPYC, batch norm
# over 8 channels took 2-4x as long as on one (benchmarks/RESULTS.md). The NCHW kernel has no such
# buffer, and two copies between the layouts cost less than the fight.
CACHE_LINE_FLOATS = 16


def batch_norm(norm: nn.BatchNorm2d, z: torch.Tensor) -> torch.Tensor:
    """`norm(z)`, run in NCHW where PyTorch's channels-last CPU kernel shares cache lines between threads.

    Only in training (evaluation uses the stored statistics: no per-thread sums), in fp32 (the
    layout was measured there; bf16 autocast keeps channels_last), with more than one thread,
    outside torch.compile (it writes its own kernels). The result is channels_last again, as
    the pooling after it is fast in that layout and slow in NCHW.
    """
    # is_compiling first: torch.get_num_threads() inside a compiled region breaks its graph.
    if (not torch.compiler.is_compiling() and norm.training and z.device.type == "cpu"
            and z.dtype == torch.float32 and z.shape[1] < CACHE_LINE_FLOATS
            and torch.get_num_threads() > 1
            and z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous()):
        return norm(z.contiguous()).contiguous(memory_format=torch.channels_last)
    return norm(z)


class ConvBranch(nn.Sequential):
    """conv3x3 -> BatchNorm -> MaxPool 2x2 -> LeakyReLU (the seed's order, pool moved first)."""

    def __init__(self, in_channels: int, out_channels: int):
        # Indices 0 and 1 (conv, BatchNorm) are the seed's, so its keys load as they are.
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                         nn.BatchNorm2d(out_channels), nn.MaxPool2d(2), nn.LeakyReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, pool, activation = self
        return activation(pool(batch_norm(norm, conv(x))))


MixingOverride = Callable[[torch.Tensor], torch.Tensor]

# How a block turns the linear layer's scores s = Linear(mean of x) into branch weights a.
# "seed" is the seed's own model; the others are what notebook 06 compares it with.
MIXINGS = {
    "seed": "a = LeakyReLU(s): unnormalized; a branch whose score is negative is all but off",
    "softmax": "a = softmax(s): the weights of a block's branches sum to one",
    "sigmoid": "a = sigmoid(s): each branch gated between 0 and 1, independently",
    "equal": "a = 1 / branches for every image: no per-image weights (no linear layer)",
}


class BasicBlock(nn.Module):
    """`num_conv_layer` conv branches on one input, mixed by per-sample weights.

    `mixing_override` lets analysis code look at or change the mixing without
    touching the weights of the model. It is None by default, and then the block
    does exactly the seed's computation. Set to a function, the function receives
    the per-image weights the block computed, a (batch, branches) tensor, and
    returns the weights the block uses instead (same shape, or one that
    broadcasts to it). `nbhelpers.branches` uses it to record the weights, to
    replace them by fixed ones (their mean over a test set), and to remove a
    branch (its weight set to 0).
    """

    def __init__(self, in_channels: int, out_channels: int, num_conv_layer: int, mixing: str = "seed"):
        super().__init__()
        if mixing not in MIXINGS:
            raise ValueError(f"BasicBlock: mixing must be one of {', '.join(MIXINGS)}, not {mixing!r}")
        self.mixing = mixing
        # "equal" mixes with fixed weights: it has nothing to learn, so no linear layer.
        self.linear = nn.Linear(in_channels, num_conv_layer) if mixing != "equal" else None
        self.convs = nn.ModuleList(ConvBranch(in_channels, out_channels)
                                   for _ in range(num_conv_layer))
        self.mixing_override: MixingOverride | None = None

    def branch_weights(self, x: torch.Tensor) -> torch.Tensor:
        """One weight per image and branch, (B, branches), from the spatial mean of x.

        The seed's: a = LeakyReLU(Linear(mean)). LeakyReLU keeps positive values and
        multiplies negative ones by 0.01, so the weights are not normalized (no
        softmax: they need not sum to 1) and can be slightly negative. The other
        mixings (MIXINGS) normalize the same scores, or drop them.
        """
        if self.linear is None:
            return x.new_full((x.shape[0], len(self.convs)), 1 / len(self.convs))
        scores = self.linear(x.mean(dim=(2, 3)))
        if self.mixing == "softmax":
            return scores.softmax(dim=1)
        if self.mixing == "sigmoid":
            return torch.sigmoid(scores)
        return F.leaky_relu(scores)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.branch_weights(x)
        if self.mixing_override is not None:  # analysis only; None in training
            weights = self.mixing_override(weights).expand_as(weights)
        mixed = None
        for j, branch in enumerate(self.convs):
            weight = weights[:, j].view(-1, 1, 1, 1)
            out = branch(x)
            # The first product is a new tensor; the others are added into it.
            mixed = out * weight if mixed is None else mixed.addcmul_(out, weight)
        return mixed


class Backbone(nn.Module):
    def __init__(self, num_blocks: int, in_channels: int, out_channels: int, num_conv_layer: int,
                 mixing: str = "seed"):
        super().__init__()
        self.blocks = nn.ModuleList(
            BasicBlock(in_channels if i == 0 else out_channels, out_channels, num_conv_layer, mixing)
            for i in range(num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Classifier(nn.Module):
    """Spatial mean, then two hidden layers (Linear, BatchNorm, LeakyReLU, Dropout 0.5)."""

    def __init__(self, in_features: int, hidden_size: int, num_classes: int):
        super().__init__()
        # Same layer indices as the seed's nn.Sequential, so its keys load as they are.
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden_size), nn.BatchNorm1d(hidden_size),
            nn.LeakyReLU(), nn.Dropout(p=0.5),
            nn.Linear(hidden_size, hidden_size), nn.BatchNorm1d(hidden_size),
            nn.LeakyReLU(), nn.Dropout(p=0.5),
            nn.Linear(hidden_size, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.mean(dim=(2, 3)))


class Model(nn.Module):
    """The seed's Model, with its argument order and the sizes it trained with."""

    def __init__(self, num_blocks: int = 3, input_channels: int = 3,
                 backbone_out_channels: int = 1024, num_conv_layer: int = 3,
                 hidden_size: int = 512, num_classes: int = 10, mixing: str = "seed"):
        super().__init__()
        for name, value in dict(num_blocks=num_blocks, input_channels=input_channels,
                                backbone_out_channels=backbone_out_channels,
                                num_conv_layer=num_conv_layer, hidden_size=hidden_size,
                                num_classes=num_classes).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Model: {name} must be a positive integer, not {value!r}")
        self.sizes = dict(num_blocks=num_blocks, input_channels=input_channels,
                          backbone_out_channels=backbone_out_channels,
                          num_conv_layer=num_conv_layer, hidden_size=hidden_size,
                          num_classes=num_classes, mixing=mixing)
        self.backbone = Backbone(num_blocks, input_channels, backbone_out_channels, num_conv_layer,
                                 mixing)
        self.classifier = Classifier(backbone_out_channels, hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    def load_seed_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load weights saved by the original notebook's Model.

        Its keys are this model's, plus the unused extra branch of every block
        (`backbone.blocks.{i}.convs.{num_conv_layer}.*`), which is skipped.
        Anything else that does not fit raises a ValueError listing the
        missing and unexpected keys and the shapes that differ.
        """
        dead = tuple(f"backbone.blocks.{i}.convs.{self.sizes['num_conv_layer']}."
                     for i in range(self.sizes["num_blocks"]))
        state = {k: v for k, v in state_dict.items() if not k.startswith(dead)}
        target = self.state_dict()
        missing = sorted(set(target) - set(state))
        unexpected = sorted(set(state) - set(target))
        wrong_shape = sorted(f"{k}: checkpoint {tuple(v.shape)}, model {tuple(target[k].shape)}"
                             for k, v in state.items() if k in target and v.shape != target[k].shape)
        if missing or unexpected or wrong_shape:
            details = [f"{label}: {_first_few(items)}" for label, items in (
                ("missing (in the model, not in the checkpoint)", missing),
                ("unexpected (in the checkpoint, not in the model)", unexpected),
                ("shapes that differ", wrong_shape)) if items]
            sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
            raise ValueError(f"This state dict does not fit the model ({sizes}). "
                             + "; ".join(details))
        self.load_state_dict(state)


def _first_few(items: list[str], few: int = 4) -> str:
    more = f" and {len(items) - few} more" if len(items) > few else ""
    return ", ".join(items[:few]) + more


# --------------------------------------------------------------------------
# What notebook 02 shows: layers, parameters, FLOPs
# --------------------------------------------------------------------------

def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int


def layer_table(model: nn.Module, input_size=(1, 3, 32, 32)) -> list[LayerRow]:
    """Every leaf layer in the order it runs, with its output shape and parameter count.

    The pass runs on the meta device (shapes only, no arithmetic), so even the
    full-width model is tabulated instantly.
    """
    rows: list[LayerRow] = []
    meta_model = _on_meta(model)
    hooks = [module.register_forward_hook(
        lambda mod, args, out, name=name: rows.append(LayerRow(
            name, type(mod).__name__, tuple(out.shape),
            sum(p.numel() for p in mod.parameters(recurse=False)))))
        for name, module in meta_model.named_modules() if not list(module.children())]
    try:
        meta_model.eval()(torch.empty(input_size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def format_layer_table(rows: list[LayerRow]) -> str:
    lines = [f"{'layer':<28}{'type':<13}{'output shape':<22}{'parameters':>12}"]
    lines += [f"{r.name:<28}{r.kind:<13}{str(r.output_shape):<22}{r.parameters:>12,}" for r in rows]
    lines.append(f"{'total':<63}{sum(r.parameters for r in rows):>12,}")
    return "\n".join(lines)


def count_flops(model: nn.Module, image_size=(3, 32, 32)) -> dict[str, float]:
    """FLOPs per image (a multiply-add counts 2) for a forward pass and a training step."""
    meta_model = _on_meta(model).train()
    batch = 2  # BatchNorm1d needs more than one sample in training mode
    images = torch.empty((batch, *image_size), device="meta")
    with FlopCounterMode(display=False) as forward:
        logits = meta_model(images)
    with FlopCounterMode(display=False) as backward:
        logits.sum().backward()
    fwd = forward.get_total_flops() / batch
    return {"forward": fwd, "train_step": fwd + backward.get_total_flops() / batch}


def _on_meta(model: nn.Module) -> nn.Module:
    if next(model.parameters()).device.type == "meta":
        return model
    with torch.device("meta"):
        return type(model)(**model.sizes)
