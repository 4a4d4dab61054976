"""What the first code cell after the parameters does, in every notebook of the series.

    from nbhelpers.notebook import setup
    device = setup(seed=1002, data_dir=data_dir)

It seeds every generator, picks the device, and prints one line saying which
device and which data the notebook will use, so that a synthetic stand-in
can never be mistaken for CIFAR-10.

In a Jupyter kernel it also makes problems read as one clear message:
- a warning shows as one line, its category and its message, instead of the
  temporary file name of the cell and an echo of the source line;
- the project's own errors (a bad parameter, missing data, a run folder that
  cannot be used or resumed, a diverged run) show as one line naming the error, instead of a
  traceback through the library. The cell still fails, so papermill still stops
  and exits non-zero; `%tb` in the next cell shows the full traceback.
"""
from __future__ import annotations

import sys
import warnings

import torch

from .config import check_injected_parameters, check_value
from . import plots
from .data import describe_data_dir, is_synthetic
from .errors import ExplainedError
from .runtime import device_name, pick_device, seed_everything

__all__ = ["SYNTHETIC_MARK", "RED", "RESET", "setup", "jupyter_shell", "one_line_warning",
           "brief_error", "show_problems_briefly"]

SYNTHETIC_MARK = "SYNTHETIC stand-in data (stripe patterns), not CIFAR-10"
RED, RESET = "\x1b[31m", "\x1b[0m"  # the colour JupyterLab gives an exception's name


def setup(seed: int = 1002, *, deterministic: bool = False, data_dir: str | None = None,
          device: str | None = None) -> torch.device:
    """Seed, pick the device, print one line naming the device (and the data, if given)."""
    shell = jupyter_shell()
    if shell is not None:  # first, so that describing the data already speaks briefly
        show_problems_briefly(shell)
        # papermill only logs a -p NAME that the parameters cell lacks: refuse it here
        check_injected_parameters(list(shell.user_ns.get("In", [])))
    seed = check_value("rand_seed", seed)  # before it reaches the generators, as in 03's config
    if data_dir is not None:
        data_dir = check_value("data_dir", data_dir)
    seed_everything(seed, deterministic)
    chosen = pick_device(device)
    line = f"device: {device_name(chosen)}"
    if data_dir is not None:
        line += f" | data: {describe_data_dir(data_dir)}"
        plots.mark_figures(SYNTHETIC_MARK if is_synthetic(data_dir) else None)
    print(line)
    return chosen


def jupyter_shell():
    """The IPython shell of a Jupyter kernel (JupyterLab's, Colab's, papermill's), else None.

    Known by what it is, ipykernel's shell, not by its class's name: Colab's is a
    subclass named `Shell`. IPython in a terminal is no kernel, and without
    ipykernel there is none.
    """
    ipython = sys.modules.get("IPython")  # never imported here: a script has no shell
    shell = ipython.get_ipython() if ipython else None
    if shell is None:
        return None
    try:
        from ipykernel.zmqshell import ZMQInteractiveShell
    except ImportError:
        return None
    return shell if isinstance(shell, ZMQInteractiveShell) else None


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """`warnings.formatwarning` without the file name and the echoed source line."""
    return f"{category.__name__}: {message}\n"


def brief_error(shell, etype, value, tb, tb_offset=None) -> None:
    """IPython's custom exception handler: one red line instead of the traceback."""
    # Kept where %tb and %debug look for the last error.
    sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb
    # _showtraceback is the shell's hook for displaying a traceback: in a kernel it
    # sends an error output, which fails the cell (and a papermill run).
    shell._showtraceback(etype, value, [f"{RED}{etype.__name__}{RESET}: {value}"])


def show_problems_briefly(shell) -> None:
    """One line per warning, one line per project error, in the notebook of `shell`."""
    warnings.formatwarning = one_line_warning
    shell.set_custom_exc((ExplainedError,), brief_error)  # the errors nbhelpers raises on purpose
