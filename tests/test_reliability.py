"""The second reliability round (issue 21), and the cluster's needs of it (issue 20).

One test per defect, numbered as in the issue, then the unclear cases, each of
which now ends in one message that names the problem and the fix. Every test
here failed against the code before the fix.
"""
import csv
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from nbhelpers.runs import folder as R
from nbhelpers.runs import load as L
from nbhelpers.jobs import sweep as S
from nbhelpers import train as T
from nbhelpers.runs import training
from nbhelpers.config import ConfigError, build_model, check_evaluation_parameters, make_config
from nbhelpers.data import UnofficialCopyWarning
from nbhelpers.errors import ExplainedError
from nbhelpers.runs.lock import LOCK, FolderInUse, folder_lock

TINY = dict(backbone_out_channels=16, hidden_size=32, batch_size=32, train_subset=320,
            test_subset=100, progress="none", deterministic=True)


def _rows(run_dir: Path) -> list[dict]:
    """history.csv without the seconds, which differ from run to run."""
    with open(run_dir / R.HISTORY, newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != LOCK}


@pytest.fixture
def finished_run(synthetic_data, tmp_path) -> Path:
    training.fit(data=synthetic_data, run_dir=tmp_path / "done", num_epochs=2, **TINY)
    return tmp_path / "done"


# 1: the data folder's unpickling is tests/test_data.py's (nbhelpers.data owns it).

# 2 ---------------------------------------------------------------------------
SLOW_RUN = """
import sys, warnings
warnings.simplefilter("ignore")
from nbhelpers.runs.training import fit
fit(data_dir=sys.argv[1], run_dir=sys.argv[2], num_epochs=50, resume=sys.argv[3] == "resume",
    backbone_out_channels=16, hidden_size=32, batch_size=8, train_subset=400, test_subset=100,
    progress="none", deterministic=True)
"""


def _start_slow_run(synthetic_root, run_dir, mode="new"):
    env = dict(os.environ, NBHELPERS_DEVICE="cpu")
    return subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(synthetic_root), str(run_dir), mode], env=env)


def _wait_for(path: Path, process, seconds=300):
    deadline = time.time() + seconds
    while not path.exists():
        assert process.poll() is None and time.time() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def test_2_a_second_run_or_resume_in_a_folder_in_use_is_refused(synthetic_root, synthetic_data, tmp_path):
    run_dir = tmp_path / "busy"
    process = _start_slow_run(synthetic_root, run_dir)
    try:
        _wait_for(run_dir / R.CHECKPOINT, process)
        for resume in (False, True):
            with pytest.raises(FolderInUse, match=rf"{run_dir} is in use: host .*, pid {process.pid}, since"):
                training.fit(data=synthetic_data, run_dir=run_dir, num_epochs=50, resume=resume,
                             **dict(TINY, batch_size=8, train_subset=400))
        assert process.poll() is None, "the run in the folder must go on undisturbed"
    finally:
        process.kill()
        process.wait()
    # The kernel dropped the killed process's lock: the run resumes now.
    training.fit(data=synthetic_data, run_dir=run_dir, num_epochs=50, stop_after=2, resume=True,
                 **dict(TINY, batch_size=8, train_subset=400))


def test_2_every_process_writes_its_own_temporary_file(tmp_path, monkeypatch):
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(R.os, "replace", lambda src, dst: (renamed.append(Path(src).name), real_replace(src, dst)))
    R.write_config(tmp_path, {"x": 1})
    assert renamed == [f"config.json.{os.getpid()}.tmp"]


# 3 ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../victim", "/etc/evil", "a/b", "..", ".", "", "x" * 300, "a\nb"])
def test_3_a_sweep_run_name_must_be_one_safe_folder_name(tmp_path, name):
    with pytest.raises(S.SweepError, match="run name"):
        S.make_sweep({name: {"num_epochs": 1}}, size="tiny", folder=tmp_path / "sweep")
    assert not (tmp_path / "victim").exists() and not (tmp_path / "sweep").exists()


# 4, and issue 20: a resume elsewhere keeps what the run resolved when it began -
def test_4_a_resume_on_another_cpu_keeps_the_runs_precision(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setattr("nbhelpers.config.cpu_has_fast_bf16", lambda: True)
    training.fit(data=synthetic_data, run_dir=tmp_path / "straight", num_epochs=2, **TINY)
    training.fit(data=synthetic_data, run_dir=tmp_path / "moved", num_epochs=2, stop_after=1, **TINY)
    monkeypatch.setattr("nbhelpers.config.cpu_has_fast_bf16", lambda: False)  # "another CPU"
    training.fit(data=synthetic_data, run_dir=tmp_path / "moved", num_epochs=2, resume=True, **TINY)
    assert _rows(tmp_path / "moved") == _rows(tmp_path / "straight")
    info = json.loads((tmp_path / "moved" / R.CONFIG).read_text())
    assert info["resolved"]["precision"] == "bf16"


def test_20_a_resume_on_another_thread_count_keeps_the_runs(synthetic_data, tmp_path, threads):
    threads(1)
    training.fit(data=synthetic_data, run_dir=tmp_path / "straight", num_epochs=2, **TINY)
    training.fit(data=synthetic_data, run_dir=tmp_path / "requeued", num_epochs=2, stop_after=1, **TINY)
    threads(2)  # the requeued task got two CPUs
    training.fit(data=synthetic_data, run_dir=tmp_path / "requeued", num_epochs=2, resume=True, **TINY)
    assert _rows(tmp_path / "requeued") == _rows(tmp_path / "straight")
    info = json.loads((tmp_path / "requeued" / R.CONFIG).read_text())
    assert info["threads"] == info["resolved"]["threads"] == 1


def test_20_a_run_begun_eager_stays_eager_where_auto_would_now_compile(synthetic_data, tmp_path, monkeypatch):
    # A `long` run interrupted before "auto" compiled on a CPU, resumed after: compiling would draw
    # other dropout masks from the resumed epoch on, so it keeps what it began with.
    from nbhelpers.config import TrainConfig
    training.fit(data=synthetic_data, run_dir=tmp_path / "straight", num_epochs=2, **TINY)
    training.fit(data=synthetic_data, run_dir=tmp_path / "resumed", num_epochs=2, stop_after=1, **TINY)
    monkeypatch.setattr(TrainConfig, "_compile_pays_on_cpu", lambda self, precision: True)
    training.fit(data=synthetic_data, run_dir=tmp_path / "resumed", num_epochs=2, resume=True, **TINY)
    assert _rows(tmp_path / "resumed") == _rows(tmp_path / "straight")
    assert json.loads((tmp_path / "resumed" / R.CONFIG).read_text())["resolved"]["compile"] is False


# 5 ---------------------------------------------------------------------------
def test_5_resuming_a_finished_run_writes_nothing(synthetic_data, finished_run):
    before = _files(finished_run)
    with pytest.raises(R.RunFolderError, match="is already finished: all 2 epochs are trained"):
        training.fit(data=synthetic_data, run_dir=finished_run, num_epochs=2, resume=True, **TINY)
    assert _files(finished_run) == before


# 6 ---------------------------------------------------------------------------
def test_6_evaluating_on_other_data_is_refused_naming_both(synthetic_data, synthetic_root, finished_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(synthetic_root, other)
    batch = other / "cifar-10-batches-py" / "test_batch"
    entry = pickle.loads(batch.read_bytes())
    entry["labels"] = [(label + 1) % 10 for label in entry["labels"]]  # the same images, shifted labels
    batch.write_bytes(pickle.dumps(entry, protocol=2))
    run = L.load_run(finished_run, device="cpu")
    with warnings.catch_warnings():  # loaded again where the cache let it go: the stand-in's warning
        warnings.simplefilter("ignore", UnofficialCopyWarning)
        assert len(L.load_test_split(run, synthetic_root)) == 100
    with pytest.warns(UserWarning), pytest.raises(R.RunFolderError) as info:
        L.load_test_split(run, other)
    message = str(info.value)
    assert synthetic_data.fingerprint in message and "was trained on other data" in message
    assert "-p data_dir PATH" in message


def test_6_a_model_pt_of_another_run_is_refused_naming_both_hashes(synthetic_data, finished_run, tmp_path):
    training.fit(data=synthetic_data, run_dir=tmp_path / "other", num_epochs=2, **dict(TINY, rand_seed=5))
    shutil.copy(tmp_path / "other" / R.WEIGHTS, finished_run / R.WEIGHTS)
    with pytest.raises(R.RunFolderError, match="is not the model this run wrote: its sha256 is"):
        L.load_run(finished_run, device="cpu")


# 7: a batches.meta with more class names than labels is tests/test_data.py's.

# 8 ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["data_dir", "run_dir", "progress", "figures_dir", "resume"])
def test_8_a_sweep_json_may_set_only_training_parameters(tmp_path, name):
    with pytest.raises(S.SweepError, match=rf"{name}.*not a parameter a sweep may set"):
        S.make_sweep({"a": {name: "x", "num_epochs": 1}}, size="tiny", folder=tmp_path)


# 9 ---------------------------------------------------------------------------
def test_9_the_demo_resumes_an_interrupted_demo_and_moves_a_finished_one_aside(tmp_path, capsys):
    from nbhelpers.jobs.series import make_room
    demo = tmp_path / "demo"
    (demo / "run").mkdir(parents=True)
    (demo / "run" / R.CHECKPOINT).write_bytes(b"epoch 2")
    assert make_room(demo) == "resume"
    assert (demo / "run" / R.CHECKPOINT).read_bytes() == b"epoch 2"
    (demo / "run" / R.WEIGHTS).write_bytes(b"finished")
    assert make_room(demo) == "new"
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("demo-")]
    assert len(moved) == 1 and (moved[0] / "run" / R.WEIGHTS).read_bytes() == b"finished"
    assert not demo.exists() and f"moved to {moved[0]}" in capsys.readouterr().out


# Unclear cases: each one line naming the problem and the fix -----------------
def _damage(run_dir: Path, how: str) -> None:
    info = json.loads((run_dir / R.CONFIG).read_text())
    if how == "history header only":
        (run_dir / R.HISTORY).write_text((run_dir / R.HISTORY).read_text().splitlines()[0] + "\n")
    elif how == "history not a number":
        header, first, *rest = (run_dir / R.HISTORY).read_text().splitlines()
        first = "abc" + first[first.index(","):]  # the first epoch's number is not a number
        (run_dir / R.HISTORY).write_text("\n".join([header, first, *rest]) + "\n")
    elif how == "config width edited":
        info["config"]["backbone_out_channels"] = 32
    elif how == "config without data":
        del info["data"]
    elif how == "model of another width":
        torch.save(build_model(make_config(**dict(TINY, backbone_out_channels=8))).state_dict(),
                   run_dir / R.WEIGHTS)
        del info["model_sha256"]
    elif how == "model a pickle payload":
        (run_dir / R.WEIGHTS).write_bytes(pickle.dumps(_Payload()))
        del info["model_sha256"]
    (run_dir / R.CONFIG).write_text(json.dumps(info))


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo owned",))


@pytest.mark.parametrize("how, says", [
    ("history header only", "history.csv holds no epoch"),
    ("history not a number", "history.csv is damaged"),
    ("config width edited", "config.json disagrees with .*checkpoint.pt \\(backbone_out_channels: 32 in"),
    ("config without data", "config.json is damaged or was edited"),
    ("model of another width", "do not fit the model its config.json describes"),
    ("model a pickle payload", "holds data that a safe load refuses"),
])
def test_a_damaged_run_folder_is_refused_in_one_message(finished_run, how, says):
    _damage(finished_run, how)
    with pytest.raises(R.RunFolderError, match=says) as info:
        L.load_run(finished_run, device="cpu")
    assert "weights_only" not in str(info.value)


@pytest.mark.parametrize("seed, data_dir, says", [
    ("abc", None, "rand_seed='abc' is not allowed"), (1.5, None, "rand_seed=1.5 is not allowed"),
    (1002, 5, "data_dir=5 is not allowed"),
])
def test_setup_checks_its_values_before_seeding(seed, data_dir, says):
    from nbhelpers.notebook import setup
    with pytest.raises(ConfigError, match=says):
        setup(seed=seed, data_dir=data_dir)


@pytest.mark.parametrize("kind", ["file", "symlink loop"])
def test_a_figures_dir_that_cannot_hold_figures_says_so(tmp_path, kind):
    import matplotlib.pyplot as plt
    from nbhelpers import plots
    target = tmp_path / "figs"
    if kind == "file":
        target.write_text("")
    else:
        target.symlink_to(target)
    fig = plt.figure()
    with pytest.raises(ExplainedError, match=rf"figures_dir={str(target)!r} cannot hold figures"):
        plots.save(fig, "x", target)
    plt.close(fig)


def test_a_relative_run_dir_means_the_same_folder_from_jupyterlab_and_from_papermill(
        synthetic_data, tmp_path, monkeypatch):
    """JupyterLab's kernel works in notebooks/, papermill's in the project: both take runs/x from the project."""
    project = tmp_path / "project"
    monkeypatch.setattr("nbhelpers.runtime.PROJECT_ROOT", project)
    (project / "notebooks").mkdir(parents=True)
    monkeypatch.chdir(project / "notebooks")
    run = training.fit(data=synthetic_data, run_dir="runs/x", num_epochs=1, **TINY)
    assert run.run_dir == project / "runs" / "x" and (project / "runs" / "x" / R.WEIGHTS).is_file()
    assert not (project / "notebooks" / "runs").exists()
    assert L.load_run("runs/x", device="cpu").run_dir == project / "runs" / "x"


def test_a_run_dir_that_is_a_file_is_refused_for_resume_too(synthetic_data, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(R.RunFolderError, match="is a file, not a folder"):
        training.fit(data=synthetic_data, run_dir=tmp_path / "file", num_epochs=1, resume=True, **TINY)


def test_a_run_dir_name_too_long_stops_before_anything_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "load_cifar10", lambda *a, **k: pytest.fail("the data was loaded first"))
    with pytest.raises(ConfigError, match="is too long"):
        training.fit(run_dir=tmp_path / ("x" * 300), num_epochs=1, **TINY)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_written_is_not_called_full(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(R.RunFolderError) as info:
        R.write_config(tmp_path, {"x": 1})
    message = str(info.value)
    assert "cannot be written" in message and "Make it writable" in message and "Make room" not in message


def test_a_run_dir_that_cannot_be_created_says_so_in_one_line(synthetic_data, tmp_path, monkeypatch):
    from nbhelpers.runs.lock import FolderNotWritable

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(FolderNotWritable, match=r"cannot be created or written \(Permission denied\)"):
        training.fit(data=synthetic_data, run_dir=tmp_path / "new", num_epochs=1, **TINY)


def test_asking_for_a_device_that_is_not_there_says_so(monkeypatch):
    from nbhelpers.runtime import pick_device
    monkeypatch.setenv("NBHELPERS_DEVICE", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ExplainedError, match="NBHELPERS_DEVICE='cuda'.*no CUDA device"):
        pick_device()
    with pytest.raises(ExplainedError, match="not a device"):
        pick_device("gpu0")


def test_a_model_too_large_for_the_machine_is_refused_before_allocating(synthetic_data, tmp_path):
    with pytest.raises(ConfigError, match=r"need at least .* GiB to train"):
        training.fit(data=synthetic_data, run_dir=tmp_path / "huge", num_epochs=1,
                     **dict(TINY, backbone_out_channels=10**9))
    assert not (tmp_path / "huge").exists()


@pytest.mark.parametrize("values, says", [
    (dict(grid_images=-1), "grid_images=-1 is not allowed"),
    (dict(extreme_images="many"), "extreme_images='many' is not allowed"),
    (dict(ablation_images=-5), "ablation_images=-5 is not allowed"),
    (dict(run_dir=3), "run_dir=3 is not allowed"),
])
def test_04s_parameters_are_checked_like_03s(values, says):
    defaults = dict(run_dir="", data_dir="", figures_dir="runs/figures", grid_images=16,
                    extreme_images=6, ablation_images=0)
    with pytest.raises(ConfigError, match=says):
        check_evaluation_parameters(**{**defaults, **values})
    assert check_evaluation_parameters(**dict(defaults, grid_images="8"))["grid_images"] == 8


@pytest.mark.parametrize("content, says", [
    ("{not json", "is not valid JSON"), ("[1, 2]", "must be an object"), ("{}", "has no runs"),
    ('{"a": {"num_epoch": 1}}', "num_epoch.*did you mean num_epochs"),
    ('{"a": {"num_epochs": 1}, "b": 3}', "b: its parameters must be an object"),
])
def test_a_bad_sweep_json_is_one_line(tmp_path, content, says):
    path = tmp_path / "mine.json"
    path.write_text(content)
    with pytest.raises(S.SweepError, match=says):
        S.make_sweep(str(path), size="tiny", folder=tmp_path / "out")
    result = subprocess.run([sys.executable, "-m", "nbhelpers.jobs.sweep", str(path), "--size", "tiny",
                             "--folder", str(tmp_path / "out"), "--list"], capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def _finished_entry(entry: S.Entry, synthetic_data) -> None:
    """An entry that looks finished: a real run in its folder, and a notebook papermill completed."""
    settings = {k: v for k, v in entry.parameters.items() if k in T.TrainConfig.__dataclass_fields__}
    training.fit(data=synthetic_data, **dict(settings, run_dir=entry.run_dir, progress="none"))
    entry.notebook.write_text(json.dumps({"metadata": {"papermill": {"end_time": "now", "exception": None}}}))


def test_one_damaged_entry_fails_alone_and_the_rest_of_the_sweep_goes_on(synthetic_data, tmp_path):
    small = {"num_epochs": 1, "train_subset": 320, "test_subset": 100}  # the synthetic set's size
    sweep = S.make_sweep({"a": small, "b": small}, size="tiny", folder=tmp_path)
    for entry in sweep.entries:
        _finished_entry(entry, synthetic_data)
    (sweep.entries[0].run_dir / R.CONFIG).write_text("{damaged")
    said = []
    with pytest.raises(S.SweepError, match="1 of 2 runs failed"):
        S.run_sweep(sweep, gpus=[], echo=said.append)
    assert any(line.startswith("a:") and "config.json" in line for line in said)
    assert "b: finished already, skipped" in said


def test_resume_without_a_run_dir_continues_the_latest_unfinished_run(synthetic_data, tmp_path):
    training.fit(data=synthetic_data, run_dir=tmp_path / "interrupted", num_epochs=2, stop_after=1, **TINY)
    training.fit(data=synthetic_data, run_dir=tmp_path / "finished", num_epochs=1, **TINY)
    assert R.run_to_resume(tmp_path) == tmp_path / "interrupted"
    (tmp_path / "interrupted" / R.WEIGHTS).write_bytes(b"")
    with pytest.raises(R.ResumeError, match="every run there is finished"):
        R.run_to_resume(tmp_path)


def test_a_checkpoint_with_another_optimizers_state_is_refused_before_any_write(synthetic_data, tmp_path):
    training.fit(data=synthetic_data, run_dir=tmp_path / "ranger", num_epochs=2, stop_after=1, **TINY)
    training.fit(data=synthetic_data, run_dir=tmp_path / "sgd", num_epochs=2, stop_after=1,
                 **dict(TINY, optimizer="sgd"))
    checkpoint = torch.load(tmp_path / "ranger" / R.CHECKPOINT, weights_only=True)
    checkpoint["optimizer"] = torch.load(tmp_path / "sgd" / R.CHECKPOINT, weights_only=True)["optimizer"]
    torch.save(checkpoint, tmp_path / "ranger" / R.CHECKPOINT)
    (tmp_path / "ranger" / R.HISTORY).unlink()
    before = _files(tmp_path / "ranger")
    with pytest.raises(R.ResumeError, match="does not fit this model and optimizer.*momentum_buffer"):
        training.fit(data=synthetic_data, run_dir=tmp_path / "ranger", num_epochs=2, resume=True, **TINY)
    assert _files(tmp_path / "ranger") == before


def test_printed_commands_quote_paths_with_spaces():
    assert R.resume_command(Path("runs/my run")).endswith("-p run_dir 'runs/my run'")


# Issue 20: a second copy of a running sweep entry touches nothing -------------
def test_20_a_second_copy_of_a_running_entry_says_so_and_touches_nothing(tmp_path):
    sweep = S.make_sweep({"a": {"num_epochs": 1}}, size="tiny", folder=tmp_path / "sweep")
    entry = sweep.entries[0]
    said = []
    with folder_lock(entry.folder, "sweep entry"):
        assert entry.state() == "running"
        assert S.run_entry(entry, echo=said.append) == "running"
    assert len(said) == 1 and said[0].startswith("a: running elsewhere (host ")
    assert sorted(p.name for p in entry.folder.iterdir()) == [LOCK]
