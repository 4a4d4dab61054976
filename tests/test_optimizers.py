"""Every `optimizer` choice trains; a choice that does not exist is refused by name."""
import pytest
import torch
import torch.nn.functional as F

from nbhelpers.config import OPTIMIZERS, ConfigError, make_config
from nbhelpers.train import build_model, build_optimizer, build_scheduler

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
