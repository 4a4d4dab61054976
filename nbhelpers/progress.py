"""What a student sees while a run trains: a bar, one line per epoch, live curves.

`fit` makes one `Progress` per call and tells it about every step and every
finished epoch; how that shows depends on where the code runs:
- "bar": tqdm's bar (a widget in JupyterLab, text in a terminal) and a line per epoch;
- "log": only the line per epoch, for papermill `--log-output` and CI logs;
- "none": nothing.
"""
from __future__ import annotations

import importlib.util
import sys

from tqdm.auto import tqdm

from .config import AUTO


def _widget_notebook() -> bool:
    """In a Jupyter kernel that can draw tqdm's widget bar (ipywidgets installed)?"""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell else None
    if ip is None or type(ip).__name__ != "ZMQInteractiveShell":
        return False
    # Without ipywidgets tqdm falls back to a text bar, one output per update.
    return importlib.util.find_spec("ipywidgets") is not None


def progress_mode(requested: str) -> str:
    """"auto": a bar where one can be drawn (JupyterLab with widgets, a terminal), else log lines.

    Epoch lines are printed in both "bar" and "log" modes, so that
    `papermill --log-output` shows one plain line per epoch: the bar's widget
    shows up in that log only once, when it is created.
    """
    if requested != AUTO:
        return requested
    return "bar" if _widget_notebook() or sys.stderr.isatty() else "log"


def epoch_line(row: dict[str, float], num_epochs: int) -> str:
    parts = [f"epoch {int(row['epoch']):>3}/{num_epochs}",
             f"train loss {row['train_loss']:.4f} acc {row['train_acc']:6.2f}%"]
    if "val_acc" in row:
        parts.append(f"val loss {row['val_loss']:.4f} acc {row['val_acc']:6.2f}%")
    parts += [f"test loss {row['test_loss']:.4f} acc {row['test_acc']:6.2f}%",
              f"lr {row['lr']:.5f}", f"{row['seconds']:.1f} s"]
    return " | ".join(parts)


class Progress:
    """The bar and the epoch lines of one `fit` call."""

    def __init__(self, requested: str, total_steps: int, num_epochs: int):
        self.mode = progress_mode(requested)
        self.num_epochs = num_epochs
        self.bar = tqdm(total=total_steps, desc="training", unit="step",
                        disable=(self.mode != "bar"), dynamic_ncols=True)

    def start_epoch(self, epoch: int) -> None:
        self.bar.set_description(f"epoch {epoch}/{self.num_epochs}")

    def step(self) -> None:
        self.bar.update()

    def end_epoch(self, history: list[dict[str, float]]) -> None:
        """After each epoch: its line (history[-1]); `history` holds every epoch so far."""
        if self.mode in ("bar", "log"):
            line = epoch_line(history[-1], self.num_epochs)
            (self.bar.write if self.mode == "bar" else print)(line)

    def close(self) -> None:
        self.bar.close()
