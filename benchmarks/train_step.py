"""Seconds per training step and per epoch: the seed's formulation vs nbhelpers' default path.

    python benchmarks/train_step.py [--device cpu|cuda] [--widths N ...] [--steps N] [--threads N]

(a) the seed as written: its model (dead branch, torch.jit.fork), fp32,
    deterministic cuDNN, the per-parameter Ranger, torchvision's DataLoader
    with PIL transforms and 2 workers, and .item() after every step;
(b) nbhelpers as `fit` runs it: batches cut on the device, the model with
    bf16 autocast, channels_last and torch.compile where the device is CUDA
    (on a CPU: channels_last, and bf16 where the CPU has it natively), Ranger
    on flat buffers, sums kept on the device;
(c) on a CPU also nbhelpers' former CPU default (fp32, NCHW), the default as
    it was before issue 27 (eager, every batch norm in channels_last, also
    where two threads share its cache lines: nbhelpers.model.batch_norm),
    where "auto" compiles (a narrow fp32 model over the seed's 23,460 steps)
    the same default eager, and the precision "auto" did not choose
    (--skip-other-precision leaves it out), to show what each choice gains.
The rows of (b) and (c) are timed in alternation in one process (a slow phase
of a shared machine hits all of them), and each row's figure is the median of
the repeats. It prints the ratios, the TFLOP/s of each, and the fraction of
this device's own matmul rate measured in the same run (bf16 and fp32), the
evaluation of the 10,000 test images, and what one run of the `long` size
(the seed's 23,460 steps and 60 evaluations) would take at that speed. It
measures nbhelpers' overhead outside forward, backward and the optimizer
(data, metrics, logging). On CUDA it also counts host-device synchronisations
inside the training loop (torch.cuda.set_sync_debug_mode). Results go to
benchmarks/results/.
"""
import argparse
import contextlib
import os
import time
import warnings

import torch
import torch.nn.functional as F

from common import (cifar10, compare, machine, matmul_rate, seed_train_loader, synchronize,
                    training_config, training_step, write_results)
from nbhelpers import model as model_module
from nbhelpers.config import build_model, make_config
from nbhelpers.model import count_flops
from nbhelpers.runtime import cpu_has_fast_bf16, pick_device, seed_everything
from nbhelpers.seed_reference import SeedModel, SeedRanger
from nbhelpers.evaluation import evaluate
from nbhelpers.train import build_scheduler, train_epoch


def seed_path(width: int, batch: int, steps: int, device, root, repeats: int) -> float:
    """Seconds per step of the seed's own training loop (its fastest run of `steps` steps)."""
    seed_everything(1002, deterministic=True)
    model = SeedModel(3, 3, width, 3, max(64, width // 2), 10).to(device)
    optimizer = SeedRanger(model.parameters(), lr=1e-3, weight_decay=1e-2)
    loader = seed_train_loader(root, batch)
    scheduler = build_scheduler(optimizer, make_config(), len(loader))
    model.train()
    batches = iter(loader)

    def run_steps(count):
        for _ in range(count):
            inputs, labels = next(batches)
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = F.cross_entropy(outputs, labels)
            loss.backward()
            optimizer.step()
            loss.item()                                   # the seed's train_loss += loss.item()
            outputs.max(1)[1].eq(labels).sum().item()     # and its correct += ...
            scheduler.step()

    run_steps(3)  # warm-up: workers start, cuDNN picks its algorithms
    timings = compare({"seed": lambda: run_steps(steps)}, device, repeats=repeats, warmup=0, statistic=min)
    return timings["seed"] / steps


class ConstantLogits(torch.nn.Module):
    """A stand-in model: the same logits for every image, one tiny parameter."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(1, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(images), -1)


# Before "auto" chose per CPU, a CPU ran in fp32 with NCHW tensors, eager; kept as a row to compare.
OLD_CPU_DEFAULT = dict(precision="fp32", channels_last=False, compile=False)
# Issue 31's size `long`: the seed's 60 epochs of 391 steps (batch 128, all 50,000 images).
LONG_STEPS, LONG_EVALUATIONS = 23_460, 60


@contextlib.contextmanager
def batch_norm_in_its_input_layout():
    """The model as it was before issue 27: every batch norm in its input's layout (channels_last)."""
    saved = model_module.CACHE_LINE_FLOATS
    model_module.CACHE_LINE_FLOATS = 0  # no channel count is below it: nbhelpers.model.batch_norm never switches
    try:
        yield
    finally:
        model_module.CACHE_LINE_FLOATS = saved


# A row named here runs inside its context manager; the others as nbhelpers runs them.
ROW_CONTEXTS = {"bn_channels_last": batch_norm_in_its_input_layout}
# The CPU rows the default's speedup is printed against, and what each is.
BASELINES = {"old_cpu_default": "the old CPU default",
             "bn_channels_last": "the default before issue 27 (eager, batch norm always channels_last)",
             "eager": "the same default eager (not compiled)"}


def nbhelpers_training(width, batch, steps, device, data, context=contextlib.nullcontext, **overrides) -> dict:
    """fit's training loop at `width` on CIFAR-10's first images, and the evaluation of its test set."""
    training = training_step(width, batch, steps, device, data.train, **overrides)
    chosen, step_model = training["chosen"], training["step_model"]
    train = training["epoch"]

    def epoch():
        with context():
            return train()

    def evaluation():
        with context():
            return evaluate(step_model, data.test, device, chosen["precision"], chosen["channels_last"])
    training.update(epoch=epoch, evaluation=evaluation)
    return training


def loop_overhead(training: dict, steps: int, device, repeats: int, clock=time.perf_counter) -> float:
    """Seconds per step of fit's loop itself (batches, metrics, progress), outside the model's work.

    Measured directly: the same train_epoch with a model and optimizer that cost
    next to nothing. (Timing the real loop against a bare one instead drowns a
    1% effect in the few-percent noise of a shared CPU.) Noise only adds time,
    so the fastest epoch counts.
    """
    stand_in = ConstantLogits().to(device)
    stand_in_optimizer = torch.optim.SGD(stand_in.parameters(), lr=0.0)
    stand_in_scheduler = build_scheduler(stand_in_optimizer, training["config"], steps)
    timings = compare({"loop": lambda: train_epoch(stand_in, training["loader"], stand_in_optimizer,
                                                   stand_in_scheduler, **training["options"])},
                      device, repeats=repeats, warmup=1, statistic=min, clock=clock)
    return timings["loop"] / steps


def host_syncs(training: dict) -> int:
    """Host-device synchronisations in one CUDA training epoch."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            training["epoch"]()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return len([w for w in caught if "synchroniz" in str(w.message).lower()])


def nbhelpers_rows(rows: dict[str, dict], width, batch, steps, device, data, repeats: int,
                   clock=time.perf_counter) -> dict:
    """Each row (a name and its overrides of the "auto" choices): seconds per step and per evaluation.

    All rows are timed in alternation after a warm-up epoch each (compilation,
    oneDNN's and cuDNN's choices, the allocator's growth); each figure is the
    median of the repeats.
    """
    built = {name: nbhelpers_training(width, batch, steps, device, data,
                                      ROW_CONTEXTS.get(name, contextlib.nullcontext), **overrides)
             for name, overrides in rows.items()}
    epochs = compare({name: b["epoch"] for name, b in built.items()}, device, repeats=repeats, warmup=1,
                     clock=clock)
    evaluations = compare({name: b["evaluation"] for name, b in built.items()}, device,
                          repeats=max(3, repeats // 2), warmup=1, clock=clock)
    return {name: {"per_step": epochs[name] / steps, "eval_seconds": evaluations[name],
                   **built[name]["chosen"], "training": built[name]} for name in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--widths", type=int, nargs="+", default=None,
                        help="default: 1024 on CUDA, 32 elsewhere")
    parser.add_argument("--steps", type=int, default=None, help="default: 60 on CUDA, 15 elsewhere")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs of each row (the median counts)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="CPU seconds of this process instead of wall seconds (with --threads 1: "
                             "what other programs on a shared machine take is left out)")
    parser.add_argument("--skip-seed", action="store_true", help="only nbhelpers' path")
    parser.add_argument("--only-default", action="store_true", help="on a CPU, no rows to compare with")
    parser.add_argument("--skip-other-precision", action="store_true",
                        help="on a CPU, no row for the precision 'auto' did not choose (bf16 is slow where "
                             "it is emulated)")
    args = parser.parse_args()
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    steps = args.steps or (60 if cuda else 15)
    data = cifar10()
    steps_per_epoch = -(-len(data.train) // args.batch)
    if args.cpu_time and (cuda or not args.skip_seed):
        parser.error("--cpu-time times CPU work only: use it on a CPU with --skip-seed "
                     "(the seed's DataLoader works in other processes)")
    clock = time.process_time if args.cpu_time else time.perf_counter
    # A CPU without native bf16 emulates it at a few GFLOP/s: its "rate" would take minutes to
    # measure and say nothing (no step runs in bf16 there), so it is left out.
    native = ("bfloat16", "float32") if cuda or cpu_has_fast_bf16() else ("float32",)
    peaks = {dtype: matmul_rate(device, getattr(torch, dtype), clock) for dtype in native}
    for width in args.widths or [1024 if cuda else 32]:
        run_width(width, args, device, data, steps, steps_per_epoch, peaks, clock)


def run_width(width, args, device, data, steps, steps_per_epoch, peaks, clock) -> None:
    cuda = device.type == "cuda"
    with torch.device("meta"):
        flops = count_flops(build_model(training_config(width, args.batch)))
    flop_per_step = flops["train_step"] * args.batch
    results = {"machine": machine(device), "load_average": os.getloadavg(), "width": width,
               "clock": "cpu" if args.cpu_time else "wall",
               "batch": args.batch, "steps": steps, "gflop_per_image_step": flops["train_step"] / 1e9,
               "gflop_per_step": flop_per_step / 1e9,
               "matmul_tflops": peaks["bfloat16"] / 1e12 if "bfloat16" in peaks else None,
               "matmul_dtype": "bfloat16", "matmul_tflops_fp32": peaks["float32"] / 1e12}
    rows = {"default": {}}
    if not cuda and not args.only_default:
        # What "auto" gained on this CPU over the fp32 NCHW default it replaced, and
        # the precision it did not choose (is bf16 faster here, as it assumes or not?).
        chosen = training_config(width, args.batch).resolved(device)
        other = "fp32" if chosen["precision"] == "bf16" else "bf16"
        rows["old_cpu_default"] = OLD_CPU_DEFAULT
        # The default before issue 27's changes: eager, and a narrow batch norm in channels_last
        # on every thread count.
        rows["bn_channels_last"] = dict(compile=False)
        if chosen["compile"]:
            # Where "auto" compiles (a long narrow fp32 run), the same model eager, to show what compiling gains.
            rows["eager"] = dict(compile=False)
        if not args.skip_other_precision:
            rows[f"{other}_nhwc"] = dict(precision=other, channels_last=True)
    timed = nbhelpers_rows(rows, width, args.batch, steps, device, data, args.repeats, clock)
    for name, row in timed.items():
        training = row.pop("training")
        row["tflops"] = flop_per_step / row["per_step"] / 1e12
        row["of_matmul_bf16"] = row["tflops"] * 1e12 / peaks["bfloat16"] if "bfloat16" in peaks else None
        row["of_matmul_fp32"] = row["tflops"] * 1e12 / peaks["float32"]
        row["seconds_per_epoch"] = row["per_step"] * steps_per_epoch + row["eval_seconds"]
        row["long_run_minutes"] = (LONG_STEPS * row["per_step"] + LONG_EVALUATIONS * row["eval_seconds"]) / 60
        if name == "default":
            loop = loop_overhead(training, steps, device, args.repeats, clock)
            row.update(loop_only_per_step=loop, overhead=loop / row["per_step"])
            row[f"syncs_in_epoch_of_{steps}_steps"] = host_syncs(training) if cuda else None
    ours = timed["default"]
    results["nbhelpers"] = ours
    for name in BASELINES:
        if name in timed:
            results[f"nbhelpers_{name}"] = timed[name]
            results[f"speedup_vs_{name}"] = timed[name]["per_step"] / ours["per_step"]
    for name in timed:
        if name.endswith("_nhwc"):
            results[f"nbhelpers_{name}"] = timed[name]
    labels = {"default": f"default ({ours['precision']}, {'NHWC' if ours['channels_last'] else 'NCHW'}"
                         f"{', compiled' if ours['compile'] else ''})",
              "old_cpu_default": "old default (fp32, NCHW)",
              "bn_channels_last": "before (BN always NHWC)",
              "eager": "default, eager"}
    table = [(labels.get(name, f"not chosen ({name.replace('_nhwc', '')}, NHWC)"), row)
             for name, row in timed.items()]
    if not args.skip_seed:
        seed_step = seed_path(width, args.batch, steps, device, data.folder.parent, args.repeats)
        results["seed"] = {"per_step": seed_step, "seconds_per_epoch_train": seed_step * steps_per_epoch,
                           "tflops": flop_per_step / seed_step / 1e12}
        results["speedup_vs_seed"] = seed_step / ours["per_step"]
        table.insert(0, ("seed as written", results["seed"]))
    results["load_average_after"] = os.getloadavg()

    print(f"\n{results['machine']['device']}, width {width}, batch {args.batch}, {steps} timed steps, "
          f"{flop_per_step / 1e9:.2f} GFLOP a step; matmul "
          + (f"{peaks['bfloat16'] / 1e9:,.0f} GFLOP/s in bf16, " if "bfloat16" in peaks else "(no native bf16) ")
          + f"{peaks['float32'] / 1e9:,.0f} GFLOP/s in fp32; {results['clock']} time; "
          f"load average {results['load_average'][0]:.1f}")
    for name, row in table:
        print(f"{name:<28} {row['per_step'] * 1e3:8.1f} ms/step  {row['per_step'] * steps_per_epoch:7.1f} s/epoch "
              f"(training)  {row['tflops'] * 1e3:7.1f} GFLOP/s  "
              + "".join(f"{row['tflops'] * 1e12 / peak:6.1%} of {dtype} matmul  " for dtype, peak in peaks.items()))
    print(f"nbhelpers: evaluation of {len(data.test):,} images {ours['eval_seconds']:.2f} s; epoch with "
          f"evaluation {ours['seconds_per_epoch']:.1f} s; a `long` run ({LONG_STEPS:,} steps, "
          f"{LONG_EVALUATIONS} evaluations) {ours['long_run_minutes']:.1f} min; overhead outside "
          f"forward/backward/optimizer {ours['overhead']:.1%}"
          + (f"; host syncs in a {steps}-step epoch: {ours[f'syncs_in_epoch_of_{steps}_steps']}" if cuda else ""))
    if "speedup_vs_seed" in results:
        print(f"speedup vs the seed: {results['speedup_vs_seed']:.2f}x")
    for name, meaning in BASELINES.items():
        if f"speedup_vs_{name}" in results:
            print(f"speedup vs {meaning}: {results[f'speedup_vs_{name}']:.2f}x")
    # On a CPU the file names the thread count and the clock: a shared machine's runs differ in both.
    how = "" if cuda else f"_{torch.get_num_threads()}t_{results['clock']}"
    write_results(f"train_step_{device.type}_w{width}{how}", results)


if __name__ == "__main__":
    main()
