"""Nothing a run wrote is ever lost, and every bad input stops before work starts.

One test per case that a careless or hostile user tried (issue 13), numbered
as there; each failed before the run folder rules of nbhelpers.runs existed.
"""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nbhelpers import train as T
from nbhelpers.runs import training
from nbhelpers.config import ConfigError
from nbhelpers.data import write_synthetic_cifar10
from nbhelpers.runs.lock import LOCK
from nbhelpers.runs.folder import RunFolderError, ResumeError, latest_run_dir
from nbhelpers.runs.load import load_run

TINY = dict(backbone_out_channels=16, hidden_size=32, batch_size=32, train_subset=320,
            test_subset=100, progress="none", deterministic=True)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """The run's files (not the lock, which names the last process that looked in)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != LOCK}


@pytest.fixture
def finished_run(synthetic_data, tmp_path) -> Path:
    training.fit(data=synthetic_data, run_dir=tmp_path / "done", num_epochs=2, **TINY)
    return tmp_path / "done"


# 1 ---------------------------------------------------------------------------
def test_1_a_finished_run_without_its_checkpoint_is_never_overwritten(synthetic_data, finished_run):
    (finished_run / "checkpoint.pt").unlink()
    before = _snapshot(finished_run)
    with pytest.raises(RunFolderError, match=r"already holds files \(branch_weights.csv, config.json, history.csv, model.pt, steps.csv\)"):
        training.fit(data=synthetic_data, run_dir=finished_run, num_epochs=1, **TINY)
    assert _snapshot(finished_run) == before


# 2 ---------------------------------------------------------------------------
def test_2_an_epoch_with_broken_batchnorm_statistics_is_not_checkpointed(
        synthetic_data, tmp_path, monkeypatch, after_step):
    """The training loss stays finite (training BatchNorm uses batch statistics), evaluation does not."""
    built = {}
    original_build = T.build_training

    def build_and_remember(*args, **kwargs):
        built["model"], *rest = original_build(*args, **kwargs)
        return (built["model"], *rest)

    def poison_running_variance(optimizer):  # what an overflowing variance becomes
        bn = next(m for m in built["model"].modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.running_var.fill_(float("nan"))

    monkeypatch.setattr(training, "build_training", build_and_remember)
    after_step(10 + 3, poison_running_variance)  # epoch 2 (10 steps of 32 images each), its third step
    with pytest.raises(training.TrainingDiverged) as info:
        training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=3, **TINY)
    message = str(info.value)
    assert "Epoch 2 was not finite" in message and "test loss" in message and "running_var" in message
    assert "still holds epoch 1, the last one that was finite throughout" in message
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


# 3 ---------------------------------------------------------------------------
def test_3_resuming_on_other_data_is_refused_and_config_json_kept(synthetic_data, tmp_path):
    training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, stop_after=1, **TINY)
    config_before = (tmp_path / "run" / "config.json").read_bytes()
    other = tmp_path / "other-data"
    write_synthetic_cifar10(other, train_per_class=40, test_per_class=10, seed=99)
    with pytest.warns(UserWarning), pytest.raises(ResumeError, match="was trained on other data"):
        training.fit(data_dir=str(other), run_dir=tmp_path / "run", num_epochs=2, resume=True, **TINY)
    assert (tmp_path / "run" / "config.json").read_bytes() == config_before


# 4 ---------------------------------------------------------------------------
def test_4_a_misspelt_papermill_parameter_stops_the_notebook(tmp_path):
    """End to end: papermill injects -p per_clas 3 into notebook 01; its setup cell refuses it."""
    from nbhelpers.jobs.series import NOTEBOOKS_DIR
    result = subprocess.run(
        [sys.executable, "-m", "papermill", str(NOTEBOOKS_DIR / "01_data_exploration.ipynb"),
         str(tmp_path / "out.ipynb"), "-p", "per_clas", "3", "--cwd", str(NOTEBOOKS_DIR)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "-p per_clas (did you mean per_class?): not a parameter of this notebook" in result.stderr


# 5 ---------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, expected", [
    (dict(batch_size=1), "batch_size=1 is not allowed: batch_size must be an integer >= 2"),
    (dict(rand_seed=5_000_000_000), "rand_seed=5000000000 is not allowed"),
    (dict(num_epochs=1e9), "num_epochs=1000000000.0 is not allowed"),
    (dict(train_subset=60000), "train_subset=60000 is not possible"),
    (dict(test_subset=7), "test_subset=7 is not possible: it must be from 10 (one image per class)"),
    (dict(train_subset=100, batch_size=128), "batch_size=128 is larger than the 100 training images"),
])
def test_5_bad_values_stop_before_anything_is_created(synthetic_data, tmp_path, overrides, expected):
    with pytest.raises(ConfigError) as info:
        training.fit(data=synthetic_data, run_dir=tmp_path / "run", **{**TINY, "num_epochs": 1, **overrides})
    assert str(info.value).startswith(expected)
    assert not (tmp_path / "run").exists()


# 6 ---------------------------------------------------------------------------
def test_6_a_crashed_run_is_not_evaluated_as_final(synthetic_data, finished_run, tmp_path):
    crashed = tmp_path / "crashed"
    with pytest.raises(training.TrainingDiverged):
        training.fit(data=synthetic_data, run_dir=crashed, num_epochs=2, max_lr=1e12, **TINY)
    os.utime(crashed / "config.json")  # started after the finished run
    assert latest_run_dir(tmp_path) == crashed
    assert latest_run_dir(tmp_path, finished=True) == finished_run  # what 04 evaluates by default
    with pytest.raises(RunFolderError) as info:
        load_run(crashed, device="cpu")
    message = str(info.value)
    assert "is unfinished: it stopped before its first epoch ended" in message
    assert f"-p resume True -p run_dir {crashed}" in message


def test_6_an_unfinished_run_loads_only_when_asked_and_says_so(synthetic_data, tmp_path):
    training.fit(data=synthetic_data, run_dir=tmp_path / "half", num_epochs=2, stop_after=1, **TINY)
    with pytest.raises(RunFolderError, match="stopped after epoch 1 of 2"):
        load_run(tmp_path / "half", device="cpu")
    run = load_run(tmp_path / "half", device="cpu", unfinished=True)
    assert not run.finished and len(run.history) == 1


# 7 ---------------------------------------------------------------------------
class Payload:
    def __reduce__(self):
        return (os.system, ("echo owned",))


@pytest.mark.parametrize("damage", ["truncated", "pickle payload"])
def test_7_a_damaged_checkpoint_says_what_to_do_without_weakening_safety(
        synthetic_data, tmp_path, damage):
    training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, stop_after=1, **TINY)
    path = tmp_path / "run" / "checkpoint.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:2000])
    else:
        path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ResumeError) as info:
        training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, resume=True, **TINY)
    message = str(info.value)
    assert "weights_only" not in message and "cannot be continued from it" in message
    assert "Start a new run in another folder" in message
    # ... and the way out does not loop back to resume:
    with pytest.raises(RunFolderError, match="Choose another run_dir"):
        training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, **TINY)
    training.fit(data=synthetic_data, run_dir=tmp_path / "new", num_epochs=1, **TINY)


# 8 ---------------------------------------------------------------------------
def test_8_resuming_a_finished_run_restores_its_history(synthetic_data, finished_run):
    rows = (finished_run / "history.csv").read_text()
    (finished_run / "history.csv").unlink()
    training.fit(data=synthetic_data, run_dir=finished_run, num_epochs=2, resume=True, **TINY)
    assert (finished_run / "history.csv").read_text() == rows
    assert len(load_run(finished_run, device="cpu").history) == 2


# 9 ---------------------------------------------------------------------------
def test_9_a_full_disk_stops_with_a_clear_message_and_leaves_no_temporary_file(
        synthetic_data, tmp_path):
    training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=3, stop_after=1, **TINY)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    # Every write through this name lands on /dev/full: the kernel's real "No space left".
    # (fit writes through <file>.<its pid>.tmp, and runs in this process here).
    temporary = tmp_path / "run" / f"checkpoint.pt.{os.getpid()}.tmp"
    temporary.symlink_to("/dev/full")
    with pytest.raises(RunFolderError) as info:
        training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=3, resume=True, **TINY)
    message = str(info.value)
    assert message.startswith("Could not write checkpoint.pt into")
    assert "no space left on the disk" in message and "-p resume True" in message
    assert not temporary.exists() and not list((tmp_path / "run").glob("*.tmp"))
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


# 10 --------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_10_the_divergence_hint_gives_only_advice_that_helps(synthetic_data, tmp_path, precision):
    with pytest.raises(training.TrainingDiverged) as info:
        training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, max_lr=1e12,
                     precision=precision, **TINY)
    message = str(info.value)
    assert "a smaller max_lr (now 1e+12" in message and "learning_rate has no effect" in message
    assert ("precision='fp32'" in message) == (precision == "bf16")


def test_1_resuming_a_finished_run_without_its_checkpoint_is_refused_too(synthetic_data, finished_run):
    """resume=True must not take such a folder for a run that never finished an epoch."""
    (finished_run / "checkpoint.pt").unlink()
    before = _snapshot(finished_run)
    with pytest.raises(ResumeError, match=r"no checkpoint.pt to continue from.*\(branch_weights.csv, config.json, history.csv, model.pt, steps.csv\)"):
        training.fit(data=synthetic_data, run_dir=finished_run, num_epochs=2, resume=True, **TINY)
    assert _snapshot(finished_run) == before
