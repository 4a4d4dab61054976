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

from nbhelpers.data import (CIFAR10DataError, FOLDER, UnofficialCopyWarning, load_cifar10,
                            write_synthetic_cifar10)
from nbhelpers.runtime import PROJECT_ROOT, cpu_has_fast_bf16, cpu_model, device_name, synchronize

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
            statistic=statistics.median) -> dict:
    """Wall seconds of each function (median of the repeats), timed in alternation.

    Alternating A, B, A, B... spreads any slow phase of a shared machine over
    every contender instead of charging it to whichever ran then. Device work
    is included. `statistic=min` estimates a cost that noise can only add to.
    """
    for function in functions.values():
        for _ in range(warmup):
            function()
    synchronize(device)
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistic(values) for name, values in times.items()}


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
