"""Every training parameter in one place, with the seed's names and defaults; the named sizes.

Notebooks 01-06 make their configuration here (`make_config`), 02 and 03 build
the model it describes (`build_model`), and 03, the series, the sweeps and 05
take their run lengths from its sizes.

papermill hands `-p` values over as str, int, float or bool, so each value is
converted where that is unambiguous ("60" -> 60, "true" -> True) and checked;
a bad one raises ConfigError naming the parameter, the value and what is
allowed.

A size names the values of the five parameters that decide how long a run
takes (SIZED); every other parameter is the seed's recipe at any size. A
parameter given explicitly (`-p num_epochs 3`) wins over its size's value.

| size  | what it is                                   | what it cost where it was measured              |
| ----- | -------------------------------------------- | ----------------------------------------------- |
| full  | the seed's: width 1024, 60 epochs, all data  | see benchmarks/RESULTS.md (a GPU job; on a CPU  |
|       |                                              | not measured, and not practical)                |
| long  | the seed's 23,460 steps on a CPU: width 8,   | width 8 has the fastest CPU step of widths 4-32 |
|       | 60 epochs, all data (the `schedule` sweep's; | (benchmarks/RESULTS.md): about 19 minutes a run |
|       | r_t and the schedule depend on the steps)    | compiled on two AMD EPYC cores, 27 eager        |
| demo  | `make demo`: width 32, 5 epochs, all data    | about 4 minutes for 03 on two CPU cores         |
| small | a CPU sweep's run (05, 06): width 32,        | under a minute per run on two CPU cores         |
|       | 3 epochs, 8,000 / 1,000 images               |                                                 |
| tiny  | the tests' size: width 16, 2 epochs,         | a few seconds per run                           |
|       | 1,000 / 500 images                           |                                                 |

("auto" is `full` on a CUDA GPU and `demo` elsewhere, Apple's MPS included;
for a sweep, `full` and `small`; it never picks `long`, which is asked for by
name.) Before its first epoch ends, `fit` prints what the run will take on the
machine at hand.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
from dataclasses import dataclass, fields
from typing import Any

import torch

from .errors import ExplainedError
from .model import MIXINGS, Model
from .runtime import cpu_can_compile, cpu_has_fast_bf16

__all__ = ["AUTO", "OPTIMIZERS", "SIZED", "SIZES", "WHAT", "NOT_CHANGING_THE_NUMBERS", "ConfigError",
           "TrainConfig", "make_config", "check_value", "check_evaluation_parameters",
           "check_injected_parameters", "unknown_names", "pick_size", "chosen_size_line", "build_model",
           "reached_the_last_epoch", "PAPERMILL_HEADER", "CPU_COMPILE_BELOW_WIDTH", "CPU_COMPILE_FROM_STEPS"]

AUTO = "auto"
# The choices of `optimizer`; nbhelpers.train.build_optimizer says what each one is.
OPTIMIZERS = ("ranger", "ranger_no_lookahead", "ranger_no_gc", "radam", "adamw", "sgd")
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


# --------------------------------------------------------------------------
# The named sizes: how long a run takes (the table in this module's docstring)
# --------------------------------------------------------------------------

# The parameters a size sets (the rest of TrainConfig is the recipe).
SIZED = ("num_epochs", "backbone_out_channels", "hidden_size", "train_subset", "test_subset")

# `long` runs the seed's schedule step for step (60 epochs of 391 batches) on a narrow model: r_t
# and the schedule's shape depend on the step count, not on the width. Its width is chosen by
# measurement: of widths 4 to 32, 8 had the fastest step on a CPU (benchmarks/RESULTS.md: narrower
# channels fill neither oneDNN's blocks nor a vector), about half an hour a run. The classifier keeps demo's and small's hidden size 64: long then
# differs from demo only in the backbone's width and the run's length (the head costs next to
# nothing at any of these widths).
LONG_WIDTH = 8

SIZES: dict[str, dict[str, Any]] = {
    "full": dict(num_epochs=60, backbone_out_channels=1024, hidden_size=512, train_subset=0,
                 test_subset=0),
    "long": dict(num_epochs=60, backbone_out_channels=LONG_WIDTH, hidden_size=64, train_subset=0,
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
    "long": f"the seed's 23,460 steps on a CPU: width {LONG_WIDTH}, 60 epochs, all 50,000 training images",
    "demo": "the CPU demo: width 32, 5 epochs, all 50,000 training images",
    "small": "a CPU sweep's run: width 32, 3 epochs, 8,000 training and 1,000 test images",
    "tiny": "the tests' size: width 16, 2 epochs, 1,000 training and 500 test images",
}


def pick_size(size: str, device: torch.device | str | None = None, *, sweep: bool = False) -> str:
    """`size` itself, or for "auto": full on a CUDA GPU, else demo (a sweep's runs: small)."""
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
            "the seed's full size would take days on a CPU. Another: -p size full (or long, demo, small, tiny).")


# torch.compile on a CPU (benchmarks/RESULTS.md, an AMD EPYC without bf16, fp32, channels_last): at
# width 8 its fused batch norm, pooling and LeakyReLU made a training step 1.44x faster on two
# threads and 1.14x on one; at widths 16 and 32 it was slower (0.91x, 0.87x), as bf16 was at every
# width on a Xeon with AMX (0.77-0.83x). Compiling costs 20-45 s once (and again for evaluation),
# so "auto" compiles only a run that long: 10,000 steps save several times that at width 8.
CPU_COMPILE_BELOW_WIDTH = 16
CPU_COMPILE_FROM_STEPS = 10_000
CIFAR10_TRAIN_IMAGES = 50_000  # what train_subset=0 trains on: the whole training set


class ConfigError(ExplainedError, ValueError):
    """A training parameter has a value that is not allowed."""


@dataclass
class TrainConfig:
    # How long it runs: a named size (SIZES) gives the five values below it that are left None;
    # TrainConfig(size="demo", num_epochs=3), like make_config's, takes the demo's values, then num_epochs=3.
    size: str = "full"                # the size the run-length values came from: full, long, demo, small, tiny
    # The seed's recipe
    num_epochs: int | None = None     # passes over the training set (1..1000; None: the size's, full: 60)
    batch_size: int = 128             # images per gradient step (at least 2, for BatchNorm)
    learning_rate: float = 1e-3       # Ranger's lr before OneCycleLR takes over
    weight_decay: float = 1e-2        # Ranger's decoupled-style decay: p -= wd * lr * p
    max_lr: float = 0.1               # OneCycleLR's peak; it starts at max_lr / 25
    optimizer: str = "ranger"         # the seed's Ranger, a part of it, or a baseline (OPTIMIZERS)
    num_blocks: int = 3               # blocks in the backbone (1..5: each halves the 32x32 image)
    num_conv_layer: int = 3           # parallel conv branches per block
    mixing: str = "seed"              # how a block weighs its branches: seed, softmax, sigmoid, equal (model.MIXINGS)
    backbone_out_channels: int | None = None  # channels of every branch (None: the size's, full: 1024)
    hidden_size: int | None = None    # width of the classifier's hidden layers (None: the size's, full: 512)
    rand_seed: int = 1002             # seeds Python, NumPy, PyTorch and the data order (0..2**32-1)
    # Data and where results go
    data_dir: str = ""                # "" = $CIFAR10_ROOT, else the project's data/
    download: bool = True             # fetch the official archive if CIFAR-10 is missing
    run_dir: str = ""                 # "" = runs/<date-time> (with resume: the latest run)
    train_subset: int | None = None   # first N training images, class-balanced; 0 = all (None: the size's)
    test_subset: int | None = None    # first N test images, class-balanced; 0 = all (None: the size's)
    val_size: int = 0                 # validation images carved from training; 0 = none (the seed)
    # How it runs
    scheduler_step: str = "batch"     # "batch"; "epoch" repeats the seed's once-per-epoch bug
    precision: str = AUTO             # "auto" (bf16 on CUDA and on CPUs where it is faster), "bf16", "fp32"
    compile: Any = AUTO               # torch.compile the model: "auto" (CUDA; long narrow CPU runs), True, False
    channels_last: Any = AUTO         # NHWC memory layout: "auto" (on for CUDA and CPUs), True, False
    deterministic: bool = False       # deterministic cuDNN (the seed's choice; slower)
    resume: bool = False              # continue from run_dir's checkpoint
    progress: str = AUTO              # "auto", "bar", "log" (a line per epoch), "none"

    def __post_init__(self) -> None:
        # The size applied as make_config applies it, so that a config never records a size it
        # does not train at: "auto" is chosen now, and gives the values not set explicitly.
        self.size = pick_size(self.size)
        for name, value in SIZES[self.size].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for field in fields(self):
            setattr(self, field.name, _check(field.name, getattr(self, field.name)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self, device: torch.device) -> dict[str, Any]:
        """The "auto" choices made concrete for `device`, as benchmarks/train_step.py measured them.

        On CUDA: bf16 autocast, channels_last and torch.compile. On a CPU:
        channels_last (its convolutions are about 1.4x faster in NHWC), bf16
        autocast only where it measured faster than fp32 (runtime.cpu_has_fast_bf16),
        and torch.compile only where it measured faster and pays for its own
        minute: fp32, narrower than 16 channels, 10,000 steps or more (the size
        `long`), on a CPU where it can compile (runtime.cpu_can_compile).
        """
        cuda, cpu = device.type == "cuda", device.type == "cpu"
        fast_bf16 = cuda or (cpu and cpu_has_fast_bf16())
        precision = ("bf16" if fast_bf16 else "fp32") if self.precision == AUTO else self.precision
        return {
            "precision": precision,
            "compile": (cuda or (cpu and self._compile_pays_on_cpu(precision))) if self.compile == AUTO
            else self.compile,
            "channels_last": (cuda or cpu) if self.channels_last == AUTO else self.channels_last,
        }

    def planned_steps(self) -> int:
        """Training steps the run takes: epochs x batches (train_subset 0 is CIFAR-10's 50,000 images)."""
        images = (self.train_subset or CIFAR10_TRAIN_IMAGES) - self.val_size
        return self.num_epochs * -(-images // self.batch_size)

    def _compile_pays_on_cpu(self, precision: str) -> bool:
        return (precision == "fp32" and self.backbone_out_channels < CPU_COMPILE_BELOW_WIDTH
                and self.planned_steps() >= CPU_COMPILE_FROM_STEPS and cpu_can_compile())


# Parameters that say where a run's files are or how it runs and reports, not what it
# computes: a run resumed with other values of these gives the numbers it would have
# given uninterrupted. (The data folder may move; the data itself is checked by its
# fingerprint. `size` only names where the run-length values came from; the values
# themselves are compared.) The one list: a resume ignores these, 05 labels runs by
# none of them, and a sweep sets all but `compile` itself.
NOT_CHANGING_THE_NUMBERS = frozenset({"resume", "progress", "run_dir", "data_dir", "download",
                                      "compile", "size"})

# What each parameter accepts: (kind, detail). Kinds: int with (minimum,
# maximum or None), float, a choice among strings, a bool, a bool or "auto", a path.
_RULES: dict[str, tuple[str, Any]] = {
    # More epochs than 1000 is no experiment of this series, and the schedule
    # plot lists every step; training-mode BatchNorm needs 2 images a batch;
    # five 2x2 poolings take 32x32 down to 1x1; NumPy seeds are 32-bit.
    "num_epochs": ("int", (1, 1000)), "batch_size": ("int", (2, None)),
    "num_blocks": ("int", (1, 5)), "rand_seed": ("int", (0, 2**32 - 1)),
    "num_conv_layer": ("int", (1, None)), "backbone_out_channels": ("int", (1, None)),
    "hidden_size": ("int", (1, None)), "train_subset": ("int", (0, None)),
    "test_subset": ("int", (0, None)), "val_size": ("int", (0, None)),
    "learning_rate": ("float", "positive"), "max_lr": ("float", "positive"),
    "weight_decay": ("float", "non-negative"),
    "size": ("choice", (AUTO,) + tuple(SIZES)),
    "scheduler_step": ("choice", ("batch", "epoch")),
    "optimizer": ("choice", OPTIMIZERS),
    "mixing": ("choice", tuple(MIXINGS)),
    "precision": ("choice", (AUTO, "bf16", "fp32")),
    "progress": ("choice", (AUTO, "bar", "log", "none")),
    "compile": ("bool_or_auto", None), "channels_last": ("bool_or_auto", None),
    "deterministic": ("bool", None), "resume": ("bool", None), "download": ("bool", None),
    "data_dir": ("path", None), "run_dir": ("path", None),
}


def _fail(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{name}={value!r} is not allowed: {name} must be {allowed}")


def _as_bool(name: str, value: Any, allowed: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _fail(name, value, allowed)


# Notebook 04's own parameters, checked the same way (its run_dir and data_dir name folders).
_EVALUATION_RULES: dict[str, tuple[str, Any]] = {
    "run_dir": ("path", None), "data_dir": ("path", None), "figures_dir": ("path", None),
    "grid_images": ("int", (1, 100)), "extreme_images": ("int", (1, 50)),
    "ablation_images": ("int", (0, None)),
}


def check_value(name: str, value: Any) -> Any:
    """`value` converted and checked as the training parameter `name` is (ConfigError if not allowed)."""
    return _check(name, value)


def check_evaluation_parameters(**values: Any) -> dict[str, Any]:
    """Notebook 04's parameters, converted and checked; ConfigError names a bad one."""
    return {name: _check(name, value, _EVALUATION_RULES) for name, value in values.items()}


def _check(name: str, value: Any, rules: dict[str, tuple[str, Any]] = _RULES) -> Any:
    kind, detail = rules[name]
    original = value  # errors quote what the user passed, not what it became
    if kind == "int":
        low, high = detail
        allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        if isinstance(value, bool):
            raise _fail(name, value, allowed)
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise _fail(name, value, allowed) from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or value < low or (high is not None and value > high):
            raise _fail(name, original, allowed)
        return value
    if kind == "float":
        allowed = f"a {detail} number"
        if isinstance(value, bool):
            raise _fail(name, value, allowed)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise _fail(name, value, allowed) from None
        if number != number or number in (float("inf"), float("-inf")) or \
                number < 0 or (detail == "positive" and number == 0):
            raise _fail(name, value, allowed)
        return number
    if kind == "choice":
        if isinstance(value, str) and value.strip().lower() in detail:
            return value.strip().lower()
        raise _fail(name, value, "one of " + ", ".join(repr(c) for c in detail))
    if kind == "bool":
        return _as_bool(name, value, "True or False")
    if kind == "bool_or_auto":
        if isinstance(value, str) and value.strip().lower() == AUTO:
            return AUTO
        return _as_bool(name, value, "'auto', True or False")
    if not isinstance(value, str):  # path
        value = str(value) if hasattr(value, "__fspath__") else value
    if not isinstance(value, str):
        raise _fail(name, value, "a folder path (a string; '' for the default)")
    return value


def unknown_names(unknown: list[str], known: list[str]) -> str:
    """ "num_epoch (did you mean num_epochs?)" for each unknown name."""
    named = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        named.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return ", ".join(named)


def make_config(config: TrainConfig | None = None, **overrides: Any) -> TrainConfig:
    """A checked TrainConfig: `config` (or the defaults) with `overrides` applied.

    A `size` among the overrides brings its five values (SIZES)
    in first, so the other overrides win over them; "auto" is full where a CUDA
    GPU is, else demo.
    """
    known = [f.name for f in fields(TrainConfig)]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(f"unknown training parameter(s): {unknown_names(unknown, known)}; "
                          f"known: {', '.join(sorted(known))}")
    base = config.to_dict() if config is not None else {}
    if "size" in overrides:
        size = pick_size(overrides["size"])
        base.update(SIZES[size], size=size)
        overrides = {k: v for k, v in overrides.items() if k != "size"}
    return TrainConfig(**{**base, **overrides})



def build_model(config: TrainConfig, num_classes: int = 10) -> Model:
    """The untrained model `config` describes (its sizes, branches and mixing)."""
    return Model(config.num_blocks, 3, config.backbone_out_channels, config.num_conv_layer,
                 config.hidden_size, num_classes, config.mixing)

def reached_the_last_epoch(history: list[dict[str, float]], num_epochs: int) -> bool:
    """Has a run trained every epoch it planned? Its history (a row per epoch) reaches the last one.

    What "finished" means for a run in memory, whether fit returned it or it
    was read back (`Run.finished` and `RunSummary.finished` both ask this). A run
    folder is finished once it holds its final weights (nbhelpers.runs.folder.is_finished).
    """
    return bool(history) and int(history[-1]["epoch"]) == num_epochs


# --------------------------------------------------------------------------
# Parameters papermill injected into a notebook
# --------------------------------------------------------------------------

PAPERMILL_HEADER = "# Parameters"  # the first line of the cell papermill injects


def _assigned_names(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [target.id for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)]


def check_injected_parameters(inputs: list[str]) -> None:
    """Refuse a `-p NAME value` whose NAME the notebook's parameters cell does not have.

    papermill injects every `-p` as an assignment in a cell of its own, right
    after the cell tagged "parameters", and only logs a warning for a name
    that cell lacks: a misspelt `-p num_epoch 5` would silently train with the
    default. `inputs` is the kernel's input history (IPython's `In`): the
    injected cell is the last one starting with PAPERMILL_HEADER, the
    parameters cell the one before it. Outside papermill there is none.
    """
    injected_at = [i for i, source in enumerate(inputs) if source.startswith(PAPERMILL_HEADER)]
    if not injected_at or injected_at[-1] == 0:
        return
    declared = _assigned_names(inputs[injected_at[-1] - 1])
    unknown = [n for n in _assigned_names(inputs[injected_at[-1]]) if n not in declared]
    if unknown:
        which = "not a parameter" if len(unknown) == 1 else "not parameters"
        raise ConfigError(f"-p {unknown_names(unknown, declared)}: {which} of this notebook, "
                          f"so it would be ignored. Its parameters are {', '.join(declared)}.")
