"""Seconds per training step and per epoch: the seed's formulation vs nbhelpers' default path.

    python benchmarks/train_step.py [--device cpu|cuda] [--width N] [--steps N]

(a) the seed as written: its model (dead branch, torch.jit.fork), fp32,
    deterministic cuDNN, the per-parameter Ranger, torchvision's DataLoader
    with PIL transforms and 2 workers, and .item() after every step;
(b) nbhelpers as `fit` runs it: batches cut on the device, the model with
    bf16 autocast, channels_last and torch.compile where the device is CUDA
    (on a CPU: channels_last, and bf16 where the CPU has it natively), Ranger
    on flat buffers, sums kept on the device;
(c) on a CPU also nbhelpers' former CPU default (fp32, NCHW), to show what
    the per-CPU "auto" choice gains.
Both include OneCycleLR. It prints the ratio, the TFLOP/s of each, and the
fraction of this device's own matmul rate measured in the same run (bf16 on
CUDA, fp32 on a CPU), and it measures nbhelpers' overhead outside forward,
backward and the optimizer (data, metrics, logging). On CUDA it also counts
host-device synchronisations inside the training loop
(torch.cuda.set_sync_debug_mode). Results go to benchmarks/results/.
"""
import argparse
import time
import warnings

import torch
import torch.nn.functional as F

from common import cifar10, compare, machine, seed_train_loader, synchronize, write_results
from nbhelpers.config import build_model, make_config
from nbhelpers.data import CifarLoader, Split
from nbhelpers.model import count_flops
from nbhelpers.runtime import pick_device, seed_everything
from nbhelpers.seed_reference import SeedModel, SeedRanger
from nbhelpers.evaluation import evaluate
from nbhelpers.train import build_scheduler, build_training, train_epoch


def matmul_rate(device: torch.device) -> tuple[float, str]:
    """FLOP/s of a large matrix product on this device (bf16 on CUDA, fp32 on a CPU)."""
    size, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    repeats = 20 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start), str(dtype).split(".")[-1]


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


# Before "auto" chose per CPU, a CPU ran in fp32 with NCHW tensors; kept as a row to compare.
OLD_CPU_DEFAULT = dict(precision="fp32", channels_last=False)


def nbhelpers_path(width, batch, steps, device, data, check_syncs: bool, repeats: int,
                   **overrides) -> dict:
    """Seconds per step of fit's loop, its overhead, and the evaluation of the test set."""
    config = make_config(backbone_out_channels=width, hidden_size=max(64, width // 2), batch_size=batch,
                         **overrides)
    seed_everything(config.rand_seed)
    model, step_model, optimizer, chosen = build_training(config, device)
    subset = Split(data.train.images[:steps * batch], data.train.labels[:steps * batch])
    loader = CifarLoader(subset, batch, train=True, device=device, seed=1)
    scheduler = build_scheduler(optimizer, config, steps)
    options = dict(per_batch=True, precision=chosen["precision"], channels_last=chosen["channels_last"])

    def full_epoch():
        train_epoch(step_model, loader, optimizer, scheduler, **options)

    # The loop's own work (batches, metrics, progress) measured directly: the
    # same train_epoch with a model and optimizer that cost next to nothing.
    # (Timing the real loop against a bare one instead drowns a 1% effect in
    # the few-percent noise of a shared CPU.)
    stand_in = ConstantLogits().to(device)
    stand_in_optimizer = torch.optim.SGD(stand_in.parameters(), lr=0.0)
    stand_in_scheduler = build_scheduler(stand_in_optimizer, config, steps)

    def loop_only_epoch():
        train_epoch(stand_in, loader, stand_in_optimizer, stand_in_scheduler, **options)

    # Warm-up (compilation, cuDNN's choices, allocator growth), then both in
    # alternation; noise on a shared machine only adds time, so the fastest
    # epoch of each is its cost.
    timings = compare({"full": full_epoch, "loop": loop_only_epoch}, device, repeats=repeats,
                      warmup=1, statistic=min)
    per_step, loop_per_step = timings["full"] / steps, timings["loop"] / steps

    syncs = None
    if check_syncs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_epoch(step_model, loader, optimizer, scheduler, **options)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = len([w for w in caught if "synchroniz" in str(w.message).lower()])

    evaluate(step_model, data.test, device, chosen["precision"], chosen["channels_last"])
    synchronize(device)
    start = time.perf_counter()
    evaluate(step_model, data.test, device, chosen["precision"], chosen["channels_last"])
    synchronize(device)
    return {"per_step": per_step, "loop_only_per_step": loop_per_step,
            "overhead": loop_per_step / per_step,
            "syncs_in_epoch_of_%d_steps" % steps: syncs,
            "eval_seconds": time.perf_counter() - start, **chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--width", type=int, default=None, help="default: 1024 on CUDA, 32 elsewhere")
    parser.add_argument("--steps", type=int, default=None, help="default: 60 on CUDA, 15 elsewhere")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs of each loop (the fastest counts)")
    parser.add_argument("--skip-seed", action="store_true", help="only nbhelpers' path")
    args = parser.parse_args()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    width = args.width or (1024 if cuda else 32)
    steps = args.steps or (60 if cuda else 15)
    data = cifar10()
    steps_per_epoch = -(-len(data.train) // args.batch)
    with torch.device("meta"):
        flops = count_flops(build_model(make_config(backbone_out_channels=width,
                                                    hidden_size=max(64, width // 2))))
    flop_per_step = flops["train_step"] * args.batch
    peak, peak_dtype = matmul_rate(device)

    results = {"machine": machine(device), "width": width, "batch": args.batch, "steps": steps,
               "gflop_per_image_step": flops["train_step"] / 1e9,
               "matmul_tflops": peak / 1e12, "matmul_dtype": peak_dtype}
    ours = nbhelpers_path(width, args.batch, steps, device, data, check_syncs=cuda, repeats=args.repeats)
    results["nbhelpers"] = dict(ours, seconds_per_epoch=ours["per_step"] * steps_per_epoch + ours["eval_seconds"],
                                tflops=flop_per_step / ours["per_step"] / 1e12)
    label = f"default ({ours['precision']}, {'NHWC' if ours['channels_last'] else 'NCHW'})"
    rows = [(label, results["nbhelpers"])]
    if device.type == "cpu":
        # What "auto" gained on this CPU over the fp32 NCHW default it replaced, and
        # the precision it did not choose (is bf16 faster here, as it assumes or not?).
        old = nbhelpers_path(width, args.batch, steps, device, data, check_syncs=False,
                             repeats=args.repeats, **OLD_CPU_DEFAULT)
        results["nbhelpers_old_cpu_default"] = dict(old, tflops=flop_per_step / old["per_step"] / 1e12)
        results["speedup_vs_old_cpu_default"] = old["per_step"] / ours["per_step"]
        rows.insert(0, ("old default (fp32, NCHW)", results["nbhelpers_old_cpu_default"]))
        other = "fp32" if ours["precision"] == "bf16" else "bf16"
        alternative = nbhelpers_path(width, args.batch, steps, device, data, check_syncs=False,
                                     repeats=args.repeats, precision=other, channels_last=True)
        results[f"nbhelpers_{other}_nhwc"] = dict(alternative,
                                                  tflops=flop_per_step / alternative["per_step"] / 1e12)
        rows.append((f"not chosen ({other}, NHWC)", results[f"nbhelpers_{other}_nhwc"]))
    if not args.skip_seed:
        seed_step = seed_path(width, args.batch, steps, device, data.folder.parent, args.repeats)
        results["seed"] = {"per_step": seed_step, "seconds_per_epoch_train": seed_step * steps_per_epoch,
                           "tflops": flop_per_step / seed_step / 1e12}
        results["speedup_vs_seed"] = seed_step / ours["per_step"]
        rows.insert(0, ("seed as written", results["seed"]))

    print(f"\n{results['machine']['device']}, width {width}, batch {args.batch}, {steps} timed steps; "
          f"matmul {peak / 1e12:.1f} TFLOP/s ({peak_dtype})")
    for name, row in rows:
        print(f"{name:<26} {row['per_step'] * 1e3:9.1f} ms/step  {row['per_step'] * steps_per_epoch:8.1f} s/epoch "
              f"(training)  {row['tflops']:7.2f} TFLOP/s  {row['tflops'] * 1e12 / peak:6.1%} of matmul")
    print(f"nbhelpers: epoch with evaluation {results['nbhelpers']['seconds_per_epoch']:.1f} s; "
          f"overhead outside forward/backward/optimizer {ours['overhead']:.1%}"
          + (f"; host syncs in a {steps}-step epoch: {ours['syncs_in_epoch_of_%d_steps' % steps]}" if cuda else ""))
    if "speedup_vs_seed" in results:
        print(f"speedup vs the seed: {results['speedup_vs_seed']:.2f}x")
    if "speedup_vs_old_cpu_default" in results:
        print(f"speedup vs the old CPU default: {results['speedup_vs_old_cpu_default']:.2f}x")
    write_results(f"train_step_{device.type}_w{width}", results)


if __name__ == "__main__":
    main()
