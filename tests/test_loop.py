"""Notebook 03 shows the training loop that fit runs: its source, read from the function fit calls."""
import inspect

import IPython.display
import nbformat

from nbhelpers import train as T
from nbhelpers.runs import training
from nbhelpers.jobs.series import NOTEBOOKS_DIR


def _cell_showing_the_loop() -> str:
    notebook = nbformat.read(NOTEBOOKS_DIR / "03_train.ipynb", as_version=4)
    cells = [cell.source for cell in notebook.cells
             if cell.cell_type == "code" and "inspect.getsource(" in cell.source]
    assert len(cells) == 1, "03 should show the loop in exactly one cell"
    return cells[0]


def _what_the_cell_displays(monkeypatch) -> str:
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **_: shown.extend(objects))
    exec(_cell_showing_the_loop(), {})
    [code] = shown
    return code.data


def test_notebook_03_shows_the_source_of_the_epoch_loop_that_fit_calls(synthetic_data, tmp_path, monkeypatch):
    shown = _what_the_cell_displays(monkeypatch)
    called = []
    original = T.train_epoch

    def spy(*args, **kwargs):
        called.append(original)
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", spy)
    run = training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, backbone_out_channels=8,
                       hidden_size=16, train_subset=200, test_subset=100, progress="none")
    assert len(called) == len(run.history) == 2  # fit trains every epoch through train_epoch
    assert shown == inspect.getsource(called[0])  # and that is the code 03 shows, to the character
    # the parts the notebook's prose names are in it
    for line in ("loss.backward()", "optimizer.step()", "scheduler.step()", "if per_batch:"):
        assert line in shown
