"""Every record in a run folder agrees with its checkpoint, or the run says which one disagrees
and how to mend it; a resume repairs what it can (issue 29, the third probe).

Each test names the row of the issue's table it answers; each failed before its fix.
"""
import csv
import errno
import json
import os
from pathlib import Path

import pytest
import torch

from nbhelpers.config import SIZES, TrainConfig, make_config
from nbhelpers.runs import folder as R
from nbhelpers.runs import load as L
from nbhelpers.runs import training
from nbhelpers.runs.load import load_run
from nbhelpers.runs.lock import LOCK, FolderNotWritable, is_locked

TINY = dict(backbone_out_channels=16, hidden_size=32, batch_size=32, train_subset=320,
            test_subset=100, progress="none", deterministic=True)
TABLE_FILES = (R.HISTORY, R.STEPS, R.BRANCH_WEIGHTS)


@pytest.fixture
def finished_run(synthetic_data, tmp_path) -> Path:
    training.fit(data=synthetic_data, run_dir=tmp_path / "done", num_epochs=2, **TINY)
    return tmp_path / "done"


def _tables(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in TABLE_FILES}


def _table_rows(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    """Each table file's rows, as text."""
    rows = {}
    for name in TABLE_FILES:
        with open(run_dir / name, newline="") as fh:
            rows[name] = list(csv.DictReader(fh))
    return rows


def _checkpoint_rows(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    """The tables as the checkpoint holds them, as the text a CSV file holds."""
    checkpoint = torch.load(run_dir / R.CHECKPOINT, weights_only=True)
    return {name: [{k: str(v) for k, v in row.items()} for row in checkpoint[attribute]]
            for attribute, name in R.TABLES.items()}


def _resume(synthetic_data, run_dir: Path):
    return training.fit(data=synthetic_data, run_dir=run_dir, num_epochs=2, resume=True, **TINY)


def _one_line_error(run_dir: Path) -> str:
    with pytest.raises(R.RunFolderError) as info:
        load_run(run_dir, device="cpu")
    assert "\n" not in str(info.value)
    return str(info.value)


# 5, 6: stopped between the last epoch's checkpoint and its tables -------------
@pytest.mark.parametrize("how", ["interrupted", "disk full while writing steps.csv"])
def test_5_6_a_run_stopped_before_its_last_tables_gets_them_back_on_resume(
        synthetic_data, tmp_path, monkeypatch, how):
    run_dir = tmp_path / "run"
    real_write_tables = training.write_tables

    def stop_after_the_last_checkpoint(run):
        if len(run.history) < 2:
            return real_write_tables(run)
        if how == "interrupted":  # Ctrl-C, SIGTERM, kill -9: the checkpoint is written, the tables are not
            raise KeyboardInterrupt
        # history.csv is written, steps.csv meets a full disk (/dev/full: the kernel's "No space left").
        (run_dir / f"{R.STEPS}.{os.getpid()}.tmp").symlink_to("/dev/full")
        return real_write_tables(run)

    monkeypatch.setattr(training, "write_tables", stop_after_the_last_checkpoint)
    with pytest.raises((KeyboardInterrupt, R.RunFolderError)):
        training.fit(data=synthetic_data, run_dir=run_dir, num_epochs=2, **TINY)
    monkeypatch.undo()
    assert torch.load(run_dir / R.CHECKPOINT, weights_only=True)["epoch"] == 2
    assert _table_rows(run_dir) != _checkpoint_rows(run_dir), "the tables lack the last epoch"

    _resume(synthetic_data, run_dir)  # what every message advises
    assert _table_rows(run_dir) == _checkpoint_rows(run_dir)
    run = load_run(run_dir, device="cpu")
    assert run.finished and len(run.history) == 2
    assert run.steps[-1]["epoch"] == 2 and run.branch_weights[-1]["epoch"] == 2


# 7, 8: a finished run's table damaged -----------------------------------------
@pytest.mark.parametrize("name", [R.STEPS, R.HISTORY])
def test_7_8_the_resume_a_damaged_table_advises_repairs_it(synthetic_data, finished_run, name):
    before = _tables(finished_run)
    text = (finished_run / name).read_text()
    (finished_run / name).write_text(text[:len(text) // 2] + "\nx,y\n")  # cut, and a line of junk
    message = _one_line_error(finished_run)
    assert f"{finished_run / name} is damaged" in message and "Resuming the run rewrites it" in message
    _resume(synthetic_data, finished_run)
    assert _tables(finished_run) == before
    assert len(load_run(finished_run, device="cpu").history) == 2


# 9: history.csv with an epoch too many ----------------------------------------
def test_9_a_history_with_an_epoch_too_many_is_refused_and_repaired_by_resume(synthetic_data, finished_run):
    before = _tables(finished_run)
    text = (finished_run / R.HISTORY).read_text()
    last = text.splitlines()[-1].split(",")
    last[0] = "3"
    (finished_run / R.HISTORY).write_text(text + ",".join(last) + "\n")
    message = _one_line_error(finished_run)
    assert message.startswith(f"{finished_run / R.HISTORY} holds 3 rows, the last for epoch 3, "
                              "but the run trained epochs 1 to 2")
    assert "-p resume True" in message
    _resume(synthetic_data, finished_run)
    assert _tables(finished_run) == before


# 10, 11: config.json edited ---------------------------------------------------
def _edit_config(run_dir: Path, **values) -> None:
    info = json.loads((run_dir / R.CONFIG).read_text())
    info["config"].update(values)
    (run_dir / R.CONFIG).write_text(json.dumps(info))


@pytest.mark.parametrize("values, says", [
    (dict(mixing="softmax"), "mixing: 'softmax' in config.json, 'seed' in checkpoint.pt"),
    (dict(backbone_out_channels=100_000), "backbone_out_channels: 100000 in config.json, 16 in checkpoint.pt"),
])
def test_10_11_a_config_json_that_disagrees_with_the_checkpoint_is_refused(finished_run, values, says):
    _edit_config(finished_run, **values)
    message = _one_line_error(finished_run)
    assert message.startswith(f"{finished_run / R.CONFIG} disagrees with {finished_run / R.CHECKPOINT}")
    assert says in message and "Put the checkpoint's values back" in message


def test_11_a_huge_width_that_model_pt_does_not_have_allocates_nothing(finished_run, monkeypatch):
    """Without a checkpoint, model.pt's shapes are compared with the model on the meta device."""
    (finished_run / R.CHECKPOINT).unlink()
    _edit_config(finished_run, backbone_out_channels=100_000)
    real_build_model = L.build_model

    def shapes_only(config, num_classes=10):
        assert torch.get_default_device().type == "meta", "a model of the edited width was allocated"
        return real_build_model(config, num_classes)
    monkeypatch.setattr(L, "build_model", shapes_only)
    message = _one_line_error(finished_run)
    assert message.startswith(f"The weights in {finished_run} do not fit the model its config.json describes")
    assert "(16, 3, 3, 3) in the weights, (100000, 3, 3, 3) in the model" in message


# 14: a size given to TrainConfig itself -----------------------------------------
def test_14_a_trainconfig_trains_at_the_size_it_records():
    tiny = TrainConfig(size="tiny")
    assert {k: getattr(tiny, k) for k in SIZES["tiny"]} == SIZES["tiny"]
    assert make_config(tiny) == tiny  # what fit trains with
    assert TrainConfig(size="tiny", num_epochs=5).num_epochs == 5  # an explicit value still wins
    assert TrainConfig(size="auto").size in ("full", "demo")  # chosen, never stored unresolved
    assert TrainConfig().num_epochs == 60 and TrainConfig().backbone_out_channels == 1024


# 18, 22: a lock file that cannot be written ---------------------------------------
def _refuse_to_write(path: Path, monkeypatch) -> None:
    """`path` cannot be opened for writing, as a file of someone else's (chmod stops no root)."""
    real_open = open

    def guarded(file, mode="r", *args, **kwargs):
        if Path(file) == path and set(mode) & set("wax+"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)
    monkeypatch.setattr("builtins.open", guarded)


@pytest.mark.parametrize("lock", ["not writable", "a folder"])
def test_18_22_a_lock_file_that_cannot_be_written_is_named_in_one_line(synthetic_data, tmp_path, monkeypatch, lock):
    run_dir = tmp_path / "run"
    if lock == "a folder":
        (run_dir / LOCK).mkdir(parents=True)
    else:
        run_dir.mkdir()
        (run_dir / LOCK).write_text("host h, pid 1, since then\n")
        _refuse_to_write(run_dir / LOCK, monkeypatch)
        assert is_locked(run_dir) is False  # it only reads
    with pytest.raises(FolderNotWritable) as info:
        training.fit(data=synthetic_data, run_dir=run_dir, num_epochs=1, **TINY)
    message = str(info.value)
    assert f"its lock file {run_dir / LOCK} cannot be opened for writing" in message and "\n" not in message
    assert ("Is a directory" if lock == "a folder" else "Permission denied") in message
