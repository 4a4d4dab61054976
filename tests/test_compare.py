"""Runs side by side (labels, table, paired differences) and Lookahead on a 2-D valley."""
import json
import math

import pytest
import torch

from nbhelpers import compare as C
from nbhelpers.config import make_config
from nbhelpers.runs import HISTORY, write_table


def _fake_run(folder, final_acc, seconds=2.0, epochs=3, **config):
    """A run folder as fit writes it (config.json, history.csv), with made-up accuracies."""
    folder.mkdir(parents=True)
    config = make_config(num_epochs=epochs, run_dir=str(folder), **config).to_dict()
    (folder / "config.json").write_text(json.dumps({"config": config}))
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 10.0 * e, "test_loss": 1.5 / e,
                "test_acc": final_acc - 5 * (epochs - e) + (8 if e == 2 else 0), "lr": 0.01,
                "seconds": seconds} for e in range(1, epochs + 1)]
    write_table(folder / HISTORY, history)
    return folder


@pytest.fixture
def four_runs(tmp_path):
    return [_fake_run(tmp_path / "rb", 60.0, optimizer="ranger", scheduler_step="batch"),
            _fake_run(tmp_path / "re", 50.0, optimizer="ranger", scheduler_step="epoch"),
            _fake_run(tmp_path / "sb", 55.0, optimizer="sgd", scheduler_step="batch", seconds=1.0),
            _fake_run(tmp_path / "se", 57.5, optimizer="sgd", scheduler_step="epoch", data_dir="x")]


def test_runs_are_labelled_by_what_differs_and_nothing_else(four_runs):
    runs = C.load_runs(four_runs)
    assert [run.label for run in runs] == ["ranger, batch", "ranger, epoch", "sgd, batch", "sgd, epoch"]
    assert list(runs[0].varying) == ["optimizer", "scheduler_step"]  # not run_dir, not data_dir
    assert runs[0].final_acc == 60.0 and runs[0].best == runs[0].history[1]  # epoch 2: 63%
    assert runs[2].seconds_per_epoch == 1.0 and runs[0].finished


def test_the_table_gives_final_and_best_accuracy_and_seconds_per_epoch(four_runs):
    table = C.markdown_table(C.load_runs(four_runs)).splitlines()
    assert table[0].startswith("| optimizer, scheduler_step | epochs | final test acc. (%)")
    assert table[2] == "| ranger, batch | 3 | 60.00 | 63.00 at 2 | 2.0 |"
    assert len(table) == 2 + 4


def test_paired_differences_compare_per_batch_with_per_epoch_for_each_optimizer(four_runs):
    differences = C.paired_differences(C.load_runs(four_runs), "scheduler_step", "batch", "epoch")
    assert differences == {"ranger": 10.0, "sgd": -2.5}


def test_an_unfinished_run_says_so_and_a_folder_without_a_run_is_refused(tmp_path):
    folder = _fake_run(tmp_path / "a", 40.0, epochs=2)
    (folder / "config.json").write_text(json.dumps({"config": make_config(num_epochs=60).to_dict()}))
    assert "| 2 of 60 |" in C.markdown_table(C.load_runs([folder]))
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        C.load_runs([tmp_path / "nothing"])


def test_lookahead_on_the_valley_syncs_every_k_steps_and_ends_steadier_than_without():
    k, alpha = 6, 0.5
    path = C.ranger_path_2d(alpha=alpha, k=k, steps=60)
    assert len(path.slow) == 1 + 60 // k and len(path.fast) == 1 + 60 + 60 // k
    # after each sync the fast weights restart from the slow ones; just before, the slow ones
    # moved alpha of the way towards them
    for sync in range(1, len(path.slow)):
        before, after = path.fast[sync * (k + 1) - 1], path.fast[sync * (k + 1)]
        assert torch.allclose(after, path.slow[sync])
        assert torch.allclose(path.slow[sync], path.slow[sync - 1] + alpha * (before - path.slow[sync - 1]),
                              atol=1e-6)
    plain = C.ranger_path_2d(alpha=1.0, k=k, steps=60)
    syncs = [sync * (k + 1) for sync in range(1, len(plain.slow))]
    assert torch.allclose(plain.slow[1:], plain.fast[syncs])  # alpha = 1: slow = fast
    assert torch.allclose(plain.fast[[i - 1 for i in syncs]], plain.fast[syncs])  # nothing pulled back
    # what notebook 03 shows: over the late steps Lookahead's loss is lower and swings less
    lookahead, without = C.ranger_path_2d(alpha=0.5), C.ranger_path_2d(alpha=1.0)
    late_with, late_without = lookahead.loss[-50:], without.loss[-50:]
    assert sum(late_with) < sum(late_without) and max(late_with) < max(late_without)
    assert C.valley_loss(torch.zeros(2)) == 0 and math.isclose(
        C.valley_loss(torch.tensor([1.0, -1.0])).item(), 0.05 * 8 * 2, rel_tol=1e-6)  # across only
