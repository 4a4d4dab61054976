"""Ranger: torch-optimizer's Ranger with GC off, the per-parameter algorithm with GC on."""
import io

import pytest
import torch
import torch_optimizer
from torch.optim.lr_scheduler import OneCycleLR

from nbhelpers import Ranger
from nbhelpers.seed_reference import SeedRanger


def _small_net(seed=0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(6 * 6 * 6, 5))


def _train(model, optimizer, steps, scheduler=None, start=0):
    generator = torch.Generator().manual_seed(123)
    batches = [(torch.randn(8, 3, 8, 8, generator=generator), torch.randint(0, 5, (8,), generator=generator))
               for _ in range(start + steps)]
    for images, labels in batches[start:]:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def _max_difference(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_without_gc_it_matches_torch_optimizer_ranger(weight_decay):
    ours, theirs = _small_net(), _small_net()
    _train(ours, Ranger(ours.parameters(), lr=1e-2, weight_decay=weight_decay, use_gc=False), 50)
    _train(theirs, torch_optimizer.Ranger(theirs.parameters(), lr=1e-2, weight_decay=weight_decay), 50)
    assert _max_difference(ours, theirs) < 1e-6
    assert _max_difference(ours, _small_net()) > 1e-3  # it did train


@pytest.mark.parametrize("gc_conv_only", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_with_gc_it_matches_the_per_parameter_algorithm(gc_conv_only, weight_decay):
    ours, reference = _small_net(), _small_net()
    _train(ours, Ranger(ours.parameters(), lr=1e-2, weight_decay=weight_decay,
                        gc_conv_only=gc_conv_only), 50)
    _train(reference, SeedRanger(reference.parameters(), lr=1e-2, weight_decay=weight_decay,
                                 gc_conv_only=gc_conv_only), 50)
    assert _max_difference(ours, reference) < 1e-6
    plain = _small_net()
    _train(plain, Ranger(plain.parameters(), lr=1e-2, weight_decay=weight_decay, use_gc=False), 50)
    assert _max_difference(ours, plain) > 1e-4  # GC changes the result


def test_gc_centralizes_conv_and_linear_weights_only():
    from nbhelpers.ranger import centralized
    conv, linear, bias = torch.randn(4, 3, 3, 3), torch.randn(5, 7), torch.randn(5)
    assert centralized(conv).mean(dim=(1, 2, 3)).abs().max() < 1e-6
    assert centralized(linear).mean(dim=1).abs().max() < 1e-6
    assert centralized(bias) is bias
    assert centralized(linear, conv_only=True) is linear


def test_under_one_cycle_it_still_matches_the_reference_and_beta1_cycles():
    ours, reference = _small_net(), _small_net()
    runs = []
    for model, kind in ((ours, Ranger), (reference, SeedRanger)):
        optimizer = kind(model.parameters(), lr=1e-3, weight_decay=1e-2)
        scheduler = OneCycleLR(optimizer, max_lr=0.05, total_steps=40, anneal_strategy="linear")
        betas = []
        _train(model, optimizer, 20, scheduler)
        betas.append(optimizer.param_groups[0]["betas"][0])
        runs.append(betas)
    assert _max_difference(ours, reference) < 1e-6
    assert runs[0][0] < 0.95  # OneCycleLR moved beta1 down from 0.95


def test_state_dict_round_trip_continues_exactly():
    straight = _small_net()
    optimizer = Ranger(straight.parameters(), lr=1e-2, weight_decay=1e-2)
    _train(straight, optimizer, 20)

    first = _small_net()
    optimizer = Ranger(first.parameters(), lr=1e-2, weight_decay=1e-2)
    _train(first, optimizer, 9)  # stops between two Lookahead syncs (k=6)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert "slow_buffer" in saved["optimizer"]["state"][0]

    resumed = _small_net(seed=99)
    resumed.load_state_dict(saved["model"])
    optimizer = Ranger(resumed.parameters(), lr=1e-2, weight_decay=1e-2)
    optimizer.load_state_dict(saved["optimizer"])
    _train(resumed, optimizer, 11, start=9)
    assert _max_difference(straight, resumed) == 0


def test_step_returns_the_closure_loss_and_prints_nothing(capsys):
    model = _small_net()
    optimizer = Ranger(model.parameters())
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    assert optimizer.step() is None
    assert capsys.readouterr() == ("", "")


def test_the_seeds_call_works_unchanged_and_bad_values_are_refused():
    model = _small_net()
    optimizer = Ranger(model.parameters(), lr=1e-3, weight_decay=1e-2)
    assert optimizer.defaults["betas"] == (0.95, 0.999) and optimizer.defaults["eps"] == 1e-5
    assert optimizer.defaults["k"] == 6 and optimizer.defaults["alpha"] == 0.5
    with pytest.raises(ValueError, match="lr"):
        Ranger(model.parameters(), lr=-1)
    with pytest.raises(ValueError, match="betas"):
        Ranger(model.parameters(), betas=(0.9, 1.0))


def test_channels_last_parameters_and_replaced_storage_still_match_the_reference():
    ours, reference = _small_net(), _small_net()
    for model in (ours, reference):
        model.to(memory_format=torch.channels_last)
    optimizer = Ranger(ours.parameters(), lr=1e-2, weight_decay=1e-2)
    reference_optimizer = SeedRanger(reference.parameters(), lr=1e-2, weight_decay=1e-2)
    _train(ours, optimizer, 10)
    _train(reference, reference_optimizer, 10)
    assert ours[0].weight.is_contiguous(memory_format=torch.channels_last)
    # Something outside moves a parameter to new storage: the optimizer must follow.
    ours[0].weight.data = ours[0].weight.data.clone()
    _train(ours, optimizer, 10, start=10)
    _train(reference, reference_optimizer, 10, start=10)
    assert _max_difference(ours, reference) < 1e-6


def test_parameters_without_gradients_are_left_alone_and_late_ones_get_their_own_step_count():
    ours, reference = _small_net(), _small_net()
    optimizers = [Ranger(ours.parameters(), lr=1e-2), SeedRanger(reference.parameters(), lr=1e-2)]
    for model in (ours, reference):
        model[4].bias.requires_grad_(False)
    before = ours[4].bias.detach().clone()
    _train(ours, optimizers[0], 7)
    _train(reference, optimizers[1], 7)
    assert torch.equal(ours[4].bias, before)
    for model in (ours, reference):
        model[4].bias.requires_grad_(True)
    _train(ours, optimizers[0], 8, start=7)
    _train(reference, optimizers[1], 8, start=7)
    assert optimizers[0].state[ours[4].bias]["step"] == 8
    assert _max_difference(ours, reference) < 1e-6
