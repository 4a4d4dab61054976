"""What a student sees in a notebook: setup()'s one-line warnings and errors, the live training curves.

These run small notebooks in a real Jupyter kernel through papermill, the way
the series runs, and read the outputs the kernel produced.
"""
import sys
import warnings

import nbformat
import papermill
import pytest

from nbhelpers.config import ConfigError
from nbhelpers.data import CIFAR10DataError
from nbhelpers.errors import ExplainedError
from nbhelpers.notebook import jupyter_shell, one_line_warning
from nbhelpers.runs.folder import RunFolderError
from nbhelpers.runs.folder import ResumeError
from nbhelpers.runs.training import TrainingDiverged


def _execute(tmp_path, *sources: str):
    """Run the cells in a python3 kernel; the executed notebook, and papermill's error if a cell failed."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata.kernelspec = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                    "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(notebook, tmp_path / "in.ipynb")
    error = None
    with warnings.catch_warnings():  # papermill's and jupyter_client's own chatter
        warnings.simplefilter("ignore")
        try:
            papermill.execute_notebook(tmp_path / "in.ipynb", tmp_path / "out.ipynb", kernel_name="python3",
                                       cwd=str(tmp_path), progress_bar=False)
        except papermill.PapermillExecutionError as raised:
            error = raised
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    # papermill puts a markdown banner above a failed run: keep only the cells given here
    return [cell for cell in executed.cells if cell.cell_type == "code"], error


def _shell_of_class(name: str, base: type) -> object:
    """An instance of a class called `name` derived from `base`, built without starting anything."""
    cls = type(name, (base,), {})
    return cls.__new__(cls)


def test_the_jupyter_shell_is_found_by_what_it_is_a_subclass_named_shell_as_on_colab(monkeypatch):
    import IPython
    from ipykernel.zmqshell import ZMQInteractiveShell
    colab_like = _shell_of_class("Shell", ZMQInteractiveShell)
    monkeypatch.setattr(IPython, "get_ipython", lambda: colab_like)
    assert jupyter_shell() is colab_like


def test_a_shell_that_only_bears_the_kernels_class_name_or_no_shell_is_no_jupyter_shell(monkeypatch):
    import IPython
    from IPython.core.interactiveshell import InteractiveShell
    impostor = _shell_of_class("ZMQInteractiveShell", InteractiveShell)  # as a terminal's would be
    monkeypatch.setattr(IPython, "get_ipython", lambda: impostor)
    assert jupyter_shell() is None
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    assert jupyter_shell() is None


def test_without_ipykernel_there_is_no_jupyter_shell(monkeypatch):
    import IPython
    from ipykernel.zmqshell import ZMQInteractiveShell
    monkeypatch.setattr(IPython, "get_ipython", lambda: _shell_of_class("Shell", ZMQInteractiveShell))
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", None)  # `import` raises ImportError
    assert jupyter_shell() is None


def test_a_warning_formats_as_its_category_and_message_only():
    line = one_line_warning("not the official copy", UserWarning, "/tmp/ipykernel_1/123.py", 7, "source")
    assert line == "UserWarning: not the official copy\n"


def test_the_project_errors_cover_parameters_data_run_folders_divergence_and_sweeps():
    from nbhelpers.jobs.sweep import SweepError
    for error in (ConfigError, CIFAR10DataError, RunFolderError, ResumeError, TrainingDiverged, SweepError):
        assert issubclass(error, ExplainedError)
    assert not issubclass(KeyError, ExplainedError)


def test_after_setup_warnings_are_one_line_and_project_errors_one_message_and_the_run_still_fails(tmp_path):
    cells, error = _execute(
        tmp_path,
        "from nbhelpers.notebook import setup\ndevice = setup(seed=1)",
        "import warnings\nfrom nbhelpers.data import UnofficialCopyWarning\n"
        "warnings.warn('not the official copy', UnofficialCopyWarning)",
        "from nbhelpers.config import TrainConfig\nTrainConfig(num_epochs=-1)",
        "print('not reached')",
    )
    warned = [o for o in cells[1].outputs if o.output_type == "stream" and o.name == "stderr"]
    assert "".join(o.text for o in warned) == "UnofficialCopyWarning: not the official copy\n"

    failed = [o for o in cells[2].outputs if o.output_type == "error"]
    assert len(failed) == 1 and failed[0].ename == "ConfigError"
    assert len(failed[0].traceback) == 1, "one line, not a traceback through the library"
    assert "ConfigError" in failed[0].traceback[0] and "num_epochs" in failed[0].traceback[0]

    # The cell still fails: papermill stops there and reports the error (its CLI exits non-zero).
    assert error is not None and error.ename == "ConfigError"
    assert cells[3].execution_count is None and not cells[3].outputs


def test_in_a_kernel_whose_shell_is_a_subclass_named_shell_as_on_colab_errors_are_still_one_line(tmp_path):
    cells, error = _execute(
        tmp_path,
        "shell = get_ipython()\nshell.__class__ = type('Shell', (type(shell),), {})  # Colab's shell\n"
        "print(type(get_ipython()).__name__)",
        "from nbhelpers.notebook import setup\ndevice = setup(seed=1)",
        "from nbhelpers.config import TrainConfig\nTrainConfig(num_epochs=-1)",
    )
    assert cells[0].outputs[0].text == "Shell\n"
    failed = [o for o in cells[2].outputs if o.output_type == "error"]
    assert error is not None and failed[0].ename == "ConfigError" and len(failed[0].traceback) == 1


def test_the_first_cells_find_the_project_from_a_kernel_working_outside_it(tmp_path, monkeypatch):
    """As on Colab: the project cloned and installed (pip install -e) in one folder, the kernel in another."""
    from nbhelpers.runtime import PROJECT_ROOT
    from nbhelpers.jobs.series import NOTEBOOKS_DIR
    monkeypatch.delenv("CIFAR10_ROOT", raising=False)
    notebook = nbformat.read(NOTEBOOKS_DIR / "01_data_exploration.ipynb", as_version=4)
    parameters, first = [cell.source for cell in notebook.cells if cell.cell_type == "code"][:2]
    assert not PROJECT_ROOT.is_relative_to(tmp_path)
    cells, error = _execute(tmp_path, parameters, first,
                            "import os\nfrom nbhelpers.data import resolve_data_root\n"
                            "from nbhelpers.runtime import project_path\n"
                            "print(os.getcwd(), resolve_data_root(data_dir), project_path(figures_dir), sep='\\n')")
    assert error is None
    assert " at data/cifar-10-batches-py" in cells[1].outputs[0].text  # the project's, named from its root
    assert cells[2].outputs[0].text == f"{tmp_path}\n{PROJECT_ROOT / 'data'}\n{PROJECT_ROOT / 'runs' / 'figures'}\n"


def test_other_errors_keep_their_traceback(tmp_path):
    cells, error = _execute(tmp_path, "from nbhelpers.notebook import setup\ndevice = setup(seed=1)",
                            "def f():\n    raise KeyError('x')\nf()")
    failed = [o for o in cells[1].outputs if o.output_type == "error"]
    assert error is not None and failed[0].ename == "KeyError" and len(failed[0].traceback) > 1


HISTORY = """
import nbhelpers.progress as progress_module
from nbhelpers.progress import Progress

history = [dict(epoch=e, train_loss=2.0 / e, train_acc=20.0 * e, test_loss=2.1 / e, test_acc=18.0 * e,
                lr=0.01, seconds=1.0) for e in (1, 2, 3, 4)]
drawn = []  # the epochs whose curves were drawn
draw = progress_module.curves_png
progress_module.curves_png = lambda history, num_epochs: drawn.append(len(history)) or draw(history, num_epochs)

def train(mode, fail=False):
    progress = Progress(mode, total_steps=8, num_epochs=4)
    try:
        for epoch in (1, 2, 3, 4):
            progress.start_epoch(epoch)
            progress.step()
            progress.step()
            progress.end_epoch(history[:epoch])
            if fail and epoch == 3:
                raise RuntimeError("stopped")
    finally:
        progress.close()
"""


def _images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


def _stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _epoch_lines(cell) -> list[str]:
    return [line for line in _stdout(cell).splitlines() if line.startswith("epoch")]


@pytest.fixture(scope="module")
def progress_cells(tmp_path_factory):
    """One kernel, five trainings of 4 instant epochs: log, none, bar (throttled, finished, stopped)."""
    cells, error = _execute(
        tmp_path_factory.mktemp("progress"), HISTORY,
        "train('log')\nprint(drawn)",
        "train('none')\nprint(drawn)",
        "train('bar')\nprint(drawn)",  # epochs in no time: drawing would be all the time there is
        "drawn.clear()\nprogress_module.DRAWING_SHARE = 1.0  # draw whatever it costs\n"
        "train('bar')\nprint(drawn)",
        "drawn.clear()\ntry:\n    train('bar', fail=True)\nexcept RuntimeError:\n    print(drawn)",
        "import matplotlib.pyplot as plt\nassert not plt.get_fignums(), 'no pyplot figure left open'")
    assert error is None
    return dict(zip(("log", "none", "throttled", "finished", "stopped"), cells[1:]))


@pytest.mark.parametrize("mode", ["log", "none"])
def test_log_and_none_modes_draw_no_curves_in_a_notebook(progress_cells, mode):
    cell = progress_cells[mode]
    assert not [o for o in cell.outputs if o.output_type == "display_data"]
    assert len(_epoch_lines(cell)) == (4 if mode == "log" else 0)
    assert _stdout(cell).endswith("[]\n")  # nothing drawn


def test_bar_mode_redraws_one_figure_in_place_and_clears_it_when_training_ends(progress_cells):
    throttled, finished, stopped = (progress_cells[k] for k in ("throttled", "finished", "stopped"))
    # Drawing takes at most DRAWING_SHARE of the time: here only the first epoch is drawn.
    assert _stdout(throttled).endswith("[1]\n")
    # Every epoch but the last is drawn (the last would be cleared at once), into one output,
    # which is emptied when training ends (03 draws the final curves next).
    assert _stdout(finished).endswith("[1, 2, 3]\n")
    assert len(_epoch_lines(finished)) == 4 and _images(finished) == 0
    # Stopped after epoch 3: the curves stay, as one output redrawn in place, not one per epoch.
    assert _stdout(stopped).endswith("[1, 2, 3]\n")
    assert len(_epoch_lines(stopped)) == 3 and _images(stopped) == 1
