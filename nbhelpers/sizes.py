"""The named sizes of a run, in one table: what 03, the series, the sweeps and 05 train.

A size names the values of the five parameters that decide how long a run
takes; every other parameter is the seed's recipe at any size. A parameter
given explicitly (`-p num_epochs 3`) wins over its size's value.

| size  | what it is                                   | what it cost where it was measured              |
| ----- | -------------------------------------------- | ----------------------------------------------- |
| full  | the seed's: width 1024, 60 epochs, all data  | see benchmarks/RESULTS.md (a GPU job; on two    |
|       |                                              | CPU cores about 8 hours per epoch, weeks in all)|
| demo  | `make demo`: width 32, 5 epochs, all data    | about 4 minutes for 03 on two CPU cores         |
| small | a CPU sweep's run (05, 06): width 32,        | under a minute per run on two CPU cores         |
|       | 3 epochs, 8,000 / 1,000 images               |                                                 |
| tiny  | the tests' size: width 16, 2 epochs,         | a few seconds per run                           |
|       | 1,000 / 500 images                           |                                                 |

("auto" is `full` on a CUDA GPU and `demo` elsewhere, Apple's MPS included;
for a sweep, `full` and `small`.) Before its first epoch ends, `fit` prints
what the run will take on the machine at hand.
"""
from __future__ import annotations

from typing import Any

import torch

AUTO = "auto"
# The parameters a size sets (the rest of TrainConfig is the recipe).
SIZED = ("num_epochs", "backbone_out_channels", "hidden_size", "train_subset", "test_subset")

SIZES: dict[str, dict[str, Any]] = {
    "full": dict(num_epochs=60, backbone_out_channels=1024, hidden_size=512, train_subset=0,
                 test_subset=0),
    "demo": dict(num_epochs=5, backbone_out_channels=32, hidden_size=64, train_subset=0,
                 test_subset=0),
    "small": dict(num_epochs=3, backbone_out_channels=32, hidden_size=64, train_subset=8000,
                  test_subset=1000),
    "tiny": dict(num_epochs=2, backbone_out_channels=16, hidden_size=32, train_subset=1000,
                 test_subset=500),
}
WHAT = {
    "full": "the seed's settings: width 1,024, 60 epochs, all 50,000 training images",
    "demo": "the CPU demo: width 32, 5 epochs, all 50,000 training images",
    "small": "a CPU sweep's run: width 32, 3 epochs, 8,000 training and 1,000 test images",
    "tiny": "the tests' size: width 16, 2 epochs, 1,000 training and 500 test images",
}


def pick_size(size: str, device: torch.device | str | None = None, *, sweep: bool = False) -> str:
    """`size` itself, or for "auto": full on a CUDA GPU, else demo (a sweep's runs: small)."""
    from .config import check_value  # config imports this module for its `size` rule

    size = check_value("size", size)
    if size != AUTO:
        return size
    if device is None:
        cuda = torch.cuda.is_available()
    else:
        cuda = torch.device(device).type == "cuda"
    return "full" if cuda else ("small" if sweep else "demo")


def chosen_size_line(size: str, picked: str, device: torch.device) -> str:
    """One line saying which size "auto" chose without a GPU, and how to choose another."""
    if size != AUTO or picked == "full":
        return ""
    return (f"size: {picked} ({WHAT[picked]}), since there is no CUDA GPU here ({device.type}); "
            "the seed's full size would take days on a CPU. Another: -p size full (or demo, small, tiny).")
