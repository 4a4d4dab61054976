"""Every training parameter is checked; papermill's strings are converted where unambiguous."""
import pytest

from nbhelpers.config import ConfigError, TrainConfig, check_injected_parameters, make_config


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
    ("num_epochs", "sixty", "an integer from 1 to 1000"),
    ("num_epochs", 0, "an integer from 1 to 1000"),
    ("num_epochs", -1, "an integer from 1 to 1000"),
    ("num_epochs", 2.5, "an integer from 1 to 1000"),
    ("num_epochs", True, "an integer from 1 to 1000"),
    ("num_epochs", 1e9, "an integer from 1 to 1000"),      # the schedule plot would list 8e9 steps
    ("batch_size", "0", "an integer >= 2"),
    ("batch_size", 1, "an integer >= 2"),                   # training-mode BatchNorm needs 2 images
    ("rand_seed", 5_000_000_000, "an integer from 0 to 4294967295"),  # NumPy seeds are 32-bit
    ("num_blocks", 6, "an integer from 1 to 5"),            # six poolings of a 32x32 image
    ("optimizer", "adam", "one of 'ranger', 'ranger_no_lookahead'"),
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


def test_unknown_parameters_are_refused_with_the_closest_name():
    with pytest.raises(ConfigError, match=r"unknown training parameter.*num_epoch \(did you mean num_epochs\?\)"):
        make_config(num_epoch=3)


def test_auto_picks_channels_last_on_a_cpu_and_bf16_only_where_it_is_faster(monkeypatch):
    import torch
    from nbhelpers import config as C
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for fast, precision in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(C, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert make_config().resolved(cpu) == {"precision": precision, "compile": False,
                                               "channels_last": True}
    assert make_config().resolved(cuda) == {"precision": "bf16", "compile": True, "channels_last": True}
    assert make_config(precision="fp32", channels_last=False).resolved(cpu)["channels_last"] is False


def test_auto_compiles_on_a_cpu_only_a_long_narrow_fp32_run_where_it_can(monkeypatch):
    # Measured faster only in fp32 below 16 channels, and worth its minute of compiling only for
    # 10,000 steps or more (nbhelpers.config); everywhere else eager, as before.
    import torch
    from nbhelpers import config as C
    cpu = torch.device("cpu")
    monkeypatch.setattr(C, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(C, "cpu_can_compile", lambda: True)
    long = make_config(size="long")
    assert long.planned_steps() == 23_460 and long.resolved(cpu)["compile"] is True
    assert make_config(size="long", num_epochs=25).planned_steps() == 9_775
    assert make_config(size="long", num_epochs=25).resolved(cpu)["compile"] is False
    assert make_config(size="long", num_epochs=26).resolved(cpu)["compile"] is True
    assert make_config(size="long", backbone_out_channels=16).resolved(cpu)["compile"] is False
    assert make_config(size="long", precision="bf16").resolved(cpu)["compile"] is False
    assert make_config(size="long", compile=False).resolved(cpu)["compile"] is False
    assert make_config(size="long", train_subset=8000).resolved(cpu)["compile"] is False  # 3,780 steps
    for size in ("demo", "small", "tiny"):
        assert make_config(size=size).resolved(cpu)["compile"] is False
    monkeypatch.setattr(C, "cpu_can_compile", lambda: False)  # no C++ compiler: eager
    assert long.resolved(cpu)["compile"] is False


# --- parameters papermill injects (issue: a misspelt -p was silently ignored) ---

PARAMETERS_CELL = 'num_epochs = 60  # passes\nbatch_size = 128\nfigures_dir = "runs/figures"\n'


def test_a_misspelt_papermill_parameter_is_refused_by_name():
    inputs = ["", PARAMETERS_CELL, "# Parameters\nnum_epoch = 5\nbatch_size = 64\n"]
    with pytest.raises(ConfigError) as info:
        check_injected_parameters(inputs)
    message = str(info.value)
    assert message.startswith("-p num_epoch (did you mean num_epochs?): not a parameter")
    assert "batch_size" in message.split("Its parameters are")[1]


def test_known_papermill_parameters_and_interactive_sessions_pass():
    check_injected_parameters(["", PARAMETERS_CELL, "# Parameters\nnum_epochs = 5\n"])
    check_injected_parameters(["", PARAMETERS_CELL, "x = 1"])  # no papermill: nothing to check


@pytest.mark.parametrize("vendor, flags, fast", [
    ("AuthenticAMD", {"avx512f", "avx512_bf16"}, True),    # EPYC: 72 ms bf16 vs 95 ms fp32
    ("GenuineIntel", {"avx512f", "avx512_bf16"}, False),   # Xeon without AMX: 108 vs 105 ms
    ("GenuineIntel", {"avx512_bf16", "amx_bf16"}, True),   # AMX: Intel's bf16 matrix units
    ("AuthenticAMD", {"avx2"}, False),                     # no bf16 at all: emulated, slower
])
def test_bf16_counts_as_fast_where_it_was_measured_faster(monkeypatch, vendor, flags, fast):
    from nbhelpers import runtime
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    monkeypatch.setattr(runtime, "cpu_vendor", lambda: vendor)
    assert runtime.cpu_has_fast_bf16() is fast


@pytest.mark.parametrize("system, installed, can", [
    ("Linux", True, True),
    ("Linux", False, False),    # $CXX names a compiler that is not installed
    ("Darwin", True, False),    # macOS: inductor also needs OpenMP installed
    ("Windows", True, False),   # Windows: a Visual Studio shell
])
def test_a_cpu_compiles_only_on_linux_with_the_compiler_inductor_calls(monkeypatch, system, installed, can):
    import sys
    from nbhelpers import runtime
    monkeypatch.setattr(runtime.platform, "system", lambda: system)
    monkeypatch.setattr(runtime, "_compiles_a_probe", lambda: True)
    # Any program that exists stands in for an installed compiler: this Python itself.
    monkeypatch.setenv("CXX", sys.executable if installed else "no-such-compiler-here")
    assert runtime.cpu_can_compile() is can


def test_a_compiler_that_is_there_but_cannot_build_leaves_the_run_eager(monkeypatch):
    import torch
    from nbhelpers import runtime

    def broken(*args, **kwargs):
        raise RuntimeError("C++ compile error: omp.h: No such file or directory")
    monkeypatch.setattr(torch, "compile", broken)
    runtime._compiles_a_probe.cache_clear()
    try:
        assert runtime._compiles_a_probe() is False
    finally:
        runtime._compiles_a_probe.cache_clear()  # the next caller probes the real torch.compile


# --- the sizes (nbhelpers.config.SIZES) ---

def test_long_runs_the_seeds_23460_steps_and_its_schedule_exactly():
    """60 epochs of 391 batches of 128 over all 50,000 training images, all 10,000 test images."""
    import torch
    from nbhelpers.ranger_parts import peak_of
    from nbhelpers.config import SIZES, WHAT
    from nbhelpers.data import CifarLoader, Split
    from nbhelpers.train import learning_rates
    long, full = make_config(size="long"), make_config(size="full")
    assert (long.train_subset, long.test_subset) == (0, 0)  # every image of both splits
    everything = Split(torch.zeros(50_000, 3, 1, 1, dtype=torch.uint8), torch.zeros(50_000, dtype=torch.long))
    steps_per_epoch = len(CifarLoader(everything, long.batch_size, train=True))
    assert steps_per_epoch * long.num_epochs == 23_460
    # The seed's recipe and schedule: only the width (and the head's) differ from full.
    differ = {k for k, v in long.to_dict().items() if full.to_dict()[k] != v}
    assert differ == {"size", "backbone_out_channels", "hidden_size"}
    assert long.backbone_out_channels < SIZES["demo"]["backbone_out_channels"]
    assert f"width {long.backbone_out_channels}," in WHAT["long"]
    # Where the schedule peaks, RAdam's r_t is near 1 (at demo's length it is far below).
    lrs = learning_rates(long, steps_per_epoch)
    assert len(lrs) == 23_460 and peak_of(lrs).r_t > 0.99


@pytest.mark.parametrize("sweep", [False, True])
@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
def test_auto_never_picks_long_which_is_asked_for_by_name(device, sweep):
    from nbhelpers.config import pick_size
    assert pick_size("auto", device, sweep=sweep) != "long"
    assert pick_size("long", device, sweep=sweep) == "long"
    assert make_config(size="LONG ").size == "long"
