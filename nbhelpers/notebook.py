"""What the first code cell after the parameters does, in every notebook of the series.

    from nbhelpers.notebook import setup
    device = setup(seed=1002, data_dir=data_dir)

It seeds every generator, picks the device, and prints one line saying which
device and which data the notebook will use, so that a synthetic stand-in
can never be mistaken for CIFAR-10.
"""
from __future__ import annotations

import torch

from .data import describe_data_dir
from .runtime import device_name, pick_device, seed_everything


def setup(seed: int = 1002, *, deterministic: bool = False, data_dir: str | None = None,
          device: str | None = None) -> torch.device:
    """Seed, pick the device, print one line naming the device (and the data, if given)."""
    seed_everything(seed, deterministic)
    chosen = pick_device(device)
    line = f"device: {device_name(chosen)}"
    if data_dir is not None:
        line += f" | data: {describe_data_dir(data_dir)}"
    print(line)
    return chosen
