"""Where things live, which device to use, and how to make a run repeatable.

Every notebook's first code cell calls `seed_everything` and `pick_device`,
so that these decisions are made once, here, and not copied between notebooks.
"""
from __future__ import annotations

import functools
import os
import platform
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .errors import ExplainedError

__all__ = ["PROJECT_ROOT", "DATA_DIR", "RUNS_DIR", "FIGURES_DIR", "project_path", "seed_everything",
           "pick_device", "DeviceError", "cpu_flags", "cpu_model", "cpu_vendor",
           "cpu_has_fast_bf16", "cpu_can_compile", "synchronize", "total_memory", "device_name"]

# The checkout this package was installed from (an editable install, as the
# README sets up). Installed elsewhere, paths fall back to the working folder.
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent
PROJECT_ROOT = _PACKAGE_PARENT if (_PACKAGE_PARENT / "pyproject.toml").exists() else Path.cwd()
DATA_DIR = PROJECT_ROOT / "data"
RUNS_DIR = PROJECT_ROOT / "runs"
FIGURES_DIR = PROJECT_ROOT / "figures"


def project_path(path: str | os.PathLike) -> Path:
    """`path` itself if absolute; otherwise taken from the project's root, not the working folder.

    A notebook's kernel works in notebooks/ under JupyterLab and in the project's
    root under papermill: `-p run_dir runs/mine` means the same folder in both.
    """
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def shown_path(path: str | os.PathLike) -> str:
    """`path` as the series injects and prints it: relative to the project's root where it lies
    inside it, else as it is. So a published notebook names no folder of the machine it ran on,
    and `project_path` turns it back into the same folder on any other.
    """
    path = Path(path)
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (every CUDA device too).

    With `deterministic=True`, cuDNN also picks deterministic algorithms and
    stops benchmarking, so two runs on one GPU give the same numbers. That is
    what the seed did, and it is slower: leave it off when speed matters.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA devices as well
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def pick_device(preferred: str | None = None) -> torch.device:
    """The fastest device here: CUDA, then Apple's MPS, then the CPU.

    `preferred` (or the environment variable NBHELPERS_DEVICE) overrides the
    choice, for example "cpu" to compare against a GPU run.
    """
    name = preferred or os.environ.get("NBHELPERS_DEVICE")
    if name:
        return _available(name, "device" if preferred else "NBHELPERS_DEVICE")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class DeviceError(ExplainedError, RuntimeError):
    """The device asked for is not a device, or not on this machine."""


def _available(name: str, source: str) -> torch.device:
    """torch.device(name), if this machine has it; DeviceError saying what it has otherwise."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"{source}={name!r} is not a device: use cuda, cuda:N, mps or cpu.") from None
    here = {"cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
            "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()}
    if not here.get(device.type, True):
        what = {"cuda": f"no CUDA device{' of that number' if torch.cuda.is_available() else ''}",
                "mps": "no Apple MPS device"}[device.type]
        raise DeviceError(f"{source}={name!r}, but this machine has {what} (torch {torch.__version__}). "
                          f"Unset {source} to let the series pick the fastest device here, or set it to cpu.")
    return device


def _cpuinfo(*keys: str) -> str:
    """The value of the first line of /proc/cpuinfo that starts with one of `keys` ("" elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(keys):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    return set(_cpuinfo("flags", "Features").split())


def cpu_model() -> str:
    """The CPU's model name, e.g. "Intel(R) Xeon(R) Processor" (platform's guess elsewhere)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_vendor() -> str:
    """ "GenuineIntel", "AuthenticAMD", ... as Linux reports it ("" elsewhere)."""
    return _cpuinfo("vendor_id")


def cpu_has_fast_bf16() -> bool:
    """Is bf16 autocast faster than fp32 for this model on this CPU?

    What benchmarks/train_step.py measured (width 32, channels_last, one step):
    on an AMD EPYC with AVX512-BF16, 72 ms in bf16 against 95 ms in fp32; on
    an Intel Xeon that reports AVX512-BF16 but no AMX, 108 against 105 ms
    (no gain); on one with AMX, 1.4x faster in bf16 at width 16 (at width 8,
    where convolutions are a quarter of a step, 1.08x). Intel's bf16 matrix
    units are AMX. Without either, PyTorch emulates bf16 on the CPU, and
    autocast is slower than fp32.
    """
    flags = cpu_flags()
    return "amx_bf16" in flags or ("avx512_bf16" in flags and cpu_vendor() == "AuthenticAMD")


def cpu_can_compile() -> bool:
    """Can torch.compile build its CPU kernels here without asking the user for anything?

    Its CPU backend writes C++ and compiles it with $CXX, else g++. It was measured
    on Linux with g++ only; on macOS it also needs OpenMP installed, and on Windows
    a Visual Studio shell. So "auto" compiles on a CPU only on Linux with that
    compiler, and only once a tiny function compiled and ran: a toolchain that is
    there but broken (missing headers) leaves the run eager instead of failing it.
    """
    return (platform.system() == "Linux" and shutil.which(os.environ.get("CXX") or "g++") is not None
            and _compiles_a_probe())


@functools.cache
def _compiles_a_probe() -> bool:
    """Does torch.compile build and run a tiny CPU function here? (Once a process: a few seconds.)"""
    def probe(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.leaky_relu(x * 2.0).sum()

    try:
        return torch.compile(probe, dynamic=False)(torch.ones(8)).item() == 16.0
    except Exception:  # any failure to build is a reason to stay eager, not to stop the run
        return False


def synchronize(device: torch.device) -> None:
    """Wait until the device has finished what it was given (a GPU runs ahead of Python)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def total_memory(device: torch.device) -> int | None:
    """Bytes of memory the device has in all (the machine's RAM for the CPU); None where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # not on every platform
            return None
    return None


def device_name(device: torch.device) -> str:
    """A human-readable name of the device, for logs and config.json."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"
    return device.type
