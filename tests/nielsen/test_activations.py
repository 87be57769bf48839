"""The activation study: seeds trained together equal lone seeds, quick outputs, bad flags."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from commands import assert_refused, run_module

from experiments import activations
from lib.core import config as config_lib
from lib.core.errors import ConfigError, UserError
from lib.nielsen import studies

ROOT = Path(__file__).resolve().parents[2]


def cli(*args):
    return run_module("experiments.activations", *args, timeout=120)


def test_seeds_trained_together_match_each_seed_alone(mnist_small, tmp_path):
    """Two seeds trained together (the default layout: one per device here) give each
    seed's lone run: curves, test accuracy, weights. Every layout is checked against lone
    runs in test_mnist_convnet.py; this is the study's own driver."""
    splits = mnist_small._replace(
        train=mnist_small.train.take(300),
        validation=mnist_small.validation.take(1000),
        test=mnist_small.test.take(1000),
    )
    config = {"epochs": 1, "batch_size": 10, "seed": 3, "seeds": 2, "eval_batch_size": 500,
              "driver": "auto", "ensemble_layout": "auto", "num_devices": 1}  # fmt: skip
    together = activations.train_variant("relu", config, splits, tmp_path / "together")
    assert together.curves.shape == (2, 1)
    for m, seed in enumerate((3, 4)):
        alone = activations.train_variant(
            "relu", {**config, "seed": seed, "seeds": 1}, splits, tmp_path / f"alone{seed}"
        )
        np.testing.assert_allclose(alone.curves[0], together.curves[m], rtol=1e-4)
        np.testing.assert_allclose(alone.final_test[0], together.final_test[m], rtol=1e-4)
        for a, b in zip(
            jax.tree.leaves(alone.params), jax.tree.leaves(together.params), strict=True
        ):
            np.testing.assert_allclose(a, b[m], rtol=1e-4, atol=1e-5)


def test_quick_setting_writes_the_study(tmp_path):
    config = {"preset": "quick", "train_size": 500, "epochs": 1, "seeds": 2, "test_size": 500,
              "validation_size": 500,
              "variants": ["tanh", "sigmoid_x4"], "num_devices": 1}  # fmt: skip
    summary = activations.run(config, workdir=str(tmp_path), verbose=False)
    for name in ("config.json", "summary.json", "metrics.jsonl", "table.md",
                 "activations.png", "sigmoid_vs_tanh.png", "tanh/summary.json"):  # fmt: skip
        assert (tmp_path / name).exists(), name
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(x["variant"], x["epoch"]) for x in lines] == [("tanh", 1), ("sigmoid_x4", 1)]
    assert len(lines[0]["val_seed_accuracy"]) == 2
    row = summary["variants"]["sigmoid_x4"]
    assert row["seeds"] == 2 and set(row["first_epoch"]) == {"90", "95", "98.5", "99"}
    assert summary["variants"]["tanh"]["vs_tanh"] == {"mean_pp": 0.0, "final_pp": 0.0}

    # Variants added after the last go on in the same workdir; the finished are not retrained.
    done = {p: p.stat().st_mtime_ns for p in tmp_path.glob("tanh/checkpoints/**/*") if p.is_file()}
    history = (tmp_path / "tanh" / "metrics.jsonl").read_bytes()
    more = activations.run(
        {**config, "variants": ["tanh", "sigmoid_x4", "relu"]}, workdir=str(tmp_path), verbose=False
    )
    assert list(more["variants"]) == ["tanh", "sigmoid_x4", "relu"]
    for name in ("tanh", "sigmoid_x4"):
        assert more["variants"][name] == summary["variants"][name]
    assert done and {p: p.stat().st_mtime_ns for p in done} == done
    assert (tmp_path / "tanh" / "metrics.jsonl").read_bytes() == history
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["variant"] for x in lines] == ["tanh", "sigmoid_x4", "relu"]
    # Another order, or one left out, is another study.
    for variants in (["sigmoid_x4", "tanh", "relu"], ["tanh", "relu"]):
        with pytest.raises(UserError, match=r"variants=tanh,sigmoid_x4,relu \(now"):
            activations.run({**config, "variants": variants}, workdir=str(tmp_path))


def test_a_preset_is_the_config_and_given_settings_go_over_it():
    quick = config_lib.as_dict(activations.get_config("quick"))
    assert (quick["seeds"], quick["epochs"], quick["train_size"]) == (2, 8, 5000)
    assert quick["thresholds"] == [90.0, 95.0, 98.5, 99.0]
    assert quick["variants"] == list(activations.VARIANTS)
    given = {"preset": "quick", "variants": ["tanh", " relu", "tanh"], "thresholds": [90]}
    resolved = config_lib.as_dict(activations.resolve(given))
    assert resolved == {**quick, "variants": ["tanh", "relu"], "thresholds": [90.0]}
    # Every setting at its default, as the flags hold them, resolves as the given ones alone.
    every = {s.name: s.default for s in activations.SETTINGS}
    assert config_lib.as_dict(activations.resolve({**every, **given})) == resolved
    assert set(resolved) == {s.name for s in activations.SETTINGS}


def test_bad_settings_in_process_are_config_errors():
    with pytest.raises(ConfigError, match="unknown preset 'slow'"):
        activations.resolve({"preset": "slow"})
    with pytest.raises(ConfigError, match=r"--seeds=0 must be >= 1; --epochs=0 must be >= 1"):
        activations.resolve({"seeds": 0, "epochs": 0})
    with pytest.raises(ConfigError, match="thresholds must be percentages, got high"):
        activations.resolve({"thresholds": ["high"]})
    with pytest.raises(ConfigError, match="unknown setting seeeds"):
        activations.resolve({"seeeds": 2})
    with pytest.raises(ConfigError, match="batch size 6000 is larger than the 5000"):
        activations.resolve({"preset": "quick", "batch_size": 6000})


def test_study_helpers():
    assert studies.first_epoch_at([0.9, 0.985, 0.99], 0.985) == 2
    assert studies.first_epoch_at([0.9, 0.95], 0.99) is None
    assert studies.epochs_cell([7, 6, 9]) == "7 (6-9)"
    assert studies.epochs_cell([None, 9, 12]) == "- (2/3 seeds: 9, 12)"
    history = [{"val_accuracy": 0.5, "val_member_accuracy": [0.4, 0.6]}] * 3
    assert studies.member_curves(history).shape == (2, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants=tanh,swish"], "--variants=tanh,swish must be one of sigmoid, tanh"),
        (["--seeds=0"], "--seeds=0 must be >= 1"),
        (["--thresholds=high"], "--thresholds takes float values, got high"),
        (["--thresholds=0,99"], "--thresholds=0.0,99.0 must be in (0, 100]"),
        (["--epochs=0"], "--epochs=0 must be >= 1"),
        (["--batch_size=0"], "--batch_size=0 must be >= 1"),
        (
            ["--train_size=60000"],
            "--train_size=60000 must be at most 50,000, the training images of mnist",
        ),
    ],
)
def test_bad_flags_get_one_clear_line(args, message, tmp_path):
    done = cli(f"--workdir={tmp_path / 'run'}", *args)
    assert_refused(done, message)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "run").exists()
