"""The training-data study: expansion names, quick outputs, bad flags, run settings."""

import dataclasses
import json
from pathlib import Path

import pytest
from commands import assert_refused, run_module

from experiments import expanded_data
from lib.core import config as config_lib
from lib.core.errors import ConfigError
from lib.nielsen import nets, studies
from lib.nielsen import train as train_lib

ROOT = Path(__file__).resolve().parents[2]
STRENGTHS = {"max_shift": 2, "max_degrees": 15.0, "max_skew": 0.3, "elastic_alpha": 34.0,
             "elastic_sigma": 4.0}  # fmt: skip


def cli(*args):
    return run_module("experiments.expanded_data", *args, timeout=120)


def test_expansions_combine_in_any_order():
    name, expanded, aug = expanded_data.parse_expansion("elastic+fixed+rotate", STRENGTHS)
    assert name == "fixed+rotate+elastic" and expanded
    assert (aug.max_degrees, aug.elastic_alpha, aug.max_shift, aug.max_skew) == (15.0, 34.0, 0, 0)
    assert expanded_data.parse_expansion("none", STRENGTHS) == ("none", False, None)
    assert expanded_data.parse_expansion("fixed", STRENGTHS) == ("fixed", True, None)


def test_small_sets_get_at_least_min_steps():
    config = {"epochs": 3, "min_steps": 600, "batch_size": 10}
    assert expanded_data.epochs_for(config, 500) == 12
    assert expanded_data.epochs_for(config, 5 * 500) == 3  # the fixed shifts: 250 steps/epoch


def test_a_preset_is_the_config_the_rung_fills_and_given_settings_go_over_it():
    quick = config_lib.as_dict(expanded_data.get_config("quick"))
    assert (quick["net"], quick["epochs"], quick["min_steps"]) == ("relu", 3, 2500)
    assert quick["batch_size"] is None  # the net's rung's, once resolved
    given = {"preset": "quick", "net": "conv1", "expansions": ["elastic+fixed", " none"],
             "train_sizes": [300, 400]}  # fmt: skip
    resolved = config_lib.as_dict(expanded_data.resolve(given))
    conv1 = nets.RUNGS["conv1"]
    assert resolved == {**quick, "net": "conv1", "expansions": ["fixed+elastic", "none"],
                        "train_sizes": [300, 400], "batch_size": conv1.batch_size,
                        "learning_rate": conv1.learning_rate, "l2": conv1.l2}  # fmt: skip
    # Every setting at its default, as the flags hold them, resolves as the given ones alone.
    every = {s.name: s.default for s in expanded_data.SETTINGS}
    assert config_lib.as_dict(expanded_data.resolve({**every, **given})) == resolved
    assert set(resolved) == {s.name for s in expanded_data.SETTINGS}
    dropout = config_lib.as_dict(expanded_data.resolve({"preset": "dropout_elastic"}))
    assert (dropout["epochs"], dropout["expansions"]) == (40, ["fixed+elastic"])


def test_bad_settings_in_process_are_config_errors():
    with pytest.raises(ConfigError, match="unknown preset 'slow'"):
        expanded_data.resolve({"preset": "slow"})
    with pytest.raises(ConfigError, match="unknown net 'nine'"):
        expanded_data.resolve({"net": "nine"})
    with pytest.raises(ConfigError, match="train_sizes must be whole numbers, got a"):
        expanded_data.resolve({"train_sizes": ["a"]})
    with pytest.raises(
        ConfigError, match=r"--seeds=0 must be >= 1; --max_skew=3.0 must be in \[0, 1\]"
    ):
        expanded_data.resolve({"seeds": 0, "max_skew": 3})
    with pytest.raises(ConfigError, match="no expansions given"):
        expanded_data.resolve({"expansions": [" "]})


def test_quick_setting_writes_the_study(tmp_path):
    config = {"preset": "quick", "train_sizes": [300], "epochs": 1, "min_steps": 0,
              "expansions": ["none", "elastic+fixed"], "num_devices": 1,
              "validation_size": 500, "test_size": 500}  # fmt: skip
    summary = expanded_data.run(config, workdir=str(tmp_path), verbose=False)
    for name in ("config.json", "summary.json", "metrics.jsonl", "table.md", "more_data.png",
                 "fixed+elastic/n300/summary.json"):  # fmt: skip
        assert (tmp_path / name).exists(), name
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(x["expansion"], x["train_size"], x["epoch"]) for x in lines] == [
        ("none", 300, 1), ("fixed+elastic", 300, 1)
    ]  # fmt: skip
    assert set(summary["runs"]) == {"none/n300", "fixed+elastic/n300"}
    assert summary["runs"]["fixed+elastic/n300"]["seeds"] == 1


def test_a_workdir_with_other_settings_is_refused(tmp_path):
    model = nets.create("relu")
    config = train_lib.TrainConfig(epochs=1, batch_size=10, learning_rate=0.03)
    studies.check_settings(tmp_path, model, config)
    studies.check_settings(tmp_path, model, dataclasses.replace(config, epochs=5))  # goes on
    other = dataclasses.replace(config, learning_rate=0.1, l2=0.5)
    with pytest.raises(
        train_lib.ConfigError, match=r"l2=0\.0 \(now 0\.5\), learning_rate=0\.03 \(now 0\.1\)"
    ):
        studies.check_settings(tmp_path, model, other)
    cosine = dataclasses.replace(config, schedule="cosine")  # its rate depends on the epochs
    studies.check_settings(tmp_path / "cosine", model, cosine)
    with pytest.raises(train_lib.ConfigError, match=r"epochs=1 \(now 5\)"):
        studies.check_settings(tmp_path / "cosine", model, dataclasses.replace(cosine, epochs=5))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--expansions=none,fixed+warp"], "unknown expansion 'warp'"),
        (
            ["--train_sizes=1000,60000"],
            "--train_sizes=60000 must be at most 50,000, the training images of mnist",
        ),
        (["--train_sizes=a"], "--train_sizes takes int values, got a"),
        (["--expansions=rotate", "--max_degrees=-5"], "--max_degrees=-5.0 must be in [0, 180]"),
        (["--expansions=rotate", "--max_degrees=0"], "'rotate' asks for max_degrees=0"),
        (["--epochs=0"], "--epochs=0 must be >= 1"),
        (["--batch_size=0"], "--batch_size=0 must be >= 1"),
        (["--min_steps=-1"], "--min_steps=-1 must be >= 0"),
    ],
)
def test_bad_flags_get_one_clear_line(args, message, tmp_path):
    done = cli(f"--workdir={tmp_path / 'run'}", *args)
    assert_refused(done, message)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "run").exists()


def test_the_size_figure_is_titled_with_the_studys_dataset(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(
        studies, "accuracy_vs_size", lambda series, path, title, **k: drawn.append(title)
    )
    config = config_lib.as_dict(expanded_data.resolve({"preset": "quick", "dataset": "kmnist"}))
    expanded_data.size_figure({}, config, tmp_path / "more_data.png")
    assert drawn[0].startswith("kmnist, ")
