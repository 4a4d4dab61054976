"""Ways to take down a CPU step's batch-norm and pooling share, measured against today's default.

    python benchmarks/cpu_candidates.py [--widths 8 16 32] [--candidates fused_tail compiled_tail ...]
                                        [--threads 1] [--repeats 5]
                                        [--precision bf16|fp32|auto] [--channels-last true|false|auto]

A branch of the seed's block is conv3x3 -> BatchNorm -> MaxPool 2x2 -> LeakyReLU.
On a CPU the three layers after the convolution are about half of a training
step (benchmarks/profile_step.py): PyTorch's channels-last batch-norm and
pooling kernels vectorize over the channels, and a narrow model has 8 or 16
of them. The candidates, each exact (same forward, same gradient up to
rounding; the first maximum of a window takes its gradient, as in max_pool2d):

- fused_tail: pool first, normalize after. The batch statistics are the
  batch's (torch.batch_norm_update_stats, which also updates the running
  ones); max-pooling picks the same element before and after the per-channel
  affine map when its scale is positive (the minimum where it is negative),
  so the affine map and LeakyReLU run on a 4x smaller tensor. The backward is
  written out: the statistics' share of the gradient is an affine map of the
  conv output, the pooled share goes to each window's maximum.
- compiled_tail: the same, its pieces compiled by torch.compile (inductor's
  C++ kernels), laid out so that each kernel vectorizes at 8 channels.
- compiled_model: torch.compile over the whole model (today's "compile=True").
- wide_conv: the three branches of a block as one convolution of 3x the
  channels, then one batch norm, one pooling and one LeakyReLU over all of
  them, and the per-image mixing as one batched product (bmm) instead of a
  product and a sum per branch (until 2026-12-07 it mixed per branch: the
  Xeon's table in RESULTS.md is that one).

Each runs `fit`'s training step (train_epoch) at bf16 + channels_last, or at
the precision and layout given (`--precision fp32 --channels-last false`, or
"auto" for what fit picks on this CPU); all are
timed in alternation in one process, median of the repeats, as CPU seconds of
this process (with --threads 1 another helper's load adds little to them) and
as wall seconds. Results go to benchmarks/results/cpu_candidates_<cpu>.json.
"""
import argparse
import os
import statistics
import time
import types

import torch
import torch.nn.functional as F

from common import machine, training_step, write_results
from nbhelpers import model as model_module

SLOPE = 0.01  # LeakyReLU's default negative slope, as in the seed


# --------------------------------------------------------------------------
# Pool first, normalize after: the forward and backward of BN -> pool -> LeakyReLU
# --------------------------------------------------------------------------

def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)  # a view; contiguous for a channels_last tensor


def windows(t: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) -> (N, H/2, 2, W/2, 2, C): every 2x2 window's four values (a view)."""
    return t.unflatten(1, (t.shape[1] // 2, 2)).unflatten(3, (t.shape[2] // 2, 2))


def pool_max(z: torch.Tensor):
    """Each window's maximum and its place 0..3 in max_pool2d's scan order (the first on ties)."""
    v = windows(nhwc(z))
    a, b, c, d = v[:, :, 0, :, 0], v[:, :, 0, :, 1], v[:, :, 1, :, 0], v[:, :, 1, :, 1]
    top = torch.maximum(torch.maximum(a, b), torch.maximum(c, d))
    place = torch.where(a == top, 0, torch.where(b == top, 1, torch.where(c == top, 2, 3)))
    return top.permute(0, 3, 1, 2), place.to(torch.uint8).permute(0, 3, 1, 2)


def pool_min(z: torch.Tensor):
    low, place = pool_max(-z)
    return -low, place


def affine_leaky(pooled, scale, shift):
    u = pooled.float() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    return F.leaky_relu(u, SLOPE).to(pooled.dtype)


def pooled_grads(grad_out, out, pooled, mean, invstd, scale):
    """The gradient at the pooled positions (times the BN scale), and gamma's and beta's gradients."""
    g = grad_out.float()
    g = torch.where(out > 0, g, g * SLOPE)
    xhat = (pooled.float() - mean.view(1, -1, 1, 1)) * invstd.view(1, -1, 1, 1)
    return (g * scale.view(1, -1, 1, 1)).to(grad_out.dtype), g.sum((0, 2, 3)), (g * xhat).sum((0, 2, 3))


def pair_up(g, place):
    """(N, C, h, w) -> (N, h, w, 2, C): each value twice, for both columns of its window.

    With C = 8 channels a kernel that vectorizes over them fills half a vector;
    over (column, channel) pairs it fills one.
    """
    n, c, h, w = g.shape
    return (nhwc(g).unsqueeze(3).expand(n, h, w, 2, c).contiguous(),
            nhwc(place).unsqueeze(3).expand(n, h, w, 2, c).contiguous())


def conv_output_grad(z, place2, g2, columns, a2, b2):
    """dL/dz = a * z + b (the statistics' share) + the pooled gradient at each window's maximum."""
    n, c, height, width = z.shape
    h, w = height // 2, width // 2
    z5 = nhwc(z).reshape(n, h, 2, w, 2 * c).float()
    rows = torch.arange(2, device=z.device).view(1, 1, 2, 1, 1) * 2
    hit = place2.view(n, h, 1, w, 2 * c) == rows + columns.view(1, 1, 1, 1, 2 * c)
    grad = a2 * z5 + b2 + torch.where(hit, g2.view(n, h, 1, w, 2 * c).float(), 0.0)
    return grad.to(z.dtype).reshape(n, height, width, c).permute(0, 3, 1, 2)


class Kernels:
    """The pieces above, plain or compiled (one compiled function each, static shapes)."""

    def __init__(self, compiled: bool):
        # One compiled version per block shape and width: more than dynamo's default of
        # 8 per function, after which it would run the pieces uncompiled.
        torch._dynamo.config.recompile_limit = 64
        pieces = (pool_max, pool_min, affine_leaky, pooled_grads, pair_up, conv_output_grad)
        for piece in pieces:
            setattr(self, piece.__name__, torch.compile(piece, dynamic=False) if compiled else piece)


class BatchNormPoolLeaky(torch.autograd.Function):
    """leaky_relu(max_pool2d(batch_norm(z), 2)) with the batch's statistics `mean`, `var` given."""

    @staticmethod
    def forward(ctx, z, gamma, beta, mean, var, eps, training, kernels):
        invstd = torch.rsqrt(var + eps)
        scale = gamma * invstd
        shift = beta - mean * scale
        if bool((gamma < 0).any()):  # a negative scale reverses the order: its maximum is z's minimum
            top, top_place = kernels.pool_max(z)
            low, low_place = kernels.pool_min(z)
            negative = (gamma < 0).view(1, -1, 1, 1)
            pooled, place = torch.where(negative, low, top), torch.where(negative, low_place, top_place)
        else:
            pooled, place = kernels.pool_max(z)
        out = kernels.affine_leaky(pooled, scale, shift)
        ctx.save_for_backward(z, pooled, place, out, mean, invstd, scale)
        ctx.training, ctx.kernels = training, kernels
        return out

    @staticmethod
    def backward(ctx, grad_out):
        z, pooled, place, out, mean, invstd, scale = ctx.saved_tensors
        kernels = ctx.kernels
        g, grad_beta, grad_gamma = kernels.pooled_grads(grad_out, out, pooled, mean, invstd, scale)
        if ctx.training:  # the batch statistics depend on every element of z
            count = z.numel() / z.shape[1]
            a = -scale * invstd * grad_gamma / count
            b = -scale * grad_beta / count - a * mean
        else:
            a = b = torch.zeros_like(scale)
        channels = z.shape[1]
        g2, place2 = kernels.pair_up(g, place)
        columns = torch.arange(2, dtype=torch.uint8, device=z.device).repeat_interleave(channels)
        grad = kernels.conv_output_grad(z, place2, g2, columns, a.repeat(2), b.repeat(2))
        return grad, grad_gamma, grad_beta, None, None, None, None, None


def fused_tail(norm: torch.nn.BatchNorm2d, z: torch.Tensor, kernels: Kernels) -> torch.Tensor:
    """BatchNorm2d `norm` (training or eval, as nn.BatchNorm2d would), then pool, then LeakyReLU."""
    if norm.training:
        with torch.no_grad():  # the statistics' share of the gradient is BatchNormPoolLeaky's backward
            mean, var = torch.batch_norm_update_stats(z, norm.running_mean, norm.running_var,
                                                      norm.momentum)
        norm.num_batches_tracked.add_(1)
    else:
        mean, var = norm.running_mean, norm.running_var
    return BatchNormPoolLeaky.apply(z, norm.weight, norm.bias, mean, var, norm.eps, norm.training,
                                    kernels)


# --------------------------------------------------------------------------
# The candidates, as changes to how the model's blocks run
# --------------------------------------------------------------------------

def with_fused_tails(model: torch.nn.Module, kernels: Kernels) -> None:
    for block in model.backbone.blocks:
        for branch in block.convs:
            branch.forward = types.MethodType(
                lambda self, x: fused_tail(self[1], self[0](x), kernels), branch)


def wide_block_forward(block, x):
    """The block's branches as one convolution of 3x the channels, one batch norm, one pooling."""
    convs, norms = [b[0] for b in block.convs], [b[1] for b in block.convs]
    z = F.conv2d(x, torch.cat([c.weight for c in convs]), torch.cat([c.bias for c in convs]), padding=1)
    running_mean = torch.cat([n.running_mean for n in norms])
    running_var = torch.cat([n.running_var for n in norms])
    y = F.batch_norm(z, running_mean, running_var, torch.cat([n.weight for n in norms]),
                     torch.cat([n.bias for n in norms]), block.training, norms[0].momentum, norms[0].eps)
    pooled = F.leaky_relu_(F.max_pool2d(y, 2), SLOPE)
    width = convs[0].out_channels
    with torch.no_grad():
        for j, norm in enumerate(norms):
            norm.running_mean.copy_(running_mean[j * width:(j + 1) * width])
            norm.running_var.copy_(running_var[j * width:(j + 1) * width])
            norm.num_batches_tracked.add_(int(block.training))
    # mixed[n] = sum over branches j of weight[n, j] * pooled[n, branch j]: one (1 x k) @ (k x CHW) per image
    batch, _, height, breadth = pooled.shape
    mixed = torch.bmm(block.branch_weights(x).unsqueeze(1), pooled.reshape(batch, len(convs), -1))
    return mixed.view(batch, width, height, breadth)


def with_wide_convs(model: torch.nn.Module) -> None:
    for block in model.backbone.blocks:
        block.forward = types.MethodType(wide_block_forward, block)


CANDIDATES = {
    "fused_tail": lambda model: with_fused_tails(model, Kernels(compiled=False)),
    "compiled_tail": lambda model: with_fused_tails(model, Kernels(compiled=True)),
    "wide_conv": with_wide_convs,
    "compiled_model": None,  # today's compile=True: torch.compile over the whole model
}


def candidate_runner(name: str, width: int, batch: int, steps: int, precision="bf16", channels_last=True):
    """A function running `steps` of fit's training step with candidate `name` (or today's default)."""
    how = dict(precision=precision, channels_last=channels_last, compile=name == "compiled_model")
    original = model_module.Model.__init__
    change = CANDIDATES.get(name)
    if change is not None:  # applied to the model build_training builds, before its optimizer
        def build_then_change(self, *args, **kwargs):
            original(self, *args, **kwargs)
            change(self)
        model_module.Model.__init__ = build_then_change
    try:
        return training_step(width, batch, steps, torch.device("cpu"), **how)["epoch"]
    finally:
        model_module.Model.__init__ = original


def check_exact(name: str, width: int = 8) -> float:
    """Largest relative difference of the loss, gradients and BN statistics from the plain model (fp32)."""
    torch.manual_seed(0)
    plain = model_module.Model(backbone_out_channels=width, hidden_size=16).to(memory_format=torch.channels_last)
    changed = model_module.Model(backbone_out_channels=width, hidden_size=16).to(memory_format=torch.channels_last)
    changed.load_state_dict(plain.state_dict())
    for norm in [m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d)][:3]:
        norm.weight.data.uniform_(-1, 1)  # some negative scales: their windows pool the minimum
    changed.load_state_dict(plain.state_dict())
    for dropout in [m for model in (plain, changed) for m in model.modules() if isinstance(m, torch.nn.Dropout)]:
        dropout.p = 0.0  # compiled code draws its own random numbers: compare without dropout
    if CANDIDATES[name] is not None:
        CANDIDATES[name](changed)
    else:
        changed = torch.compile(changed, dynamic=False)
    images = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (16,))
    worst = 0.0
    for model in (plain, changed):
        F.cross_entropy(model(images), labels).backward()
    for (key, a), b in zip(plain.state_dict().items(), changed.state_dict().values()):
        worst = max(worst, ((a.float() - b.float()).abs().max() / a.float().abs().max().clamp(min=1e-6)).item())
    # A conv bias before training-mode batch norm has no gradient (BN subtracts the mean), so
    # both compute rounding noise there: gradients are compared at the scale of the largest one.
    scale = max(p.grad.abs().max().item() for p in plain.parameters())
    for a, b in zip(plain.parameters(), changed.parameters()):
        worst = max(worst, (a.grad - b.grad).abs().max().item() / scale)
    return worst


def compare_at(width: int, names: list[str], batch: int, steps: int, repeats: int, **how) -> dict:
    runs, first = {}, {}
    for name in names:
        runs[name] = candidate_runner(name, width, batch, steps, **how)
        start = time.perf_counter()
        runs[name]()  # compilation, if any, and the allocator's growth
        first[name] = time.perf_counter() - start
    cpu, wall = {n: [] for n in names}, {n: [] for n in names}
    for _ in range(repeats):  # in alternation: a slow phase of the machine hits every candidate
        for name, run in runs.items():
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            run()
            cpu[name].append((time.process_time() - start_cpu) / steps)
            wall[name].append((time.perf_counter() - start_wall) / steps)
    base_cpu, base_wall = statistics.median(cpu["default"]), statistics.median(wall["default"])
    return {name: {"cpu_ms_per_step": 1e3 * statistics.median(cpu[name]),
                   "wall_ms_per_step": 1e3 * statistics.median(wall[name]),
                   "speedup_cpu": base_cpu / statistics.median(cpu[name]),
                   "speedup_wall": base_wall / statistics.median(wall[name]),
                   "first_epoch_s": first[name]} for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="bf16", help="bf16, fp32 or auto (what fit picks here)")
    parser.add_argument("--channels-last", default="true", help="true, false or auto")
    parser.add_argument("--name", default="", help="suffix of the results file, e.g. 'epyc_fp32'")
    args = parser.parse_args()
    how = dict(precision=args.precision,
               channels_last={"true": True, "false": False}.get(args.channels_last, args.channels_last))
    torch.set_num_threads(args.threads)
    names = ["default"] + args.candidates
    for name in args.candidates:
        print(f"{name}: largest relative difference from the plain model (fp32): {check_exact(name):.1e}")
    results = {"machine": machine(torch.device("cpu")), "load_average": os.getloadavg(),
               "batch": args.batch, "steps": args.steps, "repeats": args.repeats, "asked": how, "widths": {}}
    for width in args.widths:
        results["widths"][width] = rows = compare_at(width, names, args.batch, args.steps, args.repeats, **how)
        print(f"\nwidth {width}, {args.threads} thread(s), {how}, load {os.getloadavg()[0]:.1f}")
        for name, row in rows.items():
            print(f"  {name:<15} {row['cpu_ms_per_step']:7.1f} ms CPU/step ({row['speedup_cpu']:.2f}x)  "
                  f"{row['wall_ms_per_step']:7.1f} ms wall/step ({row['speedup_wall']:.2f}x)  "
                  f"first epoch {row['first_epoch_s']:.0f} s")
    results["load_average_after"] = os.getloadavg()
    write_results("cpu_candidates_cpu_w" + "_".join(map(str, args.widths))
                  + (f"_{args.name}" if args.name else ""), results)


if __name__ == "__main__":
    main()
