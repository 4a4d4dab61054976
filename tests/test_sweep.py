"""The sweep: one papermill run of 03 per entry; a finished run is skipped, a killed one resumed."""
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from nbhelpers.jobs import sweep as S
from nbhelpers.config import make_config
from nbhelpers.runs.folder import read_history
from nbhelpers.runs.lock import folder_lock

# Seconds per epoch on a CPU, on the synthetic data of conftest (2,000 / 200 images).
SMALL = dict(num_epochs=4, batch_size=32, backbone_out_channels=8, hidden_size=16,
             train_subset=400, test_subset=100, precision="fp32")


def _sweep(root, data_dir, **runs):
    return S.make_sweep(runs, size="tiny", data_dir=str(data_dir), folder=root)


def test_grid_names_every_combination_by_its_values():
    runs = S.grid(optimizer=("ranger", "sgd"), scheduler_step=("batch", "epoch"))
    assert list(runs) == ["ranger-batch", "ranger-epoch", "sgd-batch", "sgd-epoch"]
    assert runs["sgd-epoch"] == {"optimizer": "sgd", "scheduler_step": "epoch"}
    assert len(S.SWEEPS["optimizers"]) == 8


def test_each_entry_is_an_ordinary_papermill_call_into_its_own_folder(tmp_path):
    sweep = _sweep(tmp_path, "somewhere", a=dict(SMALL, optimizer="adamw"), b=SMALL)
    a, b = sweep.entries
    command = a.command()
    assert command[1:5] == ["-m", "papermill", "notebooks/03_train.ipynb", str(tmp_path / "a" / "03_train.ipynb")]
    parameters = dict(zip(command[command.index("-p") + 1::3], command[command.index("-p") + 2::3]))
    assert parameters["optimizer"] == "adamw" and parameters["num_epochs"] == "4"
    assert parameters["run_dir"] == str(tmp_path / "a" / "run") and parameters["data_dir"] == "somewhere"
    assert "resume" not in parameters and a.command(resume=True)[-2:] == ["resume", "True"]
    assert b.folder == tmp_path / "b" and b.state() == "new"


def test_a_sweep_knows_its_own_name_apart_from_size_and_path(tmp_path):
    # 05 names its figures after it: the JSON file's path once gave "05_/tmp/x/my_sweep_curves.png".
    spec = tmp_path / "my_sweep.json"
    spec.write_text(json.dumps({"a": SMALL}))
    plan = S.make_sweep(str(spec), size="tiny", folder=tmp_path / "runs")
    assert (plan.name, plan.sweep) == ("my_sweep-tiny", "my_sweep")
    assert S.make_sweep("optimizers", size="tiny").sweep == "optimizers"


def test_a_relative_sweep_file_is_read_from_the_project_root_wherever_the_kernel_works(tmp_path, monkeypatch):
    # JupyterLab's kernel works in notebooks/, papermill's in the root: -p sweep my.json means one file.
    spec = tmp_path / "my.json"
    spec.write_text(json.dumps({"a": SMALL}))
    monkeypatch.setattr(S, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr("nbhelpers.runtime.PROJECT_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path / ".." )
    assert S.make_sweep("my.json", size="tiny", folder=tmp_path / "runs").sweep == "my"
    with pytest.raises(S.SweepError, match="missing.json is not a file.*project's root"):
        S.make_sweep("missing.json", size="tiny")


def test_a_bad_value_or_name_stops_the_sweep_before_anything_runs(tmp_path):
    with pytest.raises(Exception, match="optimizer='adam' is not allowed"):
        _sweep(tmp_path, "", a=dict(SMALL, optimizer="adam"))
    with pytest.raises(S.SweepError, match="no sweep named 'optimisers'"):
        S.make_sweep("optimisers")
    with pytest.raises(S.SweepError, match="has no run sgd-daily"):
        S.make_sweep("optimizers", size="tiny", only=["sgd-daily"])


# The killed run is longer: its orphaned kernel trains on for a second or so after the kill.
KILLED = dict(SMALL, optimizer="sgd", num_epochs=12)


def _start_killable(entry_index, root, data_dir):
    """`python -m nbhelpers.jobs.sweep` on one entry, in its own process group (papermill, not its kernel)."""
    runs = {"finished": SMALL, "killed": KILLED}
    spec = root / "runs.json"
    spec.write_text(json.dumps(runs))
    command = [sys.executable, "-m", "nbhelpers.jobs.sweep", str(spec), "--size", "tiny",
               "--folder", str(root), "--data-dir", str(data_dir), "--index", str(entry_index)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def test_the_sweep_skips_a_finished_run_and_resumes_a_killed_one(synthetic_root, tmp_path):
    sweep = _sweep(tmp_path, synthetic_root, finished=SMALL, killed=KILLED)
    finished, killed = sweep.entries
    assert S.run_entry(finished, echo=lambda _: None) == "ran"
    assert finished.state() == "finished"
    notebook_written = finished.notebook.stat().st_mtime_ns

    # Kill the second run (the sweep and papermill; its kernel then exits) once its first epoch is saved.
    process = _start_killable(1, tmp_path, synthetic_root)
    deadline = time.monotonic() + 300
    while not (killed.run_dir / "checkpoint.pt").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the run never saved a checkpoint"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # Jupyter starts its kernel in a session of its own; the kernel sees its parent gone
    # within a second or so and exits. Until then the run's lock says it is still running.
    deadline = time.monotonic() + 30
    while killed.state() == "running":
        assert time.monotonic() < deadline, "the orphaned kernel never let go of the run"
        time.sleep(0.2)
    assert killed.state() == "interrupted"
    epochs_before_kill = read_history(killed.run_dir)
    assert 1 <= len(epochs_before_kill) < KILLED["num_epochs"]

    said = []
    assert S.run_sweep(sweep, echo=said.append) == {"finished": "skipped", "killed": "resumed"}
    assert finished.notebook.stat().st_mtime_ns == notebook_written  # not run again
    assert said[0] == "finished: finished already, skipped" and said[1].startswith("killed: resuming")
    history = read_history(killed.run_dir)
    assert [row["epoch"] for row in history] == list(range(1, KILLED["num_epochs"] + 1))
    assert history[:len(epochs_before_kill)] == epochs_before_kill  # continued, not started over
    assert "-p resume True" in killed.log.read_text()
    assert killed.state() == "finished"


def test_a_finished_folder_with_other_settings_is_refused_not_skipped(synthetic_root, tmp_path):
    entry = _sweep(tmp_path, synthetic_root, run=SMALL).entries[0]
    entry.run_dir.mkdir(parents=True)
    saved = make_config(size="tiny", **SMALL, data_dir="elsewhere").to_dict()
    (entry.run_dir / "config.json").write_text(json.dumps({"config": saved}))
    entry.check_matches_its_folder()  # where the data lies does not matter
    (entry.run_dir / "config.json").write_text(json.dumps({"config": dict(saved, num_epochs=60)}))
    with pytest.raises(S.SweepError, match=r"other settings \(num_epochs=60 there, 4 here\)"):
        entry.check_matches_its_folder()


def test_a_start_that_never_finished_an_epoch_is_cleared_anything_else_kept(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    S._clear_a_start_without_epochs(run_dir)
    assert list(run_dir.iterdir()) == []
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(S.SweepError, match="notes.txt"):
        S._clear_a_start_without_epochs(run_dir)
    assert (run_dir / "notes.txt").exists()


def test_with_several_gpus_runs_go_one_per_gpu_at_a_time(monkeypatch, tmp_path):
    active, seen, lock = {"0": 0, "1": 0}, {}, threading.Lock()

    def fake_run(entry, env, echo):
        gpu = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            active[gpu] += 1
            assert active[gpu] == 1, "two runs on one GPU"
        time.sleep(0.05)
        with lock:
            active[gpu] -= 1
            seen[entry.name] = gpu
        return "ran"

    monkeypatch.setattr(S, "run_entry", fake_run)
    sweep = _sweep(tmp_path, "", **{f"run{i}": SMALL for i in range(6)})
    assert S.run_sweep(sweep, gpus=["0", "1"]) == {f"run{i}": "ran" for i in range(6)}
    assert set(seen.values()) == {"0", "1"}


def test_cpu_workers_run_side_by_side_each_with_its_share_of_the_cores(monkeypatch, tmp_path):
    monkeypatch.setattr(S, "_visible_gpus", lambda: [])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    threads, lock, both = [], threading.Lock(), threading.Barrier(2, timeout=5)

    def fake_run(entry, env, echo):
        with lock:
            threads.append(env["OMP_NUM_THREADS"])
        both.wait()  # returns only while two runs are in progress at once
        return "ran"

    monkeypatch.setattr(S, "run_entry", fake_run)
    sweep = _sweep(tmp_path, "", **{f"run{i}": SMALL for i in range(4)})
    assert S.run_sweep(sweep, cpu_workers=2) == {f"run{i}": "ran" for i in range(4)}
    assert threads == ["2"] * 4
    with pytest.raises(S.SweepError, match="workers must be a whole number of at least 1, not 0"):
        S.run_sweep(sweep, cpu_workers=0)
    monkeypatch.setattr(S, "_cuda_available", lambda: True)  # one GPU: _visible_gpus says [], runs go one by one
    monkeypatch.setattr(S, "run_entry", lambda entry, env, echo: "ran" if env is None else "pinned")
    said = []
    assert set(S.run_sweep(sweep, cpu_workers=2, echo=said.append).values()) == {"ran"}
    assert said == ["2 CPU workers asked for, but a GPU is here: its runs go one at a time"]


def test_the_schedule_sweep_is_ranger_and_adamw_per_batch_and_per_epoch_at_long_on_a_cpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    sweep = S.make_sweep("schedule", seeds=3)
    assert sweep.name == "schedule-long" and sweep.size == "long" and len(sweep.entries) == 12
    settings = {(e.parameters["optimizer"], e.parameters["scheduler_step"]) for e in sweep.entries}
    assert settings == {(o, s) for o in ("ranger", "adamw") for s in ("batch", "epoch")}
    assert {e.parameters["size"] for e in sweep.entries} == {"long"}
    # "auto" only: a size asked for by name is kept, and the other sweeps stay small without a GPU.
    assert S.make_sweep("schedule", size="small").name == "schedule-small"
    optimizers = S.make_sweep("optimizers")
    assert (optimizers.name, optimizers.size) == ("optimizers-small", "small")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert S.make_sweep("schedule").name == "schedule-full"


def test_a_job_array_that_ends_before_the_sweeps_last_run_says_so(monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "7")  # the script's default --array=0-7
    with pytest.raises(SystemExit, match="--index 12: schedule-long has runs 0 to 11"):
        S.main(["schedule", "--seeds", "3", "--index", "12"])
    assert "warning: this job array ends at task 7, but schedule-long has runs 0 to 11 (--list): " \
           "submit it with --array=0-11, or the rest with --array=8-11" in capsys.readouterr().err
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "11")
    with pytest.raises(SystemExit):
        S.main(["schedule", "--seeds", "3", "--index", "12"])
    assert "warning" not in capsys.readouterr().err


def test_a_seed_that_would_overflow_with_seeds_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(S.SweepError, match=r"a: rand_seed 4294967295 with 2 seeds goes up to 4294967296"):
        S.make_sweep({"a": dict(SMALL, rand_seed=2**32 - 1)}, size="tiny", folder=tmp_path, seeds=2)
    assert not list(tmp_path.iterdir())
    assert S.make_sweep({"a": dict(SMALL, rand_seed=2**32 - 2)}, size="tiny", folder=tmp_path,
                        seeds=2).entries[1].parameters["rand_seed"] == 2**32 - 1


@pytest.mark.parametrize("bad, problem", [({"num_epochs": 0}, "num_epochs=0 is not allowed"),
                                          ({"mixing": "bogus"}, "mixing='bogus' is not allowed")])
def test_a_sweep_file_with_a_bad_value_is_one_line_from_main(tmp_path, capsys, bad, problem):
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"fine": SMALL, "b": dict(SMALL, **bad)}))
    with pytest.raises(SystemExit) as stop:
        S.main([str(spec), "--size", "tiny", "--folder", str(tmp_path / "runs")])
    assert str(stop.value.code).startswith(f"error: b: {problem}") and "\n" not in str(stop.value.code)
    assert not (tmp_path / "runs").exists(), "nothing ran"


def test_run_names_that_collide_after_seeding_are_refused_up_front(tmp_path):
    with pytest.raises(S.SweepError, match="share the folder of a-seed2"):
        S.make_sweep({"a": SMALL, "a-seed2": SMALL}, size="tiny", folder=tmp_path, seeds=2)
    assert len(S.make_sweep({"a": SMALL, "a-seed2": SMALL}, size="tiny", folder=tmp_path).entries) == 2


def _finished_by_hand(entry, data_folder):
    """An entry's folder as a finished run leaves it (config.json, the tables, model.pt, an executed 03),
    written directly: the records' logic needs no training."""
    from nbhelpers.runs.folder import write_table
    config = make_config(**{k: v for k, v in entry.parameters.items()
                            if k not in ("figures_dir",)}).to_dict()
    entry.run_dir.mkdir(parents=True)
    (entry.run_dir / "config.json").write_text(json.dumps({"config": dict(config, data_dir=str(data_folder)),
                                                         "data": {"folder": str(data_folder)}}))
    write_table(entry.run_dir / "history.csv", [{"epoch": e, "train_loss": 1.0, "train_acc": 50.0, "test_loss": 1.0,
                                                 "test_acc": 40.0 + e, "lr": 0.01, "seconds": 1.0}
                                                for e in range(1, config["num_epochs"] + 1)])
    write_table(entry.run_dir / "steps.csv", [{"step": 1, "train_loss": 1.0, "lr": 0.01, "beta1": 0.9}])
    (entry.run_dir / "model.pt").write_bytes(b"weights")
    entry.notebook.write_text(json.dumps({"metadata": {"papermill": {"end_time": "now", "exception": None}}}))


def test_published_records_carry_a_sweep_without_weights_and_are_not_trained_again(tmp_path, monkeypatch):
    from nbhelpers.runtime import PROJECT_ROOT
    records = tmp_path / "records"
    sweep = S.make_sweep({"a": {}}, size="tiny", folder=tmp_path / "runs", seeds=2, records=records)
    first, second = sweep.entries
    assert first.record == records / "sweep-tiny" / "a" and second.record == records / "sweep-tiny" / "a-seed2"
    _finished_by_hand(first, PROJECT_ROOT / "data" / "cifar-10-batches-py")
    assert [first.stage(), second.stage()] == ["finished", "new"]
    assert S.publish_finished(sweep, echo=lambda _: None) == 1
    assert sorted(p.name for p in first.record.iterdir()) == ["config.json", "history.csv", "steps.csv"]
    published = json.loads((first.record / "config.json").read_text())
    assert published["data"]["folder"] == "data/cifar-10-batches-py"  # no folder of this machine
    assert published["config"]["data_dir"] == "data/cifar-10-batches-py"
    assert first.stage() == "published" and first.results_folder() == first.record
    assert second.results_folder() is None
    said = []
    assert S.run_entry(first, echo=said.append) == "skipped" and "published already" in said[0]
    # Published records with other settings are refused, not counted.
    (first.record / "config.json").write_text(json.dumps(dict(published, config=dict(published["config"],
                                                                                       num_epochs=60))))
    with pytest.raises(S.SweepError, match="other settings"):
        first.stage()


def test_publish_needs_a_records_folder():
    with pytest.raises(SystemExit) as stopped:
        S.main(["optimizers", "--size", "tiny", "--publish"])
    assert str(stopped.value.code).startswith("error: --publish") and "--records" in str(stopped.value.code)


def test_list_only_reads_so_it_lists_a_sweep_on_a_read_only_disk(tmp_path, monkeypatch, capsys):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"a": {"num_epochs": 1}}))
    entry = S.make_sweep(str(path), size="tiny", folder=tmp_path / "out").entries[0]
    for folder in (entry.folder, entry.run_dir):
        with folder_lock(folder):  # leaves its .lock behind, as every run does
            pass
    real_open = open

    def read_only(file, mode="r", *args, **kwargs):  # what a read-only filesystem answers
        if set(mode) & set("wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)
    monkeypatch.setattr("builtins.open", read_only)
    monkeypatch.setattr(S.signal, "signal", lambda *args: None)  # main's SIGTERM handler, not pytest's
    S.main([str(path), "--size", "tiny", "--folder", str(tmp_path / "out"), "--list"])
    assert capsys.readouterr().out.split()[:3] == ["0", "a", "new"]
