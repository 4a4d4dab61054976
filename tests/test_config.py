"""Every training parameter is checked; papermill's strings are converted where unambiguous."""
import pytest

from nbhelpers.config import ConfigError, TrainConfig, make_config


def test_defaults_are_the_seeds():
    config = TrainConfig()
    assert (config.num_epochs, config.batch_size, config.learning_rate, config.weight_decay,
            config.max_lr, config.num_blocks, config.num_conv_layer,
            config.backbone_out_channels, config.hidden_size, config.rand_seed) == \
        (60, 128, 1e-3, 1e-2, 0.1, 3, 3, 1024, 512, 1002)
    assert (config.scheduler_step, config.precision, config.compile, config.progress) == \
        ("batch", "auto", "auto", "auto")
    assert (config.train_subset, config.test_subset, config.val_size) == (0, 0, 0)


def test_papermill_values_are_converted():
    config = make_config(num_epochs="60", max_lr="0.05", deterministic="true",
                         compile="False", scheduler_step="Epoch", batch_size=64.0)
    assert config.num_epochs == 60 and config.max_lr == 0.05 and config.deterministic is True
    assert config.compile is False and config.scheduler_step == "epoch" and config.batch_size == 64


@pytest.mark.parametrize("name, value, allowed", [
    ("num_epochs", "sixty", "an integer >= 1"),
    ("num_epochs", 0, "an integer >= 1"),
    ("num_epochs", -1, "an integer >= 1"),
    ("num_epochs", 2.5, "an integer >= 1"),
    ("num_epochs", True, "an integer >= 1"),
    ("batch_size", "0", "an integer >= 1"),
    ("train_subset", -5, "an integer >= 0"),
    ("learning_rate", 0, "a positive number"),
    ("max_lr", "fast", "a positive number"),
    ("max_lr", float("nan"), "a positive number"),
    ("weight_decay", -0.1, "a non-negative number"),
    ("scheduler_step", "step", "one of 'batch', 'epoch'"),
    ("precision", "fp16", "one of 'auto', 'bf16', 'fp32'"),
    ("progress", "loud", "one of 'auto', 'bar', 'log', 'none'"),
    ("compile", "maybe", "'auto', True or False"),
    ("resume", "perhaps", "True or False"),
    ("run_dir", 5, "a folder path"),
])
def test_each_bad_value_names_the_parameter_the_value_and_what_is_allowed(name, value, allowed):
    with pytest.raises(ConfigError) as info:
        make_config(**{name: value})
    message = str(info.value)
    assert message.startswith(f"{name}={value!r} is not allowed") and allowed in message


def test_unknown_parameters_are_refused():
    with pytest.raises(ConfigError, match="unknown training parameter.*num_epoch\\b"):
        make_config(num_epoch=3)
