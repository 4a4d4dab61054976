"""What the branch mixing learns: the per-image weights of every block, and an ablation.

Each block of the model mixes its conv branches with weights
a = LeakyReLU(Linear(spatial mean of the block's input)), one per image and
branch. This module reads those weights over a whole split and answers two
questions with test accuracy:

- does the mixing need to be *per image*? Replace a block's per-image weights
  by their mean over the split (one fixed mixture for every image);
- does the block use every branch? Remove one branch (its weight set to 0,
  which computes exactly the model built without that branch).

    weights = collect_branch_weights(model, test)        # (blocks, images, branches)
    rows = ablation(model, test, weights.mean(dim=1))
    print(format_ablation(rows))

Everything goes through `BasicBlock.mixing_override`, set only inside a `with`
block here and restored afterwards: the trained model itself never changes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from .config import TrainConfig
from .data import Split
from .evaluation import accuracy, infer
from .model import MixingOverride, Model


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


def fixed_weights(weights: torch.Tensor) -> MixingOverride:
    """An override that gives every image the same `weights` (one per branch)."""
    return lambda computed: weights.to(computed.device, computed.dtype).expand_as(computed)


def without_branch(branch: int) -> MixingOverride:
    """An override that sets one branch's weight to 0: the block as if built without it."""
    def remove(computed: torch.Tensor) -> torch.Tensor:
        kept = torch.ones(computed.shape[1], device=computed.device, dtype=computed.dtype)
        kept[branch] = 0
        return computed * kept
    return remove


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


def mean_weight_per_class(weights: torch.Tensor, labels: torch.Tensor,
                          num_classes: int) -> torch.Tensor:
    """The mean weight of each branch over the images of each true class: (blocks, classes, branches)."""
    labels = labels.cpu()
    return torch.stack([weights[:, labels == c].mean(dim=1) for c in range(num_classes)], dim=1)


def most_extreme_images(weights: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the `count` images with the lowest and the highest weight, lowest/highest first.

    `weights` holds one weight per image (one block's, one branch's).
    """
    order = weights.argsort()
    return order[:count], order.flip(0)[:count]


def extreme_image_rows(weights: torch.Tensor, split: Split, count: int = 6) -> list[dict]:
    """For each block, the images with the lowest and the highest weight on its most varied branch.

    The branch whose weight varies most between images (largest standard
    deviation) is where a block's per-image choice shows best. The rows are
    what `analysis_plots.weight_extremes` draws.
    """
    rows = []
    for block, block_weights in enumerate(weights):
        branch = int(block_weights.std(dim=0).argmax())
        lowest, highest = most_extreme_images(block_weights[:, branch], count)
        picks = torch.cat([lowest, highest])
        rows.append({"label": f"block {block}\nbranch {branch}", "images": split.images[picks],
                     "labels": split.labels[picks], "weights": block_weights[picks, branch],
                     "count": count})
    return rows


def initial_model(config: TrainConfig, num_classes: int = 10) -> Model:
    """The untrained model a run of `config` started from (same seed, same sizes).

    `fit` seeds every generator with config.rand_seed and draws nothing from
    PyTorch's generator before it builds the model, so building it again right
    after the same seed gives the very same initial weights. The notebook's own
    random state is left as it was.
    """
    from .train import build_model  # train records branch weights with this module

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.rand_seed)
        return build_model(config, num_classes)


# --------------------------------------------------------------------------
# The ablation: test accuracy with the mixing fixed, or a branch removed
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class AblationRow:
    change: str        # what was done to the model, in words
    accuracy: float    # test accuracy (%) with that change
    baseline: float    # test accuracy (%) of the model as trained

    @property
    def difference(self) -> float:
        """Percentage points gained (positive) or lost (negative) against the model as trained."""
        return self.accuracy - self.baseline


def ablation_changes(mean_weights: torch.Tensor) -> dict[str, dict[int, MixingOverride]]:
    """Every change the ablation tries, by name: the overrides for `mixing_overridden`.

    `mean_weights` is (blocks, branches): each block's weights averaged over the split.
    """
    blocks, branches = mean_weights.shape
    changes: dict[str, dict[int, MixingOverride]] = {"as trained": {}}
    for block in range(blocks):
        changes[f"block {block}: mean weights"] = {block: fixed_weights(mean_weights[block])}
    changes["every block: mean weights"] = {block: fixed_weights(mean_weights[block])
                                           for block in range(blocks)}
    for block in range(blocks):
        for branch in range(branches):
            changes[f"block {block}: without branch {branch}"] = {block: without_branch(branch)}
    return changes


def ablation(model: Model, split: Split, mean_weights: torch.Tensor,
             device: torch.device | str | None = None, precision: str = "fp32",
             channels_last: bool = False) -> list[AblationRow]:
    """Test accuracy of the model as trained, then with each change of `ablation_changes`.

    One evaluation over `split` per change: (1 + blocks + 1 + blocks x branches) in all.
    """
    labels = split.labels.cpu()
    accuracies = {}
    for change, overrides in ablation_changes(mean_weights).items():
        with mixing_overridden(model, overrides):
            logits = infer(model, split, device, precision, channels_last)
        accuracies[change] = accuracy(logits.argmax(dim=1), labels)
    baseline = accuracies["as trained"]
    return [AblationRow(change, value, baseline) for change, value in accuracies.items()]


def format_ablation(rows: list[AblationRow]) -> str:
    lines = [f"{'change':<30}{'test accuracy':>15}{'difference':>13}"]
    lines += [f"{r.change:<30}{r.accuracy:>14.2f}%{r.difference:>+10.2f} pp" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# What the numbers say, in words (notebook 04's closing note)
# --------------------------------------------------------------------------

ON = 0.05      # a weight above this lets a branch's output through
OFTEN = 0.10   # a branch is "in use" when it is on for at least this share of images


def share_on(weights: torch.Tensor, on: float = ON) -> torch.Tensor:
    """The share of images (0..1) for which each block's branch has a weight above `on`: (blocks, branches)."""
    return (weights > on).double().mean(dim=1)


def branches_in_use(weights: torch.Tensor) -> list[list[int]]:
    """Per block, the branches on (weight above ON) for at least OFTEN of the images."""
    return [torch.nonzero(shares >= OFTEN).flatten().tolist() for shares in share_on(weights)]


def describe_branch_use(weights: torch.Tensor) -> str:
    """One line per block: how often each branch is on, its mean weight, and which are in use."""
    shares, means = share_on(weights), weights.mean(dim=1)
    lines = []
    for block, used in enumerate(branches_in_use(weights)):
        parts = ", ".join(f"branch {b}: on for {100 * shares[block, b]:.0f}% (mean a {means[block, b]:+.3f})"
                          for b in range(weights.shape[2]))
        verdict = f"uses {len(used)} branch{'es' if len(used) != 1 else ''} ({', '.join(map(str, used)) or 'none'})"
        lines.append(f"block {block} {verdict}: {parts}")
    return "\n".join(lines)


def describe_ablation(rows: list[AblationRow], weights: torch.Tensor) -> str:
    """What the ablation found: the cost of fixed mixing, of removing a used and an unused branch."""
    by_change = {row.change: row for row in rows}
    every = by_change["every block: mean weights"]
    one_block = [by_change[f"block {block}: mean weights"] for block in range(weights.shape[0])]
    used = branches_in_use(weights)
    removed_used, removed_unused = [], []
    for block, branches in enumerate(used):
        for branch in range(weights.shape[2]):
            row = by_change[f"block {block}: without branch {branch}"]
            (removed_used if branch in branches else removed_unused).append(row.difference)
    lines = [f"as trained: {every.baseline:.2f}% test accuracy",
             f"every block mixing with fixed weights (their mean): {every.accuracy:.2f}% "
             f"({every.difference:+.2f} pp); one block at a time: "
             + ", ".join(f"block {block} {row.difference:+.2f} pp" for block, row in enumerate(one_block))]
    if removed_used:
        lines.append(f"removing a branch in use: {min(removed_used):+.2f} to {max(removed_used):+.2f} pp")
    if removed_unused:
        lines.append(f"removing a branch not in use: {min(removed_unused):+.2f} to "
                     f"{max(removed_unused):+.2f} pp")
    several = [block for block, branches in enumerate(used) if len(branches) > 1]
    lines.append("blocks that use more than one branch: "
                 + (", ".join(f"block {b} ({', '.join(map(str, used[b]))})" for b in several)
                    if several else "none: every block has settled on a single branch"))
    return "\n".join(lines)


def compare_branch_use(trained: torch.Tensor, untrained: torch.Tensor) -> str:
    """Per block, the branches in use before and after training, and whether they are the same."""
    lines = []
    for block, (after, before) in enumerate(zip(branches_in_use(trained), branches_in_use(untrained))):
        same = "the same" if after == before else "changed"
        lines.append(f"block {block}: in use before training {before}, after {after} ({same})")
    return "\n".join(lines)
