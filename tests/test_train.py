"""fit, run folders, exact resume, safe failure, and the evaluation helpers."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.optim.lr_scheduler import OneCycleLR

from nbhelpers import evaluation as E
from nbhelpers.runs import folder as R
from nbhelpers.runs import load as L
from nbhelpers import train as T
from nbhelpers.runs import training
from nbhelpers.config import make_config

# A small width and batch: seconds per epoch on a CPU.
SMALL = dict(backbone_out_channels=16, hidden_size=32, batch_size=32, progress="none",
             deterministic=True)


def _rows(run_dir, drop=("seconds",)):
    with open(run_dir / R.HISTORY, newline="") as fh:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(fh)]


def test_a_two_epoch_run_learns_and_fills_its_run_folder(synthetic_root, synthetic_data, tmp_path):
    run = training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, **SMALL)
    assert [row["epoch"] for row in run.history] == [1, 2]
    assert run.history[-1]["test_acc"] > 40  # chance is 10%
    folder = tmp_path / "run"
    assert {p.name for p in folder.iterdir()} == {"config.json", "history.csv", "checkpoint.pt",
                                                  "model.pt", "steps.csv", "branch_weights.csv", ".lock"}
    info = json.loads((folder / "config.json").read_text())
    assert info["config"]["num_epochs"] == 2
    # the "auto" choices and the CPU threads, recorded
    assert info["resolved"] == dict(run.config.resolved(torch.device("cpu")), threads=torch.get_num_threads())
    assert info["torch"] == torch.__version__ and info["device"].startswith("cpu (")
    assert info["cpu"] and isinstance(info["cpu_fast_bf16"], bool)
    assert info["data"]["fingerprint"] == synthetic_data.fingerprint and info["data"]["train"] == 2000
    assert list(_rows(folder, drop=())[0]) == ["epoch", "train_loss", "train_acc", "test_loss",
                                                "test_acc", "lr", "seconds"]
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    final = torch.load(folder / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], v) for k, v in run.model.state_dict().items())


def test_two_epochs_straight_equal_one_epoch_then_resume(synthetic_data, tmp_path):
    training.fit(data=synthetic_data, run_dir=tmp_path / "straight", num_epochs=2, **SMALL)
    first = training.fit(data=synthetic_data, run_dir=tmp_path / "resumed", num_epochs=2, stop_after=1, **SMALL)
    assert len(first.history) == 1 and not (tmp_path / "resumed" / "model.pt").exists()
    training.fit(data=synthetic_data, run_dir=tmp_path / "resumed", num_epochs=2, resume=True, **SMALL)
    assert _rows(tmp_path / "straight") == _rows(tmp_path / "resumed")
    for table in (R.STEPS, R.BRANCH_WEIGHTS):
        assert (tmp_path / "straight" / table).read_text() == (tmp_path / "resumed" / table).read_text()
    straight = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_the_same_seed_twice_gives_identical_history(synthetic_data, tmp_path):
    for name in ("a", "b"):
        training.fit(data=synthetic_data, run_dir=tmp_path / name, num_epochs=1, **SMALL)
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    training.fit(data=synthetic_data, run_dir=tmp_path / "c", num_epochs=1, **dict(SMALL, rand_seed=7))
    assert _rows(tmp_path / "a") != _rows(tmp_path / "c")


def test_validation_split_is_measured(synthetic_data, tmp_path):
    run = training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=1, val_size=200,
                       train_subset=1000, **SMALL)
    assert {"val_loss", "val_acc"} <= set(run.history[0])


KILLED_RUN = """
import sys, warnings
warnings.simplefilter("ignore")
from nbhelpers.runs.training import fit
fit(data_dir=sys.argv[1], run_dir=sys.argv[2], num_epochs=3, resume=sys.argv[3] == "resume",
    backbone_out_channels=16, hidden_size=32, batch_size=8, progress="none", deterministic=True)
"""


def test_a_run_killed_mid_epoch_leaves_a_checkpoint_that_resumes(synthetic_root, tmp_path):
    run_dir = tmp_path / "killed"
    env = dict(os.environ, NBHELPERS_DEVICE="cpu")
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(synthetic_root), str(run_dir), "new"], env=env)
    deadline = time.time() + 300
    while not (run_dir / "history.csv").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before epoch 1 was saved"
        time.sleep(0.05)
    time.sleep(1.0)  # well inside epoch 2 (an epoch takes several seconds)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(_rows(run_dir)) == 1, "the kill should land in epoch 2"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1
    subprocess.run([sys.executable, "-c", KILLED_RUN, str(synthetic_root), str(run_dir), "resume"],
                   env=env, check=True)
    assert [row["epoch"] for row in _rows(run_dir)] == ["1", "2", "3"]
    assert (run_dir / "model.pt").exists()


def test_a_checkpoint_of_another_architecture_is_refused_clearly(synthetic_data, tmp_path):
    training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, stop_after=1, **SMALL)
    with pytest.raises(R.ResumeError, match="backbone_out_channels: checkpoint 16, now 32"):
        training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, resume=True,
                     **dict(SMALL, backbone_out_channels=32))
    with pytest.raises(R.RunFolderError, match="already holds files"):
        training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, **SMALL)
    with pytest.raises(R.ResumeError, match="holds no run to continue"):
        training.fit(data=synthetic_data, run_dir=tmp_path / "empty", num_epochs=2, resume=True, **SMALL)


def test_a_loss_that_turns_nan_stops_the_run_and_keeps_the_last_good_checkpoint(
        synthetic_data, tmp_path, after_step):
    # epoch 2 has 63 steps of 32 images; poison the weights after its 5th
    after_step(63 + 5, lambda optimizer: optimizer.param_groups[0]["params"][0].data.fill_(float("nan")))
    with pytest.raises(training.TrainingDiverged, match=r"Epoch 2 was not finite: NaN or infinity in the training loss \(first at step 6\)"):
        training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=3, **SMALL)
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    assert len(_rows(tmp_path / "run")) == 1


def test_steps_csv_records_every_few_steps_with_the_lr_and_beta1_they_used(synthetic_data, tmp_path):
    run = training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, train_subset=1000,
                       **dict(SMALL, batch_size=8))  # 125 steps per epoch
    rows = R.read_table(tmp_path / "run" / R.STEPS)
    assert [row["step"] for row in rows[:3]] == [2, 4, 6] and rows[-1]["step"] == 250
    assert all(sum(row["epoch"] == e for row in rows) >= 50 for e in (1, 2))
    trace = T.schedule_trace(run.config, 125)
    assert [row["lr"] for row in rows] == [trace["lr"][int(row["step"]) - 1] for row in rows]
    assert [row["beta1"] for row in rows] == [trace["beta1"][int(row["step"]) - 1] for row in rows]
    # Each row's loss is the mean of its steps' losses; the epoch's mean is history's train loss.
    epoch_1 = [row["train_loss"] for row in rows if row["epoch"] == 1]  # 62 rows of 2 steps, then 1
    assert sum(epoch_1[:-1]) * 2 + epoch_1[-1] == pytest.approx(run.history[0]["train_loss"] * 125)


def test_branch_weights_csv_holds_every_blocks_mean_weights_from_the_untrained_start(
        synthetic_data, tmp_path):
    from nbhelpers import branches
    run = training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, **SMALL)
    rows = R.read_table(tmp_path / "run" / R.BRANCH_WEIGHTS)
    assert [(r["epoch"], r["block"], r["branch"]) for r in rows] == \
        [(e, b, j) for e in (0, 1, 2) for b in range(3) for j in range(3)]
    how = (run.resolved["precision"], run.resolved["channels_last"])
    start = branches.initial_model(run.config).to(memory_format=torch.channels_last)
    untrained = E.collect_branch_weights(start, synthetic_data.test, "cpu", *how)
    assert [r["mean"] for r in rows[:9]] == pytest.approx(untrained.mean(dim=1).flatten().tolist(), abs=1e-6)
    trained = E.collect_branch_weights(run.model, synthetic_data.test, "cpu", *how)
    assert [r["mean_abs"] for r in rows[-9:]] == pytest.approx(trained.abs().mean(dim=1).flatten().tolist(), abs=1e-6)


def test_per_batch_learning_rates_follow_one_cycle(synthetic_data, tmp_path):
    run = training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, train_subset=640, **SMALL)
    steps = 2 * 20
    reference_optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    reference = OneCycleLR(reference_optimizer, max_lr=0.1, total_steps=steps, anneal_strategy="linear")
    expected = []
    for _ in range(steps):
        expected.append(reference_optimizer.param_groups[0]["lr"])
        reference_optimizer.step()
        reference.step()
    assert run.step_lrs == pytest.approx(expected, rel=1e-12)
    assert max(run.step_lrs) == pytest.approx(0.1, rel=0.05) and run.step_lrs[0] == pytest.approx(0.004)
    assert run.step_lrs == T.learning_rates(run.config, 20)


def test_seed_mode_reproduces_the_seeds_learning_rates():
    rates = T.learning_rates(make_config(scheduler_step="epoch"), steps_per_epoch=391)
    per_epoch = rates[::391]
    assert len(per_epoch) == 60 and len(set(rates[:391])) == 1  # constant within an epoch
    assert per_epoch[0] == pytest.approx(0.004)
    rises = [b - a for a, b in zip(per_epoch, per_epoch[1:])]
    assert all(r == pytest.approx(1.364e-5, rel=0.01) for r in rises)
    assert per_epoch[-1] == pytest.approx(0.0048, abs=1e-4)


def test_evaluation_helpers():
    logits = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 9.0], [5.0, 0, 0], [0, 1.0, 0]])
    labels = torch.tensor([0, 1, 1, 2, 1])
    predictions = logits.argmax(dim=1)
    assert E.accuracy(predictions, labels) == pytest.approx(60.0)
    assert E.confusion_matrix(predictions, labels, 3).tolist() == [[1, 0, 0], [0, 2, 1], [1, 0, 0]]
    assert E.per_class_accuracy(predictions, labels, 3).tolist() == pytest.approx([100.0, 200 / 3, 0.0])
    assert E.most_confident_mistakes(logits, labels).tolist() == [2, 3]


def test_load_run_gives_the_final_model(synthetic_data, tmp_path):
    run = training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=1, train_subset=320, **SMALL)
    loaded = L.load_run(tmp_path / "run", device="cpu")
    assert loaded.classes == synthetic_data.classes and len(loaded.history) == 1
    images = synthetic_data.test
    chosen = loaded.config.resolved(torch.device("cpu"))  # as fit evaluated: same precision and layout
    assert loaded.model.backbone.blocks[0].convs[0][0].weight.is_contiguous(
        memory_format=torch.channels_last) == chosen["channels_last"]
    same = dict(precision=chosen["precision"], channels_last=chosen["channels_last"])
    assert torch.equal(E.infer(loaded.model, images, **same), E.infer(run.model, images, **same))
    assert E.evaluate(loaded.model, images, "cpu", **same)["acc"] == loaded.history[0]["test_acc"]


def test_progress_log_mode_prints_one_line_per_epoch(synthetic_data, tmp_path, capsys):
    training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, train_subset=320,
                 **dict(SMALL, progress="log"))
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 3 and err == ""
    assert lines[0].startswith("estimated ") and "for 2 epochs (20 steps of" in lines[0]
    assert lines[1].startswith("epoch   1/2 | train loss") and lines[1].endswith(" left")
    assert lines[2].startswith("epoch   2/2 | train loss") and not lines[2].endswith(" left")


def test_the_estimate_times_steps_after_the_first_and_adds_evaluation(monkeypatch):
    from nbhelpers import progress as P
    clock = iter([0.0, 100.0, 101.0, 102.0, 103.0, 104.0, 105.0])
    monkeypatch.setattr(P.time, "perf_counter", lambda: next(clock))
    # A first step of 100 s, then steps of 1 s: after 5 of them, 105 s have passed and 4 steps
    # are left, plus evaluation: 2 epochs x 300 images / batches of 100 / 3 = 2 steps' worth.
    estimate = P.RunEstimate(steps=10, epochs=2, batch_size=100, eval_images=300, where="here")
    lines = [estimate.step() for _ in range(6)]
    assert lines[:5] == [None] * 5 and estimate.step() is None  # said once only
    assert lines[5] == "estimated 1 min 51 s for 2 epochs (10 steps of 1,000 ms, and evaluation) on here"
    assert P.duration(5 * 86400) == "5 days" and P.duration(3700) == "1 h 1 min"


def test_an_estimate_of_many_hours_says_so_and_how_to_stop(monkeypatch):
    from nbhelpers import progress as P
    clock = iter([0.0, 60.0, 120.0, 120.0])
    monkeypatch.setattr(P.time, "perf_counter", lambda: next(clock))
    estimate = P.RunEstimate(steps=23_460, epochs=60, batch_size=128, eval_images=10_000, where="cpu")
    assert estimate.step() is None
    line = estimate.step()  # a minute per step: measured after one timed step
    assert line.startswith("estimated 17 days for 60 epochs") and "more than a few hours" in line
    assert "-p resume True" in line and "-p size demo" in line


def test_the_training_loop_reads_nothing_back_from_the_device_per_step(synthetic_data, monkeypatch):
    """Every way a tensor's value reaches Python (and so on CUDA waits for the GPU), counted."""
    from nbhelpers.data import CifarLoader
    config = make_config(**SMALL)
    model, step_model, optimizer, chosen = T.build_training(config, torch.device("cpu"))
    loader = CifarLoader(synthetic_data.train.subset(torch.arange(320)), 32, train=True, seed=0)
    scheduler = T.build_scheduler(optimizer, config, len(loader))
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counting)
    result = T.train_epoch(step_model, loader, optimizer, scheduler, per_batch=True,
                           precision="fp32", channels_last=False)
    monkeypatch.undo()
    assert len(loader) == 10 and result["first_bad_step"] == -1
    assert reads == ["tolist"]  # the one read at the end of the epoch


def test_the_gpu_code_paths_train_checkpoint_and_resume_on_a_cpu(synthetic_data, tmp_path):
    """torch.compile over Ranger's flat parameter buffer, channels_last and bf16 autocast, as on CUDA.

    So that the first GPU run does not meet these paths for the first time:
    a compiled model trains, its checkpoint resumes (Ranger lays the loaded
    state out flat again under the compiled graph), and it keeps learning.
    """
    gpu_like = dict(SMALL, compile=True, channels_last=True, precision="bf16", train_subset=320,
                    deterministic=False)
    first = training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, stop_after=1, **gpu_like)
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["resolved"] == {"precision": "bf16", "compile": True, "channels_last": True,
                                "threads": torch.get_num_threads()}
    resumed = training.fit(data=synthetic_data, run_dir=tmp_path / "run", num_epochs=2, resume=True, **gpu_like)
    assert [row["epoch"] for row in resumed.history] == [1, 2] and resumed.finished
    assert len(first.step_lrs) == len(resumed.step_lrs) == 10  # the schedule went on where it stopped
    assert resumed.step_lrs[0] == pytest.approx(T.learning_rates(resumed.config, 10)[10])
    assert all(torch.isfinite(v).all() for v in resumed.model.state_dict().values() if v.is_floating_point())
    assert resumed.history[-1]["train_loss"] < resumed.history[0]["train_loss"]
    assert (tmp_path / "run" / "model.pt").exists()


def test_the_time_left_leaves_out_the_first_epoch_which_also_compiles(capsys):
    # A compiled CPU run's first epoch took 47 s (compiling), the next ones 18 s.
    from nbhelpers import progress as P
    shown = P.Progress("log", total_steps=60, num_epochs=60)
    shown.end_epoch([dict(epoch=1, train_loss=2.0, train_acc=20.0, test_loss=1.9, test_acc=28.0, lr=0.004,
                          seconds=47.0)])
    shown.end_epoch([dict(epoch=2, train_loss=1.8, train_acc=31.0, test_loss=1.7, test_acc=35.0, lr=0.009,
                          seconds=18.0)])
    shown.close()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("about 46 min 13 s left")  # 59 x 47 s: one epoch is all there is to go by
    assert lines[1].endswith("about 17 min 24 s left")  # 58 x 18 s, not 58 x 32.5 s
    assert P.after_warm_up([47.0, 18.0, 19.0]) == [18.0, 19.0] and P.after_warm_up([47.0]) == [47.0]
