"""lib.core: settings declared once, and plots that leave matplotlib's backend alone."""

import subprocess
import sys
from pathlib import Path

import pytest

from lib.core import config
from lib.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = (
    config.Setting("epochs", 60, "Epochs.", config.AT_LEAST_1),
    config.Setting("learning_rate", 0.1, "Eta.", config.POSITIVE),
    config.Setting("train_size", None, "Images kept.", config.AT_LEAST_1, kind=int),
    config.Setting("eps", (0.1, 0.3), "Budgets.", config.Range(0, 1, open_low=True)),
    config.Setting("optimizer", "sgd", "Update rule.", config.OneOf(("sgd", "adam"))),
)


def test_a_preset_goes_over_the_defaults_and_saves_as_plain_json_types():
    c = config.preset(SETTINGS, {"epochs": 3, "eps": [0.2]})
    assert (c.epochs, c.learning_rate, c.train_size, c.eps) == (3, 0.1, None, (0.2,))
    c.train_size = 500  # a typed placeholder takes its kind
    assert config.as_dict(c) == {"epochs": 3, "learning_rate": 0.1, "train_size": 500,
                                 "eps": [0.2], "optimizer": "sgd"}  # fmt: skip


def test_unknown_names_and_out_of_range_values_are_one_config_error_naming_each():
    with pytest.raises(ConfigError, match=r"unknown setting epoch;.*epochs"):
        config.preset(SETTINGS, {"epoch": 3})
    c = config.preset(SETTINGS, {"epochs": 0, "eps": (0.1, 1.5), "optimizer": "lbfgs"})
    with pytest.raises(ConfigError) as raised:
        config.check(c, SETTINGS)
    message = str(raised.value)
    assert "--config.epochs=0 must be >= 1" in message
    assert "--config.eps=0.1,1.5 must be in (0, 1]" in message
    assert "--config.optimizer=lbfgs must be one of sgd, adam" in message
    config.check(config.defaults(SETTINGS), SETTINGS)  # the defaults are in range
    assert float("nan") not in config.POSITIVE and None in config.POSITIVE


def test_resolve_takes_only_the_given_overrides_and_names_bad_ones_as_flags():
    base = config.preset(SETTINGS, {"epochs": 3})
    c = config.resolve(base, {"epochs": None, "learning_rate": 0.5}, SETTINGS)
    assert (c.epochs, c.learning_rate) == (3, 0.5)  # None: the preset's
    with pytest.raises(ConfigError, match="--eps= must be"):  # an empty list is a value
        config.resolve(config.preset(SETTINGS, {}), {"eps": []}, SETTINGS)
    c = config.resolve(config.preset(SETTINGS, {}), {"eps": [], "train_size": None}, SETTINGS, True)
    assert c.eps == (0.1, 0.3)  # an empty list unset, when asked
    with pytest.raises(ConfigError, match="--epochs=0 must be >= 1"):
        config.resolve(config.defaults(SETTINGS), {"epochs": 0}, SETTINGS)
    with pytest.raises(ConfigError, match="epochs"):  # a string for an int: not a TypeError
        config.resolve(config.defaults(SETTINGS), {"epochs": "many"}, SETTINGS)


def test_a_setting_defaulting_to_none_must_say_its_kind():
    with pytest.raises(TypeError, match="give its kind"):
        config.Setting("seed", None)


def test_importing_and_drawing_the_plots_never_touches_pyplot(tmp_path):
    code = (
        "import sys\n"
        "from lib.core import plots\n"
        "from lib.nielsen import studies\n"
        "history = [{'epoch': e, 'val_accuracy': 0.9 + e / 100} for e in (1, 2)]\n"
        f"plots.accuracy_curves(history, {str(tmp_path / 'a.png')!r}, title='t')\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.png").stat().st_size > 1000
