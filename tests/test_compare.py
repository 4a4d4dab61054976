"""Runs side by side (labels, table, differences between settings), and Ranger's parts made concrete."""
import json
import math

import pytest
import torch

from nbhelpers import compare as C
from nbhelpers import ranger_parts as RP
from nbhelpers.runs.load import load_runs
from nbhelpers.config import make_config
from nbhelpers.runs.folder import HISTORY, STEPS, write_table


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


def _seeded_runs(tmp_path, finals: dict[tuple[str, str], list[float]]):
    """Run folders of several settings, each over seeds 1002, 1003, ...: {(optimizer, step): finals}."""
    return [_fake_run(tmp_path / f"{optimizer}-{step}-{k}", final, optimizer=optimizer,
                      scheduler_step=step, rand_seed=1002 + k)
            for (optimizer, step), finals_of in finals.items() for k, final in enumerate(finals_of)]


def test_runs_are_labelled_by_what_differs_and_nothing_else(four_runs):
    runs = load_runs(four_runs)
    assert [run.label for run in runs] == ["ranger, batch", "ranger, epoch", "sgd, batch", "sgd, epoch"]
    assert list(runs[0].varying) == ["optimizer", "scheduler_step"]  # not run_dir, not data_dir
    assert runs[0].final_acc == 60.0 and runs[2].seconds_per_epoch == 1.0 and runs[0].finished
    assert runs[0].steps == []  # a folder without steps.csv still loads


def test_runs_that_differ_only_in_their_seed_are_one_setting_with_a_spread(tmp_path):
    folders = _seeded_runs(tmp_path, {("ranger", "batch"): [60.0, 62.0, 64.0]})
    runs = load_runs(folders)
    assert {run.label for run in runs} == {"all runs"} and runs[0].varying == {}  # rand_seed is no label
    [setting] = C.group_settings(runs)
    assert [run.seed for run in setting.runs] == [1002, 1003, 1004]
    assert setting.mean == 62.0 and setting.sd == 2.0  # the sample standard deviation
    assert setting.by_seed == {1002: 60.0, 1003: 62.0, 1004: 64.0}


def test_settings_group_the_seeds_of_each_setting_and_the_table_gives_mean_and_spread(tmp_path):
    folders = _seeded_runs(tmp_path, {("ranger", "batch"): [60.0, 62.0, 64.0],
                                      ("ranger", "epoch"): [50.0, 51.0, 52.0],
                                      ("sgd", "batch"): [55.0]})
    settings = C.group_settings(load_runs(list(reversed(folders))))
    assert [s.label for s in settings] == ["sgd, batch", "ranger, epoch", "ranger, batch"]
    assert [len(s.runs) for s in settings] == [1, 3, 3] and math.isnan(settings[0].sd)
    assert settings[2].config["optimizer"] == "ranger" and settings[2].config["scheduler_step"] == "batch"
    table = C.markdown_table(settings).splitlines()
    assert table[0].startswith("| optimizer, scheduler_step | seeds | epochs | final test acc. (%), mean ± sd")
    assert table[4] == "| ranger, batch | 3 | 3 | 62.00 ± 2.00 | 60.00, 62.00, 64.00 | 2.0, 2.0, 2.0 |"
    assert table[2] == "| sgd, batch | 1 | 3 | 55.00 | 55.00 | 2.0 |"


def test_a_difference_is_real_only_where_its_paired_interval_excludes_zero(tmp_path):
    folders = _seeded_runs(tmp_path, {("ranger", "batch"): [60.0, 62.0, 64.0],
                                      ("ranger", "epoch"): [50.0, 51.0, 52.0],   # 10, 11, 12 below
                                      ("sgd", "batch"): [59.0, 57.0, 61.0],      # 1, 5, 3 below: sd 2
                                      ("sgd", "epoch"): [58.0]})                 # one seed
    settings = C.group_settings(load_runs(folders))
    by_step = {d.first.label: d for d in C.differences_between(settings, "scheduler_step", "batch", "epoch")}
    assert set(by_step) == {"ranger, batch", "sgd, batch"}
    ranger = by_step["ranger, batch"]
    # the mean of 10, 11, 12 and its t interval: 11 +- t(0.975, 2) * 1 / sqrt(3) = 11 +- 2.48
    assert ranger.paired and ranger.value == 11.0 and ranger.verdict == "real"
    assert ranger.interval.low == pytest.approx(11 - 4.302653 / math.sqrt(3), abs=1e-5)
    assert by_step["sgd, batch"].verdict.startswith("no verdict") and by_step["sgd, batch"].interval is None
    [ranger_vs_sgd, ranger_vs_sgd_epoch] = C.against_the_first(settings)
    assert (ranger_vs_sgd.first.label, ranger_vs_sgd.second.label) == ("ranger, batch", "sgd, batch")
    # 3 points on average, but 1 to 5 by seed: 3 +- 4.97, which holds 0
    assert ranger_vs_sgd.value == 3.0 and ranger_vs_sgd.verdict == "not resolved with 3 seeds (±4.97)"
    assert ranger_vs_sgd.seeds_needed == 5  # t(3) * 2 / 2 = 3.18 >= 3; t(4) * 2 / sqrt(5) = 2.48 < 3
    assert ranger_vs_sgd_epoch.second.label == "sgd, epoch"
    assert ranger.reading == "+11.00 pp [+8.52, +13.48]: real, ranger, batch higher"
    assert C.SettingDifference(ranger.second, ranger.first).reading.endswith("real, ranger, epoch lower")
    assert ranger_vs_sgd.reading == "+3.00 pp [-1.97, +7.97]: not resolved with 3 seeds (±4.97)"
    assert by_step["sgd, batch"].reading == by_step["sgd, batch"].verdict  # one seed: no interval to read
    rows = C.differences_table([ranger, ranger_vs_sgd]).splitlines()
    assert rows[2] == "| ranger, batch | ranger, epoch | 3, paired | +11.00 | [+8.52, +13.48] | real |  |"
    assert rows[3] == ("| ranger, batch | sgd, batch | 3, paired | +3.00 | [-1.97, +7.97] | "
                       "not resolved with 3 seeds (±4.97) | about 5 |")


def test_the_seeds_to_plan_say_over_100_where_a_difference_near_0_would_need_thousands(tmp_path):
    assert C.seeds_to_plan(5) == "about 5" and C.seeds_to_plan(100) == "about 100"
    assert C.seeds_to_plan(None) == ""
    # per-seed differences +1.34, -1.73, +0.38 (the long sweep's AdamW): a mean of -0.0033
    folders = _seeded_runs(tmp_path, {("adamw", "batch"): [59.36, 56.40, 58.51],
                                      ("adamw", "epoch"): [58.02, 58.13, 58.13]})
    [difference] = C.differences_between(C.group_settings(load_runs(folders)), "scheduler_step", "batch", "epoch")
    assert difference.seeds_needed > 100_000
    assert C.differences_table([difference]).splitlines()[2].endswith("| over 100 |")


def test_runs_with_other_seeds_are_compared_unpaired_with_welchs_interval(tmp_path):
    folders = _seeded_runs(tmp_path, {("ranger", "batch"): [60.0, 62.0, 64.0]})
    folders += [_fake_run(tmp_path / f"sgd-{k}", final, optimizer="sgd", scheduler_step="batch",
                          rand_seed=2000 + k) for k, final in enumerate([50.0, 53.0])]
    [ranger, sgd] = C.group_settings(load_runs(folders))
    difference = C.SettingDifference(ranger, sgd)
    assert not difference.paired and difference.seeds == 2 and difference.seeds_needed is None
    scipy_stats = pytest.importorskip("scipy.stats")
    expected = scipy_stats.ttest_ind([60.0, 62.0, 64.0], [50.0, 53.0], equal_var=False).confidence_interval()
    assert difference.interval.low == pytest.approx(expected.low) and difference.interval.difference == 10.5


def test_a_run_near_chance_is_named_not_averaged_away(tmp_path):
    folders = _seeded_runs(tmp_path, {("sgd", "batch"): [40.0, 11.1, 42.0]})
    settings = C.group_settings(load_runs(folders))
    assert [run.seed for run in C.collapsed_runs(settings)] == [1003]


def test_an_unfinished_run_says_so_and_a_folder_without_a_run_is_refused(tmp_path):
    folder = _fake_run(tmp_path / "a", 40.0, epochs=2)
    (folder / "config.json").write_text(json.dumps({"config": make_config(num_epochs=60).to_dict()}))
    assert "| 2 of 60 |" in C.markdown_table(C.group_settings(load_runs([folder])))
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        load_runs([tmp_path / "nothing"])


def test_steps_csv_is_read_and_roughness_measures_the_step_to_step_jitter(tmp_path):
    smooth, jagged = _fake_run(tmp_path / "smooth", 50.0), _fake_run(tmp_path / "jagged", 50.0, max_lr=0.2)
    write_table(smooth / STEPS, [{"step": s, "epoch": 1, "train_loss": 2 - 0.01 * s, "lr": 0.1, "beta1": 0.9}
                                 for s in range(1, 21)])
    write_table(jagged / STEPS, [{"step": s, "epoch": 1, "train_loss": 2 - 0.01 * s + 0.1 * (-1) ** s,
                                  "lr": 0.1, "beta1": 0.9} for s in range(1, 21)])
    smooth_run, jagged_run = load_runs([smooth, jagged])
    assert len(smooth_run.steps) == 20 and smooth_run.steps[0]["train_loss"] == pytest.approx(1.99)
    assert C.roughness(smooth_run) == pytest.approx(0, abs=1e-9)  # a straight line: no jitter
    assert C.roughness(jagged_run) == pytest.approx(0.2, rel=0.05)


def test_gradient_centralization_on_a_conv_layer_zeroes_each_filters_mean_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    images, labels = torch.randn(8, 3, 6, 6), torch.randint(0, 2, (8,))
    model(images)
    model.eval()
    running = model[1].running_mean.clone()
    grad = RP.gradient_of_one_batch(model, images, labels, "0.weight")
    assert grad.shape == (4, 3, 3, 3) and model[0].weight.grad is None
    assert torch.equal(model[1].running_mean, running) and not model.training
    effect = RP.centralization_effect("0.weight", grad)
    assert torch.allclose(effect.mean_before, grad.flatten(1).mean(dim=1))
    assert effect.mean_after.abs().max() < 1e-6 <= effect.mean_before.abs().max()
    # the removed share is the mean's part of the squared norm: n * mean^2 / |g|^2
    expected = 27 * effect.mean_before ** 2 / grad.flatten(1).pow(2).sum(dim=1)
    assert torch.allclose(effect.removed, expected, atol=1e-5)


def test_the_peak_of_the_one_cycle_and_the_share_of_it_r_t_lets_through():
    from nbhelpers.ranger import rectification_term
    from nbhelpers.train import learning_rates
    lrs = learning_rates(make_config(num_epochs=60), 391)  # the seed's full run
    peak = RP.peak_of(lrs)
    assert peak.step == 7038 and peak.lr == pytest.approx(0.1)  # 30% of 23,460 steps
    assert peak.r_t == pytest.approx(rectification_term(7038, 0.999)) and 0.99 < peak.r_t < 1
    effective = RP.effective_learning_rates(lrs)
    assert all(math.isnan(v) for v in effective[:5]) and not math.isnan(effective[5])
    assert effective[peak.step - 1] == pytest.approx(peak.effective_lr)


def test_lookahead_on_the_valley_syncs_every_k_steps_and_ends_steadier_than_without():
    k, alpha = 6, 0.5
    path = RP.ranger_path_2d(alpha=alpha, k=k, steps=60)
    assert len(path.slow) == 1 + 60 // k and len(path.fast) == 1 + 60 + 60 // k
    # after each sync the fast weights restart from the slow ones; just before, the slow ones
    # moved alpha of the way towards them
    for sync in range(1, len(path.slow)):
        before, after = path.fast[sync * (k + 1) - 1], path.fast[sync * (k + 1)]
        assert torch.allclose(after, path.slow[sync])
        assert torch.allclose(path.slow[sync], path.slow[sync - 1] + alpha * (before - path.slow[sync - 1]),
                              atol=1e-6)
    plain = RP.ranger_path_2d(alpha=1.0, k=k, steps=60)
    syncs = [sync * (k + 1) for sync in range(1, len(plain.slow))]
    assert torch.allclose(plain.slow[1:], plain.fast[syncs])  # alpha = 1: slow = fast
    assert torch.allclose(plain.fast[[i - 1 for i in syncs]], plain.fast[syncs])  # nothing pulled back
    # what notebook 03 shows: over the late steps Lookahead's loss is lower and swings less
    lookahead, without = RP.ranger_path_2d(alpha=0.5), RP.ranger_path_2d(alpha=1.0)
    late_with, late_without = lookahead.loss[-50:], without.loss[-50:]
    assert sum(late_with) < sum(late_without) and max(late_with) < max(late_without)
    assert RP.valley_loss(torch.zeros(2)) == 0 and math.isclose(
        RP.valley_loss(torch.tensor([1.0, -1.0])).item(), 0.05 * 8 * 2, rel_tol=1e-6)  # across only
