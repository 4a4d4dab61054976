"""nbhelpers.Model computes the seed's function and reads the seed's checkpoints."""
import pytest
import torch

from nbhelpers import Model
from nbhelpers.model import count_flops, count_parameters, format_layer_table, layer_table
from nbhelpers.seed_reference import SeedModel

SMALL = dict(num_blocks=3, input_channels=3, backbone_out_channels=16, num_conv_layer=3,
             hidden_size=32, num_classes=10)


def _seed_model_with_trained_looking_state(**sizes) -> SeedModel:
    torch.manual_seed(0)
    seed = SeedModel(**sizes)
    for module in seed.modules():  # BatchNorm at init is the identity: give it real statistics
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
            module.num_batches_tracked.fill_(7)
    return seed


@pytest.mark.parametrize("sizes", [SMALL, dict(SMALL, num_blocks=2, num_conv_layer=4, num_classes=7)])
def test_eval_output_equals_the_seed_model(sizes):
    seed = _seed_model_with_trained_looking_state(**sizes).eval()
    ours = Model(**sizes)
    ours.load_seed_state_dict(seed.state_dict())
    ours.eval()
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected, got = seed(images), ours(images)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert int(ours.backbone.blocks[0].convs[2][1].num_batches_tracked) == 7


def test_training_mode_forward_and_gradients_equal_the_seed_model():
    seed = _seed_model_with_trained_looking_state(**SMALL).train()
    ours = Model(**SMALL).train()
    ours.load_seed_state_dict(seed.state_dict())
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    losses = []
    for model in (seed, ours):
        torch.manual_seed(5)  # the same dropout masks
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    for j in range(3):
        assert torch.allclose(ours.backbone.blocks[1].convs[j][0].weight.grad,
                              seed.backbone.blocks[1].convs[j][0].weight.grad, rtol=1e-4, atol=1e-6)


def test_default_sizes_have_no_dead_branch_and_the_seed_flops():
    with torch.device("meta"):
        model = Model()
        seed = SeedModel(3, 3, 1024, 3, 512, 10)
    assert count_parameters(model) == 57_534_492
    assert count_parameters(seed) == 85_855_260
    assert count_parameters(seed) - count_parameters(model) == 3 * (1024 * 1024 * 9 + 1024 + 2 * 1024)  # the dead branches: 28.3M
    flops = count_flops(model)
    assert round(flops["forward"] / 1e9, 1) == 18.3
    assert round(flops["train_step"] / 1e9, 1) == 54.7


def test_layer_table_lists_shapes_and_parameters():
    rows = layer_table(Model(**SMALL))
    by_name = {r.name: r for r in rows}
    assert by_name["backbone.blocks.0.convs.2.0"].output_shape == (1, 16, 32, 32)
    assert by_name["backbone.blocks.2.convs.1.3"].output_shape == (1, 16, 4, 4)
    assert by_name["classifier.mlp.8"].output_shape == (1, 10)
    assert sum(r.parameters for r in rows) == count_parameters(Model(**SMALL))
    assert "total" in format_layer_table(rows)


def test_default_arguments_are_the_seeds():
    with torch.device("meta"):  # shapes only: the full model would cost 230 MB here
        assert Model().sizes == dict(num_blocks=3, input_channels=3, backbone_out_channels=1024,
                                     num_conv_layer=3, hidden_size=512, num_classes=10, mixing="seed")
    with pytest.raises(ValueError, match="num_blocks must be a positive integer"):
        Model(num_blocks=0)


def test_state_dicts_that_do_not_fit_are_refused_with_the_differences():
    seed_state = _seed_model_with_trained_looking_state(**SMALL).state_dict()
    with pytest.raises(ValueError, match=r"shapes that differ: .*checkpoint \(16, 3, 3, 3\), model \(32, 3, 3, 3\).* and \d+ more"):
        Model(**dict(SMALL, backbone_out_channels=32)).load_seed_state_dict(seed_state)
    missing = {k: v for k, v in seed_state.items() if k != "classifier.mlp.4.weight"}
    with pytest.raises(ValueError, match=r"missing .*classifier\.mlp\.4\.weight"):
        Model(**SMALL).load_seed_state_dict(missing)
    extra = dict(seed_state, **{"backbone.blocks.9.linear.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected .*backbone\.blocks\.9\.linear\.weight"):
        Model(**SMALL).load_seed_state_dict(extra)
    without_dead_branch = {k: v for k, v in seed_state.items() if ".convs.3." not in k}
    Model(**SMALL).load_seed_state_dict(without_dead_branch)  # the dead branch is optional


def _layouts_batch_norm_sees(model: Model, images: torch.Tensor) -> set[str]:
    """Train-mode forward and backward; the memory layouts the branches' batch norms got."""
    seen = set()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    hooks = [n.register_forward_pre_hook(lambda module, args: seen.add(
        "NCHW" if args[0].is_contiguous() else "NHWC")) for n in norms]
    try:
        model.train()(images).sum().backward()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize("width, count, expected", [(8, 2, {"NCHW"}), (8, 1, {"NHWC"}), (16, 2, {"NHWC"})])
def test_a_narrow_batch_norm_runs_in_nchw_only_where_threads_would_share_cache_lines(width, count, expected,
                                                                                      threads):
    # Fewer than 16 channels and more than one thread: PyTorch's channels-last kernel is slow there
    # (nbhelpers.model.batch_norm); everywhere else the batch norm keeps its input's layout.
    torch.manual_seed(0)
    model = Model(**dict(SMALL, backbone_out_channels=width)).to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    threads(count)
    assert _layouts_batch_norm_sees(model, images) == expected


def test_the_narrow_batch_norm_s_checks_leave_a_compiled_model_one_graph(threads):
    # torch.get_num_threads() inside a compiled region breaks the graph: on a CPU with two threads
    # `compile=True` ran every branch as a graph of its own, past dynamo's recompile limit.
    torch.manual_seed(0)
    model = Model(**dict(SMALL, backbone_out_channels=8)).to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    threads(2)
    explained = torch._dynamo.explain(model.train())(images)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_a_narrow_model_on_two_threads_in_channels_last_computes_the_seeds_function(threads):
    # The layout switch must change nothing but rounding: loss, gradients and BatchNorm's running
    # statistics as the seed's model computes them in NCHW.
    sizes = dict(SMALL, backbone_out_channels=8)
    seed = _seed_model_with_trained_looking_state(**sizes).train()
    ours = Model(**sizes)
    ours.load_seed_state_dict(seed.state_dict())
    ours = ours.to(memory_format=torch.channels_last)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    losses = []
    threads(2)
    for model, inputs in ((seed, images), (ours, images.contiguous(memory_format=torch.channels_last))):
        torch.manual_seed(5)  # the same dropout masks
        loss = torch.nn.functional.cross_entropy(model.train()(inputs), labels)
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    for j in range(3):
        ours_branch, seed_branch = ours.backbone.blocks[0].convs[j], seed.backbone.blocks[0].convs[j]
        assert torch.allclose(ours_branch[0].weight.grad, seed_branch[0].weight.grad, rtol=1e-4, atol=1e-6)
        assert torch.allclose(ours_branch[1].running_var, seed_branch[1].running_var, rtol=1e-5)
        assert torch.allclose(ours_branch[1].weight.grad, seed_branch[1].weight.grad, rtol=1e-4, atol=1e-6)
