"""Bad input on the command lines: one line on stderr, status 1, and nothing written."""

import math

import pytest
from commands import run_module

from experiments import common
from lib.core import config as config_lib
from lib.core.errors import ConfigError


def test_ranges_hold_what_they_say():
    assert 0 in common.FRACTION and 0.5 in common.FRACTION and 1 not in common.FRACTION
    assert 0 not in common.POSITIVE and 1e-9 in common.POSITIVE
    for bad in (math.nan, math.inf, -math.inf, True, "1"):
        assert bad not in common.NON_NEGATIVE
    assert None in common.AT_LEAST_1  # a setting left to its default
    assert str(common.FRACTION) == "in [0, 1)" and str(common.AT_LEAST_1) == ">= 1"
    assert str(common.POSITIVE) == "> 0" and str(common.Range(0, 13)) == "in [0, 13]"


def test_every_bad_setting_is_named_at_once():
    """As the experiments check their settings (lib.core.config.resolve), a list's values
    one by one."""
    settings = [
        common.Setting("dropout", 0.0, valid=common.FRACTION),
        common.Setting("epochs", 1, valid=common.AT_LEAST_1),
        common.Setting("l2", 0.1, valid=common.NON_NEGATIVE),
        common.Setting("eps", (0.1,), valid=common.Range(0, 1, open_low=True)),
    ]
    given = {"dropout": 1.5, "epochs": 0, "eps": [0.1, 2.0], "l2": 0.0}
    with pytest.raises(ConfigError) as raised:
        config_lib.resolve(config_lib.defaults(settings), given, settings)
    assert str(raised.value) == (
        "--dropout=1.5 must be in [0, 1); --epochs=0 must be >= 1; --eps=0.1,2.0 must be in (0, 1]"
    )


CASES = [
    ("experiments.mnist_convnet", "--dropout=1.5", "--dropout=1.5 must be in [0, 1)"),
    ("experiments.mnist_convnet", "--max_shift=100", "--max_shift=100 must be in [0, 13]"),
    ("experiments.mnist_convnet", "--max_degrees=1000", "--max_degrees=1000.0 must be in [0, 180]"),
    ("experiments.mnist_convnet", "--learning_rate=nan", "--learning_rate=nan must be > 0"),
    ("experiments.mnist_convnet", "--momentum=-5", "--momentum=-5.0 must be in [0, 1)"),
    ("experiments.mnist_convnet", "--num_devices=64", "--num_devices=64, but this machine has"),
    ("experiments.mnist_convnet", "stray", "unexpected argument 'stray'"),
    ("experiments.mnist_convnet", "--net=nine", "flag --net=nine: value should be one of"),
    ("experiments.expanded_data", "--max_skew=3", "--max_skew=3.0 must be in [0, 1]"),
    ("experiments.activations", "--seeds=0", "--seeds=0 must be >= 1"),
    ("experiments.imagenet_nets", "--image_size=0", "--image_size must be positive, got 0"),
    ("experiments.autoencoders", "--noise=2", "--noise=2.0 must be in [0, 1)"),
    ("experiments.autoencoders", "--layers=0", "--layers=0 must be widths in [1, 100000]"),
    ("experiments.capsules", "--decay_rate=0", "--decay_rate=0.0 must be in (0, 1]"),
    ("experiments.capsules", "--batch_size=0", "--batch_size=0 must be >= 1"),
    ("launch.ladder", "--epochs=-1", "--epochs=-1 must be >= 1"),
    ("launch.benchmark", "--steps=0", "--steps must be at least 1, got 0"),
    ("launch.benchmark", "--batch_sizes=0", "--batch_sizes takes whole numbers of at least 1"),
]


@pytest.mark.parametrize("module, flag, message", CASES, ids=[f"{m} {f}" for m, f, _ in CASES])
def test_bad_value_is_one_line_before_any_file(tmp_path, module, flag, message):
    workdir = tmp_path / "w"
    args = [flag] if module.startswith("launch.benchmark") else [flag, f"--workdir={workdir}"]
    done = run_module(module, *args, env={"CLASSIC_NETS_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert not workdir.exists() and not (tmp_path / "cache").exists()  # no data read either


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("experiments.mnist_convnet", ("--net", "--adversarial_training", "--driver")),
        ("experiments.adversarial", ("--targets", "--train", "--eps")),
    ],
)
def test_helpshort_lists_the_experiments_own_settings(module, names):
    """Each experiment's settings are its own flags: --helpshort lists them."""
    done = run_module(module, "--helpshort")  # absl's help exits with status 1
    assert "Traceback" not in done.stderr, done.stderr
    listed = {line.split(":")[0].strip() for line in done.stdout.splitlines()}
    assert set(names) <= listed, done.stdout[-2000:]
