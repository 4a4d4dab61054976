"""Every `optimizer` choice trains; a choice that does not exist is refused by name; RAdam's rectification."""
import math

import pytest
import torch
import torch.nn.functional as F

from nbhelpers.config import OPTIMIZERS, ConfigError, build_model, make_config
from nbhelpers.ranger import rectification, rectification_term, sma_length
from nbhelpers.train import build_optimizer, build_scheduler, schedule_trace

TINY = dict(backbone_out_channels=8, hidden_size=16, num_epochs=1)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_takes_a_training_step_that_changes_every_weight_matrix(name):
    config = make_config(optimizer=name, **TINY)
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=4)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    scheduler.step()
    assert torch.isfinite(loss)
    for key, value in model.named_parameters():
        assert torch.isfinite(value).all(), key
        if value.dim() > 1:  # every conv and linear weight has a gradient and must move
            assert not torch.equal(value, before[key]), f"{name} left {key} unchanged"


def _built(name):
    config = make_config(optimizer=name, **TINY)
    return build_optimizer(build_model(config), config)


def test_ranger_parts_are_really_switched_off():
    assert _built("ranger").defaults["alpha"] == 0.5 and _built("ranger").defaults["use_gc"]
    assert _built("ranger_no_lookahead").defaults["alpha"] == 1  # slow weights = fast weights
    assert not _built("ranger_no_gc").defaults["use_gc"]
    assert type(_built("sgd")) is torch.optim.SGD and type(_built("adamw")) is torch.optim.AdamW


@pytest.mark.parametrize("value", ["adam", "Rangerr", "", 3])
def test_an_unknown_optimizer_is_refused_by_name(value):
    with pytest.raises(ConfigError) as error:
        make_config(optimizer=value)
    message = str(error.value)
    assert message.startswith(f"optimizer={value!r} is not allowed")
    assert all(repr(choice) in message for choice in OPTIMIZERS)


def test_the_choice_is_read_case_insensitively_as_papermill_may_pass_it():
    assert make_config(optimizer=" AdamW ").optimizer == "adamw"


def test_radam_takes_plain_momentum_steps_until_its_variance_estimate_averages_five_gradients():
    threshold, beta1, beta2 = 5, 0.95, 0.999  # Ranger's defaults
    plain = [t for t in range(1, 20) if sma_length(t, beta2) <= threshold]
    assert plain == [1, 2, 3, 4, 5]
    assert rectification(3, beta1, beta2, threshold)[1] == pytest.approx(1 / (1 - beta1 ** 3))
    t = 100  # afterwards: Adam's step scaled by r_t, which rises towards 1
    assert rectification(t, beta1, beta2, threshold)[1] == pytest.approx(
        rectification_term(t, beta2) * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t))
    rising = [rectification_term(t, beta2) for t in (6, 100, 1000, 10_000, 100_000)]
    assert rising == sorted(rising) and rising[0] < 0.05 and rising[-1] == pytest.approx(1)
    assert math.isnan(rectification_term(2, beta2))


@pytest.mark.parametrize("optimizer", ["ranger", "adamw", "sgd"])
def test_the_schedule_cycles_each_optimizers_beta1_against_the_learning_rate(optimizer):
    config = make_config(num_epochs=4, optimizer=optimizer)
    trace = schedule_trace(config, steps_per_epoch=10)
    assert trace["lr"][0] == pytest.approx(0.1 / 25) and max(trace["lr"]) == pytest.approx(0.1)
    peak = trace["lr"].index(max(trace["lr"]))
    assert trace["beta1"][0] == pytest.approx(0.95) and trace["beta1"][peak] == pytest.approx(0.85)
    assert trace["beta1"][-1] == pytest.approx(0.95, abs=1e-3)
    seed_way = schedule_trace(make_config(num_epochs=60, optimizer=optimizer, scheduler_step="epoch"), 391)
    assert max(seed_way["lr"]) < 0.0049 and min(seed_way["beta1"]) > 0.949  # the seed: 60 x 391 steps
