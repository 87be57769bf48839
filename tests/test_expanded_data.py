"""The training-data study: expansion names, quick outputs, bad flags, run settings."""

import dataclasses
import json
from pathlib import Path

import pytest
from commands import run_module

from experiments import expanded_data
from lib.nielsen import nets, studies
from lib.nielsen import train as train_lib

ROOT = Path(__file__).resolve().parents[1]
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


def test_quick_setting_writes_the_study(tmp_path):
    config = {"preset": "quick", "train_sizes": [300], "epochs": 1, "min_steps": 0,
              "expansions": ["none", "elastic+fixed"], "num_devices": 1}  # fmt: skip
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
    with pytest.raises(train_lib.ConfigError, match=r"learning_rate=0\.03, not 0\.1"):
        studies.check_settings(tmp_path, model, dataclasses.replace(config, learning_rate=0.1))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--expansions=none,fixed+warp"], "unknown expansion 'warp'"),
        (["--train_sizes=1000,60000"], "each train size must be in [1, 50000]"),
        (["--expansions=rotate", "--max_degrees=-5"], "max_degrees must be >= 0"),
    ],
)
def test_bad_flags_get_one_clear_line(args, message):
    done = cli(*args)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
