"""What a student sees while a run trains: a bar, one line per epoch, live curves.

`fit` (notebook 03, and every run of a sweep) makes one `Progress` per call
and tells it about every step and every finished epoch; how that shows
depends on where the code runs:
- "bar": tqdm's bar (a widget in JupyterLab, text in a terminal) and a line per
  epoch; in a Jupyter kernel also the loss and accuracy curves, redrawn in place
  after every epoch (skipping epochs only where drawing would cost more than
  DRAWING_SHARE of the time) and cleared when training ends;
- "log": only the line per epoch, for papermill `--log-output` and CI logs;
in "bar" and "log" modes, a line once the first steps are timed estimates the
whole run (RunEstimate), and every epoch's line says about how long is left;
- "none": nothing.
"""
from __future__ import annotations

import base64
import importlib.util
import io
import sys
import time
from collections.abc import Sequence

from tqdm.auto import tqdm

from .config import AUTO
from .notebook import jupyter_shell

__all__ = ["DRAWING_SHARE", "progress_mode", "epoch_line", "duration", "after_warm_up", "LONG_RUN", "RunEstimate",
           "curves_png", "LiveCurves", "Progress"]

# Drawing the curves takes a few tenths of a second, in the training loop's thread: at most
# this share of the training time goes to it (on a GPU some epochs then skip their redraw).
DRAWING_SHARE = 0.05


def _widget_notebook() -> bool:
    """In a Jupyter kernel that can draw tqdm's widget bar (ipywidgets installed)?"""
    # Without ipywidgets tqdm falls back to a text bar, one output per update.
    return jupyter_shell() is not None and importlib.util.find_spec("ipywidgets") is not None


def progress_mode(requested: str) -> str:
    """"auto": a bar where one can be drawn (a Jupyter kernel with widgets, a terminal), else log lines.

    papermill runs the notebooks in a Jupyter kernel too, so "auto" gives the bar
    there as well. Epoch lines are printed in both "bar" and "log" modes, so that
    `papermill --log-output` shows one plain line per epoch: the bar's widget
    shows up in that log only once, when it is created, and the live curves never
    (they carry no text, and papermill logs no display updates).
    """
    if requested != AUTO:
        return requested
    return "bar" if _widget_notebook() or sys.stderr.isatty() else "log"


def epoch_line(row: dict[str, float], num_epochs: int, seconds_left: float | None = None) -> str:
    parts = [f"epoch {int(row['epoch']):>3}/{num_epochs}",
             f"train loss {row['train_loss']:.4f} acc {row['train_acc']:6.2f}%"]
    if "val_acc" in row:
        parts.append(f"val loss {row['val_loss']:.4f} acc {row['val_acc']:6.2f}%")
    parts += [f"test loss {row['test_loss']:.4f} acc {row['test_acc']:6.2f}%",
              f"lr {row['lr']:.5f}", f"{row['seconds']:.1f} s"]
    if seconds_left:
        parts.append(f"about {duration(seconds_left)} left")
    return " | ".join(parts)


def duration(seconds: float) -> str:
    """ "45 s", "4 min 30 s", "2 h 10 min", "21 days": as precise as a person reads it."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    if seconds < 48 * 3600:
        return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"
    return f"{seconds / 86400:.0f} days"


def after_warm_up(epochs: Sequence) -> Sequence:
    """The epochs that time the steady pace: all but the first, which also warms up (allocations,
    oneDNN's kernels) and, with torch.compile, compiles: half a minute more on a CPU. One alone if one."""
    return epochs[1:] or epochs


# An estimate past this many seconds is said to be more than an afternoon, plainly.
LONG_RUN = 3 * 3600


class RunEstimate:
    """Times the first training steps of a run and says, once, what the whole run will take.

    The first step is left out of the timing (it allocates memory, and on a GPU
    compiles the model); the steps after it are timed until five have passed or
    ten seconds, whichever comes first, so even a step of minutes (the full
    model on a CPU) gives an estimate after two steps. Evaluation is estimated
    as forward passes over the images it measures: a third of a training
    step's work per image.
    """

    def __init__(self, steps: int, epochs: int, batch_size: int, eval_images: int, where: str,
                 sync=lambda: None):
        self.steps, self.epochs, self.where, self.sync = steps, epochs, where, sync
        self.eval_steps = epochs * eval_images / batch_size / 3
        self.started = time.perf_counter()
        self.taken, self.timed_from, self.said = 0, None, False

    def step(self) -> str | None:
        """Call after every training step; returns the estimate's line once, when measured."""
        self.taken += 1
        if self.said:
            return None
        if self.timed_from is None:  # the first step: not timed
            self.sync()  # a GPU runs ahead of Python: wait for the step to be done
            self.timed_from = time.perf_counter()
            return None
        timed = self.taken - 1
        if timed < 5 and time.perf_counter() - self.timed_from < 10 and self.taken < self.steps:
            return None
        self.sync()
        now = time.perf_counter()
        per_step = (now - self.timed_from) / timed
        self.said = True
        total = now - self.started + per_step * (self.steps - self.taken + self.eval_steps)
        line = (f"estimated {duration(total)} for {self.epochs} epoch{'s' * (self.epochs != 1)} "
                f"({self.steps:,} steps of {1000 * per_step:,.0f} ms, and evaluation) on {self.where}")
        if total > LONG_RUN:
            line += (": more than a few hours. Stopping now loses nothing (-p resume True continues "
                     "the run); a smaller size runs in minutes (-p size demo)")
        return line


def curves_png(history: list[dict[str, float]], num_epochs: int, dpi: int = 72) -> bytes:
    """`plots.training_curves` of the epochs so far, on the axis of the whole run, as PNG bytes."""
    import matplotlib.pyplot as plt

    from .plots import training_curves  # plots imports torch and matplotlib: only when drawing

    fig = training_curves(history)
    try:
        for ax in fig.axes:  # the epochs still to come stay visible as the room left to fill
            ax.set_xlim(0.5, num_epochs + 0.5)
        for text in list(fig.axes[1].texts):
            # Its "final test" note is not final mid-run; the epoch lines below give the numbers.
            text.remove()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        return buffer.getvalue()
    finally:
        # An open pyplot figure would be drawn once more when the cell ends.
        plt.close(fig)


class LiveCurves:
    """One output below the bar, redrawn after the epochs and cleared when training ends.

    The output is created empty at the start, so that it stays right under the
    bar while the epoch lines accumulate below it. It holds only a PNG and no
    text, so papermill's `--log-output` never prints it. When training finishes,
    the output is emptied: the notebook draws the final curves itself (03 does,
    right after training) and a second copy would only repeat them. When training
    stops with an error or an interrupt, the last curves stay, to show how far it got.
    """

    def __init__(self, num_epochs: int):
        from IPython.display import display

        self.num_epochs = num_epochs
        self.handle = display({"text/html": ""}, raw=True, display_id=True)
        self.drawn_at = self.draw_seconds = 0.0

    def update(self, history: list[dict[str, float]]) -> None:
        if history[-1]["epoch"] >= self.num_epochs:
            return  # the last epoch: `close` empties the output right after
        started = time.perf_counter()
        if started - self.drawn_at < self.draw_seconds * (1 - DRAWING_SHARE) / DRAWING_SHARE:
            return
        png = base64.b64encode(curves_png(history, self.num_epochs)).decode("ascii")
        self.handle.update({"image/png": png}, raw=True)
        self.drawn_at = time.perf_counter()
        self.draw_seconds = self.drawn_at - started

    def close(self, finished: bool) -> None:
        if finished:
            self.handle.update({"text/html": ""}, raw=True)


class Progress:
    """The bar, the epoch lines and the live curves of one `fit` call."""

    def __init__(self, requested: str, total_steps: int, num_epochs: int,
                 estimate: RunEstimate | None = None):
        self.mode = progress_mode(requested)
        self.num_epochs, self.estimate = num_epochs, estimate
        self.epoch_seconds: list[float] = []  # of the epochs this call trained
        self.bar = tqdm(total=total_steps, desc="training", unit="step",
                        disable=(self.mode != "bar"), dynamic_ncols=True)
        self.curves = LiveCurves(num_epochs) if self.mode == "bar" and jupyter_shell() is not None else None

    def start_epoch(self, epoch: int) -> None:
        self.bar.set_description(f"epoch {epoch}/{self.num_epochs}")

    def step(self) -> None:
        self.bar.update()
        line = self.estimate.step() if self.estimate is not None else None
        if line:
            self.say(line)

    def say(self, line: str) -> None:
        """A line below the bar (in a notebook and a terminal) or in the log."""
        if self.mode == "bar":
            self.bar.write(line)
        elif self.mode == "log":
            print(line, flush=True)

    def end_epoch(self, history: list[dict[str, float]]) -> None:
        """After each epoch: its line (history[-1]) and the curves; `history` holds every epoch so far."""
        self.epoch_seconds.append(history[-1]["seconds"])
        paced = after_warm_up(self.epoch_seconds)
        left = (self.num_epochs - int(history[-1]["epoch"])) * sum(paced) / len(paced)
        self.say(epoch_line(history[-1], self.num_epochs, left))
        if self.curves is not None:
            self.curves.update(history)

    def close(self) -> None:
        self.bar.close()
        if self.curves is not None:
            # `fit` calls this from a `finally`: an exception on its way out means training stopped early.
            self.curves.close(finished=sys.exc_info()[0] is None)
