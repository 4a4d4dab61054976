"""Where a training step's time goes, by operator: torch.profiler over `fit`'s own step.

    python benchmarks/profile_step.py [--widths 8 16 32] [--steps 12] [--threads N] [--name NAME]
                                      [--precision auto] [--channels-last auto] [--compile auto]

For each width it builds what `fit` builds (build_training with the config's
resolved "auto" choices, or the ones given), runs `train_epoch` on random
images for a warm-up epoch (and compilation, if chosen), then profiles
`--steps` steps. Every operator's own time (self CPU time, not counting the
operators it calls) is summed by name and by group (convolution forward,
batch norm backward, ...), and each is printed as a share of the whole
profile. On a shared machine read the shares, not the times, and profile
one thread: with two threads on two busy cores, OpenMP's threads spin at
every operator's barrier and small operators look far larger than they are.
Results go to benchmarks/results/profile_step_<device>[_<name>].json.
"""
import argparse
import collections
import os

import torch
import torch._inductor.config
from torch.profiler import ProfilerActivity, profile

from common import machine, training_step, write_results
from nbhelpers.runtime import pick_device

# Operator name (without "aten::") -> group, first match wins; the rest is "other".
GROUPS = [
    ("convolution backward", ("convolution_backward", "mkldnn_convolution_backward",
                              "_convolution_backward")),
    ("convolution forward", ("mkldnn_convolution", "_convolution", "convolution", "conv2d",
                             "_nnpack_spatial_convolution", "slow_conv")),
    ("batch norm backward", ("native_batch_norm_backward", "batch_norm_backward")),
    ("batch norm forward", ("native_batch_norm", "_native_batch_norm_legit", "batch_norm",
                            "_batch_norm_impl_index", "_batch_norm_with_update")),
    ("max-pooling backward", ("max_pool2d_with_indices_backward",)),
    ("max-pooling forward", ("max_pool2d_with_indices", "max_pool2d")),
    ("LeakyReLU", ("leaky_relu", "leaky_relu_", "leaky_relu_backward")),
    ("linear layers (matmul)", ("addmm", "mm", "bmm", "linear", "matmul")),
    ("copies, casts, fills", ("copy_", "_to_copy", "to", "fill_", "zero_", "zeros", "zeros_like",
                              "empty", "empty_like", "empty_strided", "clone", "contiguous")),
    ("products and sums (mixing, dropout, loss)", ("mul", "mul_", "add", "add_", "addcmul", "addcmul_",
                                                   "sum", "mean", "div", "div_", "sub", "sub_")),
    ("data (crop, flip, gather)", ("index_select", "gather", "where", "flip", "randperm")),
    ("compiled (inductor) kernels", ("cpp_fused", "Torch-Compiled Region", "CompiledFunction",
                                     "graph_", "kernel_cpp", "inductor")),
]


def group_of(name: str) -> str:
    bare = name.removeprefix("aten::")
    for group, names in GROUPS:
        if any(bare == n or (n in ("cpp_fused", "graph_", "kernel_cpp", "inductor") and n in bare)
               or (n[0].isupper() and bare.startswith(n)) for n in names):
            return group
    return "other"


def phase_of(event) -> str:
    """forward, backward or optimizer: which part of the step an operator ran in."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return "optimizer"
        if parent.name.startswith(("autograd::engine::evaluate_function", "CompiledFunctionBackward")):
            return "backward"
        parent = parent.cpu_parent
    return "forward and data"


def profile_width(width: int, batch: int, steps: int, device: torch.device, how: dict) -> dict:
    step = training_step(width, batch, steps, device, **how)
    step["epoch"]()  # warm-up: compilation, oneDNN's kernel choices, the allocator's growth
    step["epoch"]()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step["epoch"]()
    by_name, by_group = collections.Counter(), collections.Counter()
    by_phase = collections.Counter()
    for event in prof.events():
        own = event.self_cpu_time_total
        if own <= 0:
            continue
        by_name[event.name] += own
        by_group[group_of(event.name)] += own
        by_phase[phase_of(event)] += own
    total = sum(by_name.values())
    share = lambda counter: {k: v / total for k, v in counter.most_common()}
    return {"width": width, "resolved": step["chosen"], "profiled_ms_per_step": total / steps / 1e3,
            "groups": share(by_group), "phases": share(by_phase),
            "operators": dict(list(share(by_name).items())[:25])}


def print_profile(result: dict) -> None:
    print(f"\nwidth {result['width']}: {result['resolved']}, "
          f"{result['profiled_ms_per_step']:.1f} ms/step under the profiler")
    for title in ("groups", "phases"):
        print("  " + "  ".join(f"{k} {v:.0%}" for k, v in result[title].items() if v >= 0.005))
    for name, value in list(result["operators"].items())[:12]:
        print(f"    {value:6.1%}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12, help="profiled steps per width")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--channels-last", default="auto")
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--name", default="", help="suffix of the results file, e.g. 'before'")
    args = parser.parse_args()
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Name the compiled C++ kernels in the profile instead of one opaque compiled region.
    torch._inductor.config.cpp.enable_kernel_profile = True
    how = dict(precision=args.precision, channels_last=args.channels_last, compile=args.compile)
    results = {"machine": machine(device), "load_average": os.getloadavg(), "batch": args.batch,
               "steps": args.steps, "asked": how, "widths": []}
    for width in args.widths:
        result = profile_width(width, args.batch, args.steps, device, how)
        print_profile(result)
        results["widths"].append(result)
    results["load_average_after"] = os.getloadavg()
    print(f"\nload average before {results['load_average'][0]:.2f}, after "
          f"{results['load_average_after'][0]:.2f} ({os.cpu_count()} CPUs)")
    write_results(f"profile_step_{device.type}" + (f"_{args.name}" if args.name else ""), results)


if __name__ == "__main__":
    main()
