"""How fast the convolutions of `fit`'s step run, against this CPU's own matrix-product rate.

    python benchmarks/conv_rate.py [--widths 8 32] [--threads N] [--steps 3]

A CPU step is only as fast as its convolutions allow: if they already run at
the CPU's matmul rate, no change to the rest of the step can take it below
their time (Amdahl's law). oneDNN, which runs PyTorch's CPU convolutions,
times every call it makes when its verbose mode is on; this script runs
`--steps` training steps of the default path (after a warm-up epoch) with it
on, sums the calls by kind and shape, and prints each kind's milliseconds a
step and GFLOP/s (2 x the multiply-adds its shape implies), beside a large
fp32 matmul's rate measured in the same process. Results go to
benchmarks/results/conv_rate_cpu_<threads>t.json.
"""
import argparse
import collections
import os
import re
import tempfile

import torch

from common import machine, matmul_rate, training_step, write_results

# oneDNN's problem descriptor, e.g. mb128_ic32oc32_ih16oh16kh3sh1dh0ph1_iw16ow16kw3sw1dw0pw1
SHAPE = re.compile(r"mb(\d+)_ic(\d+)oc(\d+)_ih\d+oh(\d+)kh(\d+)\S*_iw\d+ow(\d+)kw(\d+)")


def verbose_lines(run) -> list[str]:
    """What oneDNN prints (to the process's stdout, from C++) while `run()` runs."""
    with tempfile.TemporaryFile(mode="w+") as captured:
        saved = os.dup(1)
        os.dup2(captured.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                run()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        captured.seek(0)
        return captured.read().splitlines()


def convolution_calls(lines: list[str]) -> dict[tuple[str, str], dict]:
    """(direction, shape) -> calls, milliseconds and FLOPs, from oneDNN's "exec" lines."""
    calls = collections.defaultdict(lambda: {"calls": 0, "ms": 0.0, "flop": 0.0})
    for line in lines:
        fields = line.split(",")
        if len(fields) < 10 or fields[3] != "exec" or fields[5] != "convolution":
            continue
        shape = SHAPE.search(fields[-2])
        batch, cin, cout, oh, kh, ow, kw = map(int, shape.groups())
        row = calls[(fields[7], fields[-2])]
        row["calls"] += 1
        row["ms"] += float(fields[-1])
        row["flop"] += 2.0 * batch * cin * cout * oh * ow * kh * kw
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    fp32_rate = matmul_rate(device, torch.float32)
    results = {"machine": machine(device), "load_average": os.getloadavg(), "steps": args.steps,
               "matmul_gflops_fp32": fp32_rate / 1e9, "widths": {}}
    for width in args.widths:
        training = training_step(width, 128, args.steps, device, compile=False)
        training["epoch"]()  # warm-up: oneDNN picks and builds its kernels
        calls = convolution_calls(verbose_lines(training["epoch"]))
        total_ms = sum(row["ms"] for row in calls.values()) / args.steps
        total_flop = sum(row["flop"] for row in calls.values()) / args.steps
        results["widths"][width] = {"ms_per_step": total_ms, "gflop_per_step": total_flop / 1e9,
                                    "gflops": total_flop / total_ms / 1e6,
                                    "calls": {f"{d} {s}": row for (d, s), row in calls.items()}}
        print(f"\nwidth {width}, {torch.get_num_threads()} thread(s): convolutions {total_ms:.1f} ms a step, "
              f"{total_flop / 1e9:.2f} GFLOP, {total_flop / total_ms / 1e6:.0f} GFLOP/s = "
              f"{total_flop / total_ms * 1e3 / fp32_rate:.0%} of this CPU's fp32 matmul "
              f"({fp32_rate / 1e9:.0f} GFLOP/s)")
        for (direction, shape), row in sorted(calls.items(), key=lambda kv: -kv[1]["ms"]):
            print(f"  {direction:<17} {shape[:44]:<44} {row['ms'] / args.steps:6.2f} ms  "
                  f"{row['flop'] / row['ms'] / 1e6:5.0f} GFLOP/s")
    write_results(f"conv_rate_cpu_{torch.get_num_threads()}t", results)


if __name__ == "__main__":
    main()
