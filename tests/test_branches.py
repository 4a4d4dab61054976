"""The branch-weight recorder and the ablation compute what they say, on small models."""
import pytest
import torch
import torch.nn.functional as F

from nbhelpers import Model
from nbhelpers.branches import (AblationRow, ablation, branches_in_use, collect_branch_weights,
                                compare_branch_use, describe_ablation, describe_branch_use,
                                extreme_image_rows, fixed_weights, format_ablation, initial_model,
                                mean_weight_per_class, mixing_overridden, most_extreme_images,
                                share_on, without_branch)
from nbhelpers.config import make_config
from nbhelpers.data import Split, normalize
from nbhelpers import evaluation, train

SMALL = dict(num_blocks=3, input_channels=3, backbone_out_channels=16, num_conv_layer=3,
             hidden_size=32, num_classes=10)


def _trained_looking_model(**sizes) -> Model:
    """A small model whose BatchNorms and mixing layers are not at their initial values."""
    torch.manual_seed(0)
    model = Model(**dict(SMALL, **sizes))
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    for block in model.backbone.blocks:  # weights of both signs, of a size that matters
        block.linear.weight.data.normal_(0, 1)
        block.linear.bias.data.normal_(0, 0.5)
    return model.eval()


def _split(count=40, seed=1) -> Split:
    """Images of different average colours: block 0's mixing sees only that average."""
    generator = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, 256, (count, 3, 1, 1), generator=generator)
    noise = torch.randint(-60, 61, (count, 3, 32, 32), generator=generator)
    images = (colours + noise).clamp(0, 255).to(torch.uint8)
    return Split(images, torch.arange(count) % 10)


def _block_inputs(model: Model, images: torch.Tensor) -> list[torch.Tensor]:
    inputs = []
    hooks = [block.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
             for block in model.backbone.blocks]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs


def test_recorded_weights_are_leaky_relu_of_the_linear_layer_on_the_mean_input():
    model, split = _trained_looking_model(), _split()
    weights = collect_branch_weights(model, split, "cpu")
    assert weights.shape == (3, 40, 3)
    inputs = _block_inputs(model, normalize(split.images))
    for i, (block, x) in enumerate(zip(model.backbone.blocks, inputs)):
        expected = F.leaky_relu(x.mean(dim=(2, 3)) @ block.linear.weight.T + block.linear.bias)
        assert torch.allclose(weights[i], expected, atol=1e-5)
    assert (weights < 0).any() and (weights > 0).any()  # not normalized, and they can be negative
    assert all(block.mixing_override is None for block in model.backbone.blocks)


def test_without_overrides_the_model_is_unchanged_and_the_recorder_changes_nothing():
    model, split = _trained_looking_model(), _split()
    before = evaluation.infer(model, split, "cpu")
    collect_branch_weights(model, split, "cpu")
    assert torch.equal(evaluation.infer(model, split, "cpu"), before)


def test_fixed_weights_give_the_models_own_output_when_every_image_shares_one_weight_vector():
    model = _trained_looking_model()
    shared = torch.tensor([0.7, -0.02, 1.3])
    for block in model.backbone.blocks:  # the mixing ignores the image: a bias and no weights
        block.linear.weight.data.zero_()
        block.linear.bias.data.copy_(shared)
    split = _split()
    weights = collect_branch_weights(model, split, "cpu")
    assert torch.allclose(weights, F.leaky_relu(shared).expand_as(weights))
    expected = evaluation.infer(model, split, "cpu")
    means = weights.mean(dim=1)
    with mixing_overridden(model, {i: fixed_weights(means[i]) for i in range(3)}):
        got = evaluation.infer(model, split, "cpu")
    assert torch.allclose(got, expected, atol=1e-5)


def test_fixed_weights_change_the_output_when_the_weights_differ_between_images():
    model, split = _trained_looking_model(), _split()
    means = collect_branch_weights(model, split, "cpu").mean(dim=1)
    expected = evaluation.infer(model, split, "cpu")
    with mixing_overridden(model, {0: fixed_weights(means[0])}):
        got = evaluation.infer(model, split, "cpu")
    assert not torch.allclose(got, expected, atol=1e-3)
    assert model.backbone.blocks[0].mixing_override is None  # restored on leaving the with


@pytest.mark.parametrize("removed", [0, 2])
def test_removing_a_branch_equals_the_model_built_without_it(removed):
    model = _trained_looking_model()
    smaller = Model(**dict(SMALL, num_conv_layer=2)).eval()
    kept = [b for b in range(3) if b != removed]
    state = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if key.startswith("backbone.blocks.1.linear."):  # only block 1 loses a branch
            value = value[kept]
        if parts[:3] == ["backbone", "blocks", "1"] and parts[3] == "convs":
            branch = int(parts[4])
            if branch == removed:
                continue
            parts[4] = str(kept.index(branch))
        state[".".join(parts)] = value
    # The other blocks keep three branches: give the smaller model those blocks whole.
    smaller.backbone.blocks[0] = model.backbone.blocks[0]
    smaller.backbone.blocks[2] = model.backbone.blocks[2]
    smaller.load_state_dict(state)
    split = _split()
    with mixing_overridden(model, {1: without_branch(removed)}):
        got = evaluation.infer(model, split, "cpu")
    assert torch.allclose(got, evaluation.infer(smaller, split, "cpu"), atol=1e-5)
    assert not torch.allclose(got, evaluation.infer(model, split, "cpu"), atol=1e-3)


def test_ablation_lists_the_baseline_every_mean_replacement_and_every_removed_branch():
    model, split = _trained_looking_model(), _split()
    means = collect_branch_weights(model, split, "cpu").mean(dim=1)
    rows = ablation(model, split, means, "cpu")
    names = [r.change for r in rows]
    assert names[:5] == ["as trained", "block 0: mean weights", "block 1: mean weights",
                         "block 2: mean weights", "every block: mean weights"]
    assert names[5:] == [f"block {i}: without branch {j}" for i in range(3) for j in range(3)]
    baseline = evaluation.accuracy(evaluation.infer(model, split, "cpu").argmax(dim=1), split.labels)
    assert rows[0].accuracy == baseline and rows[0].difference == 0
    with mixing_overridden(model, {2: without_branch(1)}):
        removed = evaluation.accuracy(evaluation.infer(model, split, "cpu").argmax(dim=1), split.labels)
    assert rows[names.index("block 2: without branch 1")].accuracy == removed
    assert "every block: mean weights" in format_ablation(rows)


def test_mean_weight_per_class_and_most_extreme_images():
    weights = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [5.0, 2.0], [7.0, 4.0]]])  # 1 block, 4 images
    labels = torch.tensor([0, 0, 1, 1])
    assert torch.equal(mean_weight_per_class(weights, labels, 2),
                       torch.tensor([[[2.0, 0.0], [6.0, 3.0]]]))
    lowest, highest = most_extreme_images(torch.tensor([0.3, -0.1, 0.9, 0.5]), 2)
    assert lowest.tolist() == [1, 0] and highest.tolist() == [2, 3]
    # extreme_image_rows picks, per block, the branch whose weight varies most
    split = _split(count=4)
    rows = extreme_image_rows(torch.stack([weights[0], weights[0].flip(1)]), split, count=1)
    assert [row["label"] for row in rows] == ["block 0\nbranch 0", "block 1\nbranch 1"]
    assert rows[0]["weights"].tolist() == [1.0, 7.0]
    assert torch.equal(rows[0]["images"], split.images[[0, 3]])


def test_initial_model_is_the_model_fit_starts_from(monkeypatch, synthetic_data, tmp_path):
    built = []
    original = train.build_model
    monkeypatch.setattr(train, "build_model", lambda *args: built.append(original(*args)) or built[-1])
    config = make_config(backbone_out_channels=8, hidden_size=16, train_subset=200, test_subset=100,
                         num_epochs=1, batch_size=64, progress="none", run_dir=str(tmp_path / "run"))
    # Capture the weights as fit built them, before its first step changes them.
    snapshot = {}
    original_optimizer = train.build_optimizer
    monkeypatch.setattr(train, "build_optimizer", lambda model, cfg: snapshot.update(
        {k: v.clone() for k, v in model.state_dict().items()}) or original_optimizer(model, cfg))
    train.fit(config, data=synthetic_data, device="cpu")
    torch.manual_seed(123)  # whatever the notebook's state, the same initial weights
    initial = initial_model(config, len(synthetic_data.classes)).state_dict()
    assert snapshot and initial.keys() == snapshot.keys()
    assert all(torch.equal(initial[k], snapshot[k]) for k in initial)
    state = torch.get_rng_state()
    initial_model(config)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left alone


def test_branch_use_and_the_closing_note_follow_the_numbers():
    # 2 blocks, 10 images, 3 branches: block 0 uses branch 1 only; block 1 uses 0 and 2,
    # branch 2 only for 2 images in 10 (still "in use": OFTEN is 10%).
    weights = torch.full((2, 10, 3), -0.004)
    weights[0, :, 1] = 0.3
    weights[0, 0, 0] = 0.04  # above 0 but below ON: still off
    weights[1, :, 0] = 0.5
    weights[1, :2, 2] = 0.4
    assert branches_in_use(weights) == [[1], [0, 2]]
    assert torch.allclose(share_on(weights)[1], torch.tensor([1.0, 0.0, 0.2], dtype=torch.float64))
    assert describe_branch_use(weights).splitlines()[0].startswith("block 0 uses 1 branch (1)")
    rows = [AblationRow(change, accuracy, 50.0) for change, accuracy in [
        ("as trained", 50.0), ("block 0: mean weights", 49.0), ("block 1: mean weights", 47.5),
        ("every block: mean weights", 45.0),
        ("block 0: without branch 0", 50.5), ("block 0: without branch 1", 10.0),
        ("block 0: without branch 2", 49.8), ("block 1: without branch 0", 12.0),
        ("block 1: without branch 1", 50.0), ("block 1: without branch 2", 44.0)]]
    note = describe_ablation(rows, weights)
    assert "45.00% (-5.00 pp); one block at a time: block 0 -1.00 pp, block 1 -2.50 pp" in note
    assert "removing a branch in use: -40.00 to -6.00 pp" in note
    assert "removing a branch not in use: -0.20 to +0.50 pp" in note
    assert note.endswith("blocks that use more than one branch: block 1 (0, 2)")
    untrained = weights.clone()
    untrained[1, :, 2] = -0.004
    assert compare_branch_use(weights, untrained).splitlines() == [
        "block 0: in use before training [1], after [1] (the same)",
        "block 1: in use before training [0], after [0, 2] (changed)"]
