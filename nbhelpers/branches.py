"""What the branch mixing learns: the per-image weights of every block, and an ablation.

Notebook 04 reads a trained model's mixing with it (and 02 an untrained
one's); 06 asks `score_gradients` why the seed's branches stay as they start,
and nbhelpers.compare reads each run's branch_weights.csv through `branch_history`.

Each block of the model mixes its conv branches with weights a, one per image
and branch, computed from the spatial mean of the block's input (the seed's
a = LeakyReLU(Linear(mean)); nbhelpers.model.MIXINGS lists the others). This
module reads those weights over a whole split and measures, without a threshold:

- how much each branch is used: its share of its block's mean |a|, and from
  the shares the *effective number of branches* (1 when one branch takes all,
  3 when three share equally);
- how they moved during training (a run's branch_weights.csv, epoch 0 the
  untrained model);
- whether the mixing needs to be *per image*: a block's per-image weights
  replaced by their mean over the split (one fixed mixture for every image);
- what each branch is worth: the block without it (its weight set to 0, which
  computes exactly the model built without that branch).

Each ablation is a difference in test accuracy with a 95% paired-bootstrap
interval (nbhelpers.stats.paired_bootstrap): real when it excludes 0.

    weights = collect_branch_weights(model, test)        # (blocks, images, branches)
    rows = ablation(model, test, weights.mean(dim=1))
    print(format_ablation(rows))

Everything goes through `BasicBlock.mixing_override`, set only inside a `with`
block here and restored afterwards: the trained model itself never changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from itertools import islice

from .config import ConfigError, TrainConfig, build_model
from .data import CifarLoader, Split
from .errors import ExplainedError
from .evaluation import infer, mixing_overridden
from .stats import Interval, paired_bootstrap
from .model import MixingOverride, Model
from .train import build_optimizer, build_scheduler, train_epoch

__all__ = ["fixed_weights", "without_branch", "mean_weight_per_class", "standard_error_per_class",
           "describe_class_differences", "most_extreme_images", "extreme_image_rows",
           "initial_model", "weight_shares", "shares_of", "effective_branches", "moved_share",
           "leading_branch", "describe_branch_use", "compare_branch_use", "BranchRecordError",
           "BranchHistory", "branch_history", "score_gradients", "describe_score_gradients",
           "ScoreUpdates", "score_updates", "describe_score_updates",
           "AblationRow", "ablation_changes", "ablation", "verdict", "format_ablation",
           "branch_use_rows", "branch_use_table", "describe_ablation", "costliest_removal"]


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


def mean_weight_per_class(weights: torch.Tensor, labels: torch.Tensor,
                          num_classes: int) -> torch.Tensor:
    """The mean weight of each branch over the images of each true class: (blocks, classes, branches)."""
    labels = labels.cpu()
    return torch.stack([weights[:, labels == c].mean(dim=1) for c in range(num_classes)], dim=1)


def standard_error_per_class(weights: torch.Tensor, labels: torch.Tensor,
                             num_classes: int) -> torch.Tensor:
    """How far each class's mean weight may lie from the truth by chance: std / sqrt(images), per cell."""
    labels = labels.cpu()
    return torch.stack([weights[:, labels == c].std(dim=1) / (labels == c).sum().sqrt()
                        for c in range(num_classes)], dim=1)


def describe_class_differences(per_class: torch.Tensor, standard_errors: torch.Tensor,
                               classes: tuple[str, ...] | list[str]) -> str:
    """Per block, the branch whose class means lie furthest apart: its highest and lowest class.

    The gap is also given in standard errors (of the difference of the two
    means), so that it can be read against the noise of the test images.
    """
    lines = []
    for block in range(per_class.shape[0]):
        gaps = per_class[block].max(dim=0).values - per_class[block].min(dim=0).values
        branch = int(gaps.argmax())
        column, errors = per_class[block, :, branch], standard_errors[block, :, branch]
        high, low = int(column.argmax()), int(column.argmin())
        noise = float((errors[high] ** 2 + errors[low] ** 2).sqrt())
        if noise == 0:  # every image gets the same weights ("equal", or a single softmax branch)
            lines.append(f"block {block}: every image gets the same weights; no class differs")
            continue
        lines.append(f"block {block}, branch {branch}: highest {classes[high]} ({column[high]:+.3f}), lowest "
                     f"{classes[low]} ({column[low]:+.3f}): a gap of {gaps[branch]:.3f}, "
                     f"{gaps[branch] / noise:.0f} standard errors")
    return "\n".join(lines)


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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.rand_seed)
        return build_model(config, num_classes)


# --------------------------------------------------------------------------
# How much each branch is used, without a threshold
# --------------------------------------------------------------------------

def weight_shares(mean_abs: torch.Tensor) -> torch.Tensor:
    """Each branch's share (0..1) of its block's mean |a|: `mean_abs` (..., branches) over its sum.

    The weights of the seed's mixing are not normalized and can be slightly
    negative, so the share is taken of their size: a branch whose weight sits
    near -0.01 for every image gets a share near 0 whatever its sign.
    """
    return mean_abs / mean_abs.sum(dim=-1, keepdim=True)


def shares_of(weights: torch.Tensor) -> torch.Tensor:
    """The shares of collected weights (blocks, images, branches): (blocks, branches)."""
    return weight_shares(weights.abs().mean(dim=1))


def effective_branches(shares: torch.Tensor) -> torch.Tensor:
    """The effective number of branches a block uses: 1 / sum of the squared shares (over the last dim).

    No threshold decides what counts as "in use": equal shares among k
    branches give exactly k, one branch taking everything gives 1, and shares
    of 0.9, 0.05, 0.05 give about 1.2 (ecology's inverse Simpson index,
    physics' participation ratio).
    """
    return 1 / (shares ** 2).sum(dim=-1)


def moved_share(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """How much of each block's weight share changed branches between two states, 0..1 (the last dim).

    Half the summed absolute change of the shares (the total variation
    distance): 0 when every branch kept its share, 1 when the block moved
    everything to branches that had nothing.
    """
    return (after - before).abs().sum(dim=-1) / 2


def leading_branch(shares: torch.Tensor) -> int | None:
    """The branch with the largest share (shares: (branches,)), or None when two share the top (as under "equal")."""
    top = shares.topk(min(2, len(shares))).values
    if len(top) > 1 and float(top[0] - top[1]) < 1e-6:
        return None
    return int(shares.argmax())


def describe_branch_use(weights: torch.Tensor) -> str:
    """One line per block: each branch's share of mean |a| and its mean a, and the effective number."""
    shares, means, effective = shares_of(weights), weights.mean(dim=1), effective_branches(shares_of(weights))
    lines = []
    for block in range(weights.shape[0]):
        parts = ", ".join(f"branch {b} {100 * shares[block, b]:.0f}% (mean a {means[block, b]:+.3f})"
                          for b in range(weights.shape[2]))
        lines.append(f"block {block}: {effective[block]:.2f} effective branches; share of mean |a|: {parts}")
    return "\n".join(lines)


def compare_branch_use(before: torch.Tensor, after: torch.Tensor, before_label: str = "untrained",
                       after_label: str = "trained") -> str:
    """Per block, the shares (blocks, branches) before -> after, and whether the largest stayed put."""
    lines = []
    moved = moved_share(before, after)
    for block in range(before.shape[0]):
        parts = ", ".join(f"branch {b} {100 * before[block, b]:.0f}% -> {100 * after[block, b]:.0f}%"
                          for b in range(before.shape[1]))
        first, last = leading_branch(before[block]), leading_branch(after[block])
        if first is None or last is None:
            lead = "no single branch has the largest share"
        else:
            lead = (f"the largest share: branch {first} {before_label}, branch {last} {after_label} "
                    f"({'the same branch' if first == last else 'another branch'})")
        lines.append(f"block {block}: {parts}; effective branches {effective_branches(before[block]):.2f}"
                     f" -> {effective_branches(after[block]):.2f}; {100 * moved[block]:.0f}% of the "
                     f"share moved between branches; {lead}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# How the weights moved during training (a run's branch_weights.csv)
# --------------------------------------------------------------------------

class BranchRecordError(ExplainedError, ValueError):
    """A run folder holds no record of its branch weights."""


@dataclass(frozen=True)
class BranchHistory:
    """A run's branch_weights.csv as tensors: each block's mean a and mean |a| at each epoch.

    Epoch 0 is the untrained model; the weights were taken on the same test
    images (up to 1,000, class-balanced) at every epoch.
    """

    epochs: list[int]
    mean: torch.Tensor      # (epochs, blocks, branches)
    mean_abs: torch.Tensor  # (epochs, blocks, branches)

    @property
    def shares(self) -> torch.Tensor:
        return weight_shares(self.mean_abs)

    @property
    def effective(self) -> torch.Tensor:
        """The effective number of branches of each block at each epoch: (epochs, blocks)."""
        return effective_branches(self.shares)


def branch_history(rows: list[dict[str, float]], source: str = "this run") -> BranchHistory:
    """The rows of branch_weights.csv (run.branch_weights) as a BranchHistory."""
    if not rows:
        raise BranchRecordError(f"{source} has no branch_weights.csv: it was trained before runs "
                                "recorded their branch weights. Train it again (notebook 03).")
    epochs = sorted({int(row["epoch"]) for row in rows})
    blocks = 1 + max(int(row["block"]) for row in rows)
    branches = 1 + max(int(row["branch"]) for row in rows)
    mean = torch.full((len(epochs), blocks, branches), float("nan"), dtype=torch.float64)
    mean_abs = mean.clone()
    for row in rows:
        at = (epochs.index(int(row["epoch"])), int(row["block"]), int(row["branch"]))
        mean[at], mean_abs[at] = row["mean"], row["mean_abs"]
    return BranchHistory(epochs, mean, mean_abs)


# --------------------------------------------------------------------------
# Why the seed's branches stay as they start: the gradients at initialization
# --------------------------------------------------------------------------

def score_gradients(model: Model, split: Split, images: int = 256,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Per block and branch, on one training-mode batch: the mean weight a and the mean |dLoss/ds|.

    s = Linear(mean of the block's input) is the score a mixing turns into a
    weight; its gradient is what moves the linear layer, i.e. what lets a
    branch switch on or off. Under the seed's LeakyReLU a negative score
    passes a hundredth of the gradient on. Both (blocks, branches). The
    model's parameters are left as they were (only its BatchNorm statistics see
    the batch), and so is the caller's random state (dropout draws from a
    fixed seed). Needs a model whose blocks have a linear layer (every mixing
    but "equal").
    """
    blocks = model.backbone.blocks
    batch = next(iter(CifarLoader(split.subset(torch.arange(min(images, len(split)))), images,
                                  train=False, device=device)))
    scores: list[torch.Tensor] = []
    weights: list[torch.Tensor] = []
    hooks = [block.linear.register_forward_hook(lambda module, args, out: scores.append(out))
             for block in blocks]
    recorders = {i: (lambda computed: weights.append(computed.detach()) or computed)
                 for i in range(len(blocks))}
    try:
        with torch.random.fork_rng(devices=[]), mixing_overridden(model, recorders):
            torch.manual_seed(0)  # the same dropout masks on every call
            model.train()
            loss = F.cross_entropy(model(batch[0]), batch[1])
            gradients = torch.autograd.grad(loss, scores)
    finally:
        for hook in hooks:
            hook.remove()
        model.eval()
    return (torch.stack([w.float().mean(dim=0) for w in weights]).cpu(),
            torch.stack([g.float().abs().mean(dim=0) for g in gradients]).cpu())


def describe_score_gradients(weights: torch.Tensor, gradients: torch.Tensor) -> str:
    """score_gradients' numbers, a line per block: each branch's mean a and mean |dLoss/ds|."""
    lines = []
    for block in range(weights.shape[0]):
        parts = ", ".join(f"branch {b}: a {weights[block, b]:+.3f}, |dL/ds| {gradients[block, b]:.1e}"
                          for b in range(weights.shape[1]))
        ratio = gradients[block].max() / gradients[block].min()
        lines.append(f"block {block}: {parts}; largest / smallest gradient: {ratio:.1f}x")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Whether a branch's small gradient makes a small step: Ranger normalizes it
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class ScoreUpdates:
    """How each branch's row of a block's linear layer (its weights and bias, which compute the
    branch's score s) moved over the first steps of training.

    A branch's gradient can be a hundredth of another's (`score_gradients`) and
    still move its row as far: Ranger divides each weight's step by the root of
    its own mean squared gradient, as Adam does. Only where a gradient is
    near Ranger's eps (1e-5), or in the first few plain momentum steps, does
    its size carry through to the step.
    """

    gradient: torch.Tensor   # (blocks, branches): RMS of the row's gradient, averaged over the steps
    update: torch.Tensor     # (blocks, branches): RMS of the row's total change over the steps
    steps: int


class _FirstBatches:
    """The first `count` batches of a loader, shaped as train_epoch expects (len, device, iteration)."""

    def __init__(self, loader: CifarLoader, count: int):
        self.loader, self.count, self.device = loader, min(count, len(loader)), loader.device

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return islice(iter(self.loader), self.count)


def score_updates(config: TrainConfig, train: Split, steps: int | None = None, num_classes: int = 10,
                  device: torch.device | str = "cpu") -> ScoreUpdates:
    """Train a run's untrained model (`initial_model`) for its first `steps` steps (default: one
    epoch of `train`), with the run's optimizer, schedule and batches, and measure per block and
    branch the RMS gradient and the RMS change of the branch's row of the linear layer.

    The loop is `train_epoch`'s, in fp32 (the steps' sizes, not the run's speed, are the question),
    with dropout drawn from a generator seeded by rand_seed. Needs a mixing with a linear layer (every one but "equal").
    """
    model = initial_model(config, num_classes).to(device)
    blocks = model.backbone.blocks
    if any(block.linear is None for block in blocks):
        raise ConfigError(f"mixing={config.mixing!r} has no linear layer, so no branch scores to move: "
                          "measure a mixing that learns its weights (seed, softmax or sigmoid)")
    optimizer = build_optimizer(model, config)
    loader = CifarLoader(train, config.batch_size, train=True, device=device, seed=config.rand_seed)
    loader.set_epoch(1)  # the run's first epoch (fit counts epochs from 1)
    scheduler = build_scheduler(optimizer, config, len(loader))
    batches = _FirstBatches(loader, steps or len(loader))

    def rows() -> list[torch.Tensor]:
        """Each block's linear layer as (branches, inputs + 1): a row per branch, its bias last."""
        return [torch.cat([block.linear.weight.detach(), block.linear.bias.detach()[:, None]], dim=1).cpu()
                for block in blocks]

    start = [row.clone() for row in rows()]
    gradient_sum = torch.zeros(len(blocks), blocks[0].linear.out_features, dtype=torch.float64)

    def record(group) -> None:
        # After the optimizer's step the gradients are still there (train_epoch clears them before
        # the next backward); Ranger centralizes a copy, so these are the raw gradients.
        for index, block in enumerate(blocks):
            gradient = torch.cat([block.linear.weight.grad, block.linear.bias.grad[:, None]], dim=1)
            gradient_sum[index] += gradient.double().pow(2).mean(dim=1).sqrt().cpu()

    with torch.random.fork_rng(devices=[]):  # dropout's draws: the same on every call, the caller's state kept
        torch.manual_seed(config.rand_seed)
        train_epoch(model, batches, optimizer, scheduler, per_batch=config.scheduler_step == "batch",
                    precision="fp32", channels_last=False, on_step=record)
    change = torch.stack([(end - begin).double().pow(2).mean(dim=1).sqrt() for begin, end in zip(start, rows())])
    return ScoreUpdates(gradient_sum / len(batches), change, len(batches))


def describe_score_updates(updates: ScoreUpdates) -> str:
    """A line per block: each branch's RMS gradient and RMS change, and the largest / smallest of each.

    Where Ranger's step followed the gradient's size, the two ratios would be alike; the
    nearer the update ratio is to 1 while the gradient ratio is large, the more the
    optimizer's normalization has taken the gradient's scale out of the step.
    """
    lines = []
    for block in range(updates.gradient.shape[0]):
        gradient, update = updates.gradient[block], updates.update[block]
        parts = ", ".join(f"branch {b}: gradient {gradient[b]:.1e}, change {update[b]:.1e}"
                          for b in range(len(gradient)))
        lines.append(f"block {block}: {parts}; largest / smallest: gradient {gradient.max() / gradient.min():.1f}x, "
                     f"change {update.max() / update.min():.1f}x")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The ablation: test accuracy with the mixing fixed, or a branch removed
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class AblationRow:
    change: str               # what was done to the model, in words
    accuracy: float           # test accuracy (%) with that change
    baseline: float           # test accuracy (%) of the model as trained
    difference: Interval    # accuracy - baseline in points, with its 95% paired-bootstrap interval


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

    One evaluation over `split` per change: (1 + blocks + 1 + blocks x branches)
    in all. Each change is compared with the model as trained on the same
    images, with a 95% paired-bootstrap interval.
    """
    labels = split.labels.cpu()
    right = {}
    for change, overrides in ablation_changes(mean_weights).items():
        with mixing_overridden(model, overrides):
            right[change] = infer(model, split, device, precision, channels_last).argmax(dim=1) == labels
    trained = right["as trained"]
    baseline = 100 * trained.double().mean().item()
    return [AblationRow(change, 100 * got.double().mean().item(), baseline,
                        paired_bootstrap(got, trained))
            for change, got in right.items()]


def verdict(difference: Interval) -> str:
    """A difference in words: a loss or a gain only when its interval excludes 0."""
    if not difference.is_real:
        return "tie"
    return "loss" if difference.difference < 0 else "gain"


def format_ablation(rows: list[AblationRow]) -> str:
    lines = [f"{'change':<30}{'test accuracy':>14}{'difference and 95% interval':>36}"]
    for row in rows:
        if row.change == "as trained":
            lines.append(f"{row.change:<30}{row.accuracy:>13.2f}%")
        else:
            lines.append(f"{row.change:<30}{row.accuracy:>13.2f}%{str(row.difference):>30}  "
                         f"{verdict(row.difference)}")
    return "\n".join(lines)


def branch_use_rows(weights: torch.Tensor, rows: list[AblationRow]) -> list[dict]:
    """Per block and branch: its share of mean |a|, its mean a, and what removing it costs."""
    by_change = {row.change: row for row in rows}
    shares, means = shares_of(weights), weights.mean(dim=1)
    return [{"block": block, "branch": branch, "share": float(shares[block, branch]),
             "mean": float(means[block, branch]),
             "removed": by_change[f"block {block}: without branch {branch}"].difference}
            for block in range(weights.shape[0]) for branch in range(weights.shape[2])]


def branch_use_table(weights: torch.Tensor, rows: list[AblationRow]) -> str:
    """branch_use_rows as a Markdown table (notebook 04 shows it as such)."""
    lines = ["| block | branch | share of mean abs(a) | mean a | removing it: difference [95% interval] | |",
             "| ---: | ---: | ---: | ---: | ---: | --- |"]
    for use in branch_use_rows(weights, rows):
        lines.append(f"| {use['block']} | {use['branch']} | {100 * use['share']:.1f}% | {use['mean']:+.3f} | "
                     f"{use['removed']} | {verdict(use['removed'])} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# What the numbers say, in words (notebook 04's closing note)
# --------------------------------------------------------------------------

def describe_ablation(rows: list[AblationRow], weights: torch.Tensor) -> str:
    """What the ablation found, each difference with its interval: fixed mixing, and each branch removed."""
    by_change = {row.change: row for row in rows}
    blocks = weights.shape[0]
    every = by_change["every block: mean weights"]
    lines = [f"as trained: {every.baseline:.2f}% test accuracy",
             f"every block mixing with fixed weights (their mean): {every.difference} "
             f"({verdict(every.difference)}); one block at a time: "
             + "; ".join(f"block {block} {by_change[f'block {block}: mean weights'].difference} "
                         f"({verdict(by_change[f'block {block}: mean weights'].difference)})"
                         for block in range(blocks))]
    uses = branch_use_rows(weights, rows)
    for kind, words in (("loss", "removing it costs accuracy (interval below 0)"),
                        ("tie", "removing it makes no measurable difference (interval includes 0)"),
                        ("gain", "removing it helps (interval above 0)")):
        named = [f"block {u['block']} branch {u['branch']} (share {100 * u['share']:.0f}%)"
                 for u in uses if verdict(u["removed"]) == kind]
        if named:
            lines.append(f"{words}: {', '.join(named)}")
    needed = [block for block in range(blocks)
              if sum(verdict(u["removed"]) == "loss" for u in uses if u["block"] == block) > 1]
    lines.append("blocks where removing more than one branch costs accuracy: "
                 + (", ".join(map(str, needed)) if needed else "none"))
    costly = [block for block in range(blocks)
              if any(verdict(u["removed"]) == "loss" for u in uses if u["block"] == block)]
    shares = shares_of(weights)
    led = [block for block in costly if leading_branch(shares[block]) is not None]
    costliest = {block: costliest_removal([u for u in uses if u["block"] == block]) for block in led}
    clear = [block for block in led if costliest[block] is not None]
    same = [block for block in clear if leading_branch(shares[block]) == costliest[block]]
    if not costly:
        lines.append("no removal costs accuracy beyond the noise: the ablation cannot tell the branches apart")
    elif led:
        tied = [block for block in led if costliest[block] is None]
        lines.append(f"the branch with the largest share is the costliest to remove in {len(same)} of the "
                     f"{len(clear)} blocks whose costliest removal stands out from the next one"
                     + (f"; in block{'s' * (len(tied) > 1)} {', '.join(map(str, tied))} the two costliest "
                        "removals tie (their intervals overlap)" if tied else ""))
    return "\n".join(lines)


def costliest_removal(uses: list[dict]) -> int | None:
    """The branch whose removal costs a block the most, if its interval clears the next one's; else None."""
    ranked = sorted(uses, key=lambda u: u["removed"].difference)
    if len(ranked) > 1 and ranked[0]["removed"].high >= ranked[1]["removed"].low:
        return None  # the two costliest overlap: a tie
    return ranked[0]["branch"]
