"""The seed's network: blocks of parallel conv branches mixed per sample, then an MLP.

Each block looks at its input twice. A tiny linear layer reads the input's
spatial mean and gives every sample `num_conv_layer` weights; the branches
(conv3x3 -> BatchNorm -> LeakyReLU -> MaxPool 2x2) each see the same input;
the block's output is the weighted sum of the branches. The weights depend
on the sample, so the block chooses, per image, which branch to listen to: a
form of attention over branches.

Compared with the seed's code the function is the same, but:
- the branches are one convolution with num_conv_layer x the channels (and
  one BatchNorm over them, which normalizes each channel on its own, just as
  separate BatchNorms do): one large kernel instead of several small ones;
- the seed's unused 4th branch is gone (28.3M parameters that forward never
  touched), and so is torch.jit.fork, which ran the branches one after
  another anyway. `load_seed_state_dict` still reads the seed's checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


class BasicBlock(nn.Module):
    """`num_conv_layer` conv branches on one input, mixed by per-sample weights."""

    def __init__(self, in_channels: int, out_channels: int, num_conv_layer: int):
        super().__init__()
        self.num_branches, self.out_channels = num_conv_layer, out_channels
        self.linear = nn.Linear(in_channels, num_conv_layer)
        # Branch j owns output channels [j * out_channels, (j + 1) * out_channels).
        self.conv = nn.Conv2d(in_channels, num_conv_layer * out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(num_conv_layer * out_channels)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = F.leaky_relu(self.linear(x.mean(dim=(2, 3))))          # (B, branches)
        branches = self.pool(F.leaky_relu(self.bn(self.conv(x))))       # (B, branches*C, H/2, W/2)
        batch, _, height, width = branches.shape
        branches = branches.view(batch, self.num_branches, self.out_channels, height, width)
        return (weights.view(batch, self.num_branches, 1, 1, 1) * branches).sum(dim=1)


class Backbone(nn.Module):
    def __init__(self, num_blocks: int, in_channels: int, out_channels: int, num_conv_layer: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            BasicBlock(in_channels if i == 0 else out_channels, out_channels, num_conv_layer)
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
                 hidden_size: int = 512, num_classes: int = 10):
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
                          num_classes=num_classes)
        self.backbone = Backbone(num_blocks, input_channels, backbone_out_channels, num_conv_layer)
        self.classifier = Classifier(backbone_out_channels, hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    def load_seed_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load weights saved by the original notebook's Model.

        The seed keeps each branch in `backbone.blocks.{i}.convs.{j}.{0,1}.*`
        (conv, BatchNorm) and one more, unused branch `convs.{num_conv_layer}`,
        which is skipped. Anything that does not fit raises a ValueError that
        lists the missing and unexpected keys and the shapes that differ.
        """
        self.load_state_dict(seed_to_fused_state_dict(state_dict, self.sizes["num_blocks"],
                                                      self.sizes["num_conv_layer"],
                                                      self.state_dict()))


def seed_to_fused_state_dict(seed: dict[str, torch.Tensor], num_blocks: int, branches: int,
                             target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and stack the seed's per-branch tensors into this model's layout."""
    seed, out, used = dict(seed), {}, set()

    def take(key: str) -> torch.Tensor | None:
        if key in seed:
            used.add(key)
            return seed[key]
        return None

    for i in range(num_blocks):
        prefix = f"backbone.blocks.{i}"
        for part in ("weight", "bias"):
            out[f"{prefix}.linear.{part}"] = take(f"{prefix}.linear.{part}")
        for ours, theirs, parts in (("conv", 0, ("weight", "bias")),
                                    ("bn", 1, ("weight", "bias", "running_mean", "running_var"))):
            for part in parts:
                pieces = [take(f"{prefix}.convs.{j}.{theirs}.{part}") for j in range(branches)]
                out[f"{prefix}.{ours}.{part}"] = (None if any(p is None for p in pieces)
                                                  else torch.cat(pieces))
        counts = [take(f"{prefix}.convs.{j}.1.num_batches_tracked") for j in range(branches)]
        out[f"{prefix}.bn.num_batches_tracked"] = counts[0]
        # The seed's dead branch: present in its checkpoints, never used.
        used.update(k for k in seed if k.startswith(f"{prefix}.convs.{branches}."))
    for key in target:
        if key.startswith("classifier."):
            out[key] = take(key)

    missing = sorted(k for k, v in out.items() if v is None)
    unexpected = sorted(set(seed) - used)
    wrong_shape = sorted(f"{k}: checkpoint {tuple(v.shape)}, model {tuple(target[k].shape)}"
                         for k, v in out.items()
                         if v is not None and k in target and v.shape != target[k].shape)
    if missing or unexpected or wrong_shape:
        details = [f"{label}: {', '.join(items)}" for label, items in (
            ("missing (in the model, not in the checkpoint)", missing),
            ("unexpected (in the checkpoint, not in the model)", unexpected),
            ("shapes that differ", wrong_shape)) if items]
        raise ValueError("This state dict does not fit the model's sizes "
                         f"(num_blocks={num_blocks}, num_conv_layer={branches}). "
                         + "; ".join(details))
    return out


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
