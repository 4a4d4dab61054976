"""Shared pieces of the benchmark scripts: data, timing, the seed's DataLoader, results."""
from __future__ import annotations

import json
import statistics
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torchvision import transforms

from nbhelpers.config import make_config
from nbhelpers.data import (CIFAR10DataError, FOLDER, CifarLoader, Split, UnofficialCopyWarning,
                            load_cifar10, write_synthetic_cifar10)
from nbhelpers.runtime import (PROJECT_ROOT, cpu_has_fast_bf16, cpu_model, device_name, seed_everything,
                               synchronize)
from nbhelpers.train import build_scheduler, build_training, train_epoch

RESULTS_DIR = PROJECT_ROOT / "benchmarks" / "results"


def cifar10(allow_synthetic: bool = True):
    """The real CIFAR-10 copy if there is one; else a synthetic one of the same size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnofficialCopyWarning)
        try:
            return load_cifar10()
        except CIFAR10DataError:
            if not allow_synthetic:
                raise
            root = PROJECT_ROOT / "build" / "synthetic-full"
            if not (root / FOLDER).is_dir():
                print(f"No CIFAR-10 found: writing a synthetic copy of its size to {root}")
                write_synthetic_cifar10(root, train_per_class=5000, test_per_class=1000)
            return load_cifar10(root)


def compare(functions: dict, device: torch.device, repeats: int = 10, warmup: int = 2,
            statistic=statistics.median, clock=time.perf_counter) -> dict:
    """Wall seconds of each function (median of the repeats), timed in alternation.

    Alternating A, B, A, B... spreads any slow phase of a shared machine over
    every contender instead of charging it to whichever ran then. Device work
    is included. `statistic=min` estimates a cost that noise can only add to.
    `clock=time.process_time` counts this process's CPU seconds instead: with
    one thread, the time other programs hold the CPU is left out.
    """
    for function in functions.values():
        for _ in range(warmup):
            function()
    synchronize(device)
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = clock()
            function()
            synchronize(device)
            times[name].append(clock() - start)
    return {name: statistic(values) for name, values in times.items()}


def random_split(images: int) -> Split:
    """Random uint8 images: a step's time does not depend on what they show."""
    generator = torch.Generator().manual_seed(0)
    return Split(torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=generator),
                 torch.randint(0, 10, (images,), generator=generator))


def training_config(width: int, batch: int, **how):
    """The config the benchmarks train with at `width`: the seed's 60 epochs over all images (so
    "auto" decides as for a run of that length), the classifier's hidden size scaled with the width."""
    return make_config(backbone_out_channels=width, hidden_size=max(64, width // 2), batch_size=batch, **how)


def training_step(width: int, batch: int, steps: int, device: torch.device, images: Split | None = None,
                  **how) -> dict:
    """fit's training loop at `width`, ready to time: "epoch" runs `steps` training steps.

    Also in the dict: what "auto" resolved ("chosen"), the config, the loader, the
    model as it runs ("step_model") and train_epoch's options. `images` (default:
    random ones; a step's time does not depend on what they show) must hold at
    least steps x batch images; `how` overrides the config's "auto" choices.
    """
    config = training_config(width, batch, **how)
    seed_everything(config.rand_seed)
    _, step_model, optimizer, chosen = build_training(config, device)
    images = images or random_split(steps * batch)
    loader = CifarLoader(Split(images.images[:steps * batch], images.labels[:steps * batch]), batch,
                         train=True, device=device, seed=1)
    scheduler = build_scheduler(optimizer, config, steps * 50)  # never runs past its last step
    options = dict(per_batch=True, precision=chosen["precision"], channels_last=chosen["channels_last"])
    return {"epoch": lambda: train_epoch(step_model, loader, optimizer, scheduler, **options),
            "chosen": chosen, "config": config, "loader": loader, "step_model": step_model,
            "options": options}


class SeedCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 as the seed used it, also for a copy with unofficial md5 sums."""

    _base = torchvision.datasets.CIFAR10
    train_list = [[name, None] for name, _ in _base.train_list]  # md5 None: existence only
    test_list = [[name, None] for name, _ in _base.test_list]
    meta = dict(_base.meta, md5=None)


def seed_train_loader(root: Path, batch_size: int = 128, workers: int = 2) -> torch.utils.data.DataLoader:
    """The seed's training pipeline: PIL flip + padded crop + ToTensor + Normalize, 2 workers."""
    transform = transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomCrop(32, padding=4),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    dataset = SeedCIFAR10(str(root), train=True, download=False, transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                       num_workers=workers)


def matmul_rate(device: torch.device, dtype: torch.dtype, clock=time.perf_counter) -> float:
    """FLOP/s of a large matrix product in `dtype` on this device."""
    size = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    repeats = 20 if device.type == "cuda" else 5
    start = clock()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size ** 3 * repeats / (clock() - start)


def machine(device: torch.device) -> dict:
    return {"device": device_name(device), "torch": torch.__version__,
            "cpu": cpu_model(), "cpu_fast_bf16": cpu_has_fast_bf16(),
            "threads": torch.get_num_threads()}


def write_results(name: str, results: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results written to {path}")
    return path
