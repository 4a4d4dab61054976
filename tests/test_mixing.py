"""The four branch mixings compute what nbhelpers.model.MIXINGS says, and "seed" stays the seed's."""
import pytest
import torch
import torch.nn.functional as F

from nbhelpers import Model
from nbhelpers.branches import score_gradients
from nbhelpers.evaluation import collect_branch_weights
from nbhelpers.config import ConfigError, make_config
from nbhelpers.data import Split, normalize
from nbhelpers.model import MIXINGS, BasicBlock, count_parameters
from nbhelpers.seed_reference import SeedModel

SMALL = dict(num_blocks=3, input_channels=3, backbone_out_channels=16, num_conv_layer=3,
             hidden_size=32, num_classes=10)


def _split(count=24, seed=1) -> Split:
    generator = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, 256, (count, 3, 1, 1), generator=generator)
    noise = torch.randint(-60, 61, (count, 3, 32, 32), generator=generator)
    return Split((colours + noise).clamp(0, 255).to(torch.uint8), torch.arange(count) % 10)


def _model(mixing: str, **sizes) -> Model:
    torch.manual_seed(0)
    model = Model(**dict(SMALL, mixing=mixing, **sizes))
    for block in model.backbone.blocks:  # scores of both signs and of a size that matters
        if block.linear is not None:
            block.linear.weight.data.normal_(0, 1)
            block.linear.bias.data.normal_(0, 0.5)
    return model.eval()


def _scores(model: Model, split: Split) -> list[torch.Tensor]:
    """Linear(mean of each block's input), the scores every mixing starts from."""
    inputs = []
    hooks = [block.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
             for block in model.backbone.blocks]
    try:
        with torch.no_grad():
            model(normalize(split.images))
    finally:
        for hook in hooks:
            hook.remove()
    return [block.linear(x.mean(dim=(2, 3))).detach() for block, x in zip(model.backbone.blocks, inputs)]


def test_softmax_weights_are_the_softmax_of_the_scores_and_sum_to_one_per_image():
    model, split = _model("softmax"), _split()
    weights = collect_branch_weights(model, split, "cpu")
    for block, scores in enumerate(_scores(model, split)):
        assert torch.allclose(weights[block], scores.softmax(dim=1), atol=1e-6)
    assert torch.allclose(weights.sum(dim=2), torch.ones(3, len(split)), atol=1e-6)
    assert (weights > 0).all()
    assert weights.std(dim=1).max() > 0.01  # per image, not one fixed mixture


def test_sigmoid_weights_gate_each_branch_between_0_and_1_independently():
    model, split = _model("sigmoid"), _split()
    weights = collect_branch_weights(model, split, "cpu")
    for block, scores in enumerate(_scores(model, split)):
        assert torch.allclose(weights[block], torch.sigmoid(scores), atol=1e-6)
    assert ((weights > 0) & (weights < 1)).all()
    assert not torch.allclose(weights.sum(dim=2), torch.ones(3, len(split)), atol=0.05)  # not normalized


def test_equal_mixing_averages_the_branches_and_has_no_linear_layer():
    model, split = _model("equal"), _split()
    assert all(block.linear is None for block in model.backbone.blocks)
    weights = collect_branch_weights(model, split, "cpu")
    assert torch.equal(weights, torch.full_like(weights, 1 / 3))
    seed = Model(**SMALL)
    linear_parameters = sum(count_parameters(block.linear) for block in seed.backbone.blocks)
    assert count_parameters(model) == count_parameters(seed) - linear_parameters
    # The block's output is the plain mean of its branches' outputs.
    block, x = model.backbone.blocks[1], torch.randn(4, 16, 16, 16)
    with torch.no_grad():
        expected = sum(branch(x) for branch in block.convs) / 3
        assert torch.allclose(block(x), expected, atol=1e-6)
    assert "linear" not in " ".join(model.state_dict())


def test_seed_mixing_is_leaky_relu_of_the_scores_and_the_seeds_model_exactly():
    model, split = _model("seed"), _split()
    weights = collect_branch_weights(model, split, "cpu")
    for block, scores in enumerate(_scores(model, split)):
        assert torch.equal(weights[block], F.leaky_relu(scores))
    assert (weights < 0).any() and (weights > 1).any()  # unnormalized, slightly negative when off
    # The default is the seed's mixing, and it loads and computes the seed's model as before.
    assert Model(**SMALL).backbone.blocks[0].mixing == "seed"
    torch.manual_seed(3)
    reference = SeedModel(**SMALL).eval()
    ours = Model(**SMALL).eval()
    ours.load_seed_state_dict(reference.state_dict())
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(images), reference(images), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mixing", ["softmax", "sigmoid"])
def test_every_learned_mixing_has_the_seeds_parameters_and_gradients_reach_its_linear_layer(mixing):
    model = Model(**dict(SMALL, mixing=mixing)).train()
    assert count_parameters(model) == count_parameters(Model(**SMALL))
    loss = F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
    loss.backward()
    for block in model.backbone.blocks:
        assert block.linear.weight.grad.abs().sum() > 0


def test_a_mixing_that_does_not_exist_is_refused_by_name():
    with pytest.raises(ValueError, match="mixing must be one of seed, softmax, sigmoid, equal, not 'max'"):
        BasicBlock(3, 8, 3, mixing="max")
    with pytest.raises(ConfigError, match="mixing='max' is not allowed"):
        make_config(mixing="max")
    assert make_config(mixing=" Softmax ").mixing == "softmax"
    assert list(MIXINGS) == ["seed", "softmax", "sigmoid", "equal"]


def test_score_gradients_are_those_of_the_loss_and_the_seeds_off_branches_get_a_hundredth():
    model, split = _model("seed"), _split(count=16)
    weights, gradients = score_gradients(model, split, images=16)
    assert weights.shape == gradients.shape == (3, 3)
    assert not model.training and all(b.mixing_override is None for b in model.backbone.blocks)
    # The same numbers by hand: training mode, the scores as leaves of the graph.
    scores = {}
    def keep(block):
        def hook(module, args, out):
            out.retain_grad()
            scores[block] = out
        return hook
    hooks = [b.linear.register_forward_hook(keep(i)) for i, b in enumerate(model.backbone.blocks)]
    with torch.random.fork_rng():
        torch.manual_seed(0)  # score_gradients' dropout masks
        model.train()
        F.cross_entropy(model(normalize(split.images)), split.labels).backward()
    for hook in hooks:
        hook.remove()
    for block in range(3):
        assert torch.allclose(gradients[block], scores[block].grad.abs().mean(dim=0), rtol=1e-4, atol=1e-8)
        assert torch.allclose(weights[block], F.leaky_relu(scores[block]).detach().mean(dim=0), atol=1e-6)


def test_under_the_seeds_mixing_a_negative_score_passes_a_hundredth_of_the_gradient_on():
    # One block whose branch 2 scores negative for every image: its score's gradient is
    # exactly 0.01 times the gradient with respect to its weight a; branch 0 (positive) passes it whole.
    block = BasicBlock(3, 4, 3, mixing="seed")
    block.linear.weight.data.zero_()
    block.linear.bias.data.copy_(torch.tensor([0.5, 0.2, -0.3]))
    x = torch.randn(5, 3, 8, 8)
    scores = block.linear(x.mean(dim=(2, 3)))
    scores.retain_grad()
    weights = F.leaky_relu(scores)
    weights.retain_grad()
    out = sum(weights[:, j].view(-1, 1, 1, 1) * branch(x) for j, branch in enumerate(block.convs))
    out.square().sum().backward()
    assert torch.allclose(scores.grad[:, 2], 0.01 * weights.grad[:, 2])
    assert torch.allclose(scores.grad[:, 0], weights.grad[:, 0])


def test_score_updates_measure_the_runs_first_steps_row_by_row():
    # The same first steps replayed by hand: the run's initial model, optimizer, schedule and batches.
    from nbhelpers.branches import ScoreUpdates, describe_score_updates, initial_model, score_updates
    from nbhelpers.data import CifarLoader
    from nbhelpers.train import build_optimizer, build_scheduler

    config = make_config(size="tiny", mixing="seed", backbone_out_channels=8, hidden_size=16, batch_size=32)
    train = _split(count=96, seed=2)
    measured = score_updates(config, train, steps=2)
    assert isinstance(measured, ScoreUpdates) and measured.steps == 2
    assert measured.gradient.shape == measured.update.shape == (3, 3)

    model = initial_model(config)
    optimizer = build_optimizer(model, config)
    loader = CifarLoader(train, config.batch_size, train=True, seed=config.rand_seed)
    loader.set_epoch(1)
    scheduler = build_scheduler(optimizer, config, len(loader))
    def rows():
        return [torch.cat([b.linear.weight.detach(), b.linear.bias.detach()[:, None]], dim=1).clone()
                for b in model.backbone.blocks]
    start, gradients = rows(), torch.zeros(3, 3, dtype=torch.float64)
    model.train()
    torch.manual_seed(config.rand_seed)  # score_updates' dropout draws
    for images, labels in list(loader)[:2]:
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        for k, b in enumerate(model.backbone.blocks):
            g = torch.cat([b.linear.weight.grad, b.linear.bias.grad[:, None]], dim=1).double()
            gradients[k] += g.pow(2).mean(dim=1).sqrt()
        optimizer.step()
        scheduler.step()
    change = torch.stack([(e - s).double().pow(2).mean(dim=1).sqrt() for s, e in zip(start, rows())])
    assert torch.allclose(measured.gradient, gradients / 2, rtol=1e-4)
    assert torch.allclose(measured.update, change, rtol=1e-4)
    assert (measured.update > 0).all()
    lines = describe_score_updates(measured).splitlines()
    assert len(lines) == 3 and lines[0].startswith("block 0: branch 0: gradient ")
    ratio = float(measured.update[2].max() / measured.update[2].min())
    assert lines[2].endswith(f"change {ratio:.1f}x")


def test_score_updates_refuse_a_mixing_without_a_linear_layer():
    from nbhelpers.branches import score_updates
    with pytest.raises(ConfigError, match="mixing='equal' has no linear layer"):
        score_updates(make_config(size="tiny", mixing="equal"), _split())
