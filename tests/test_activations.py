"""The activation study: vmapped seeds equal lone seeds, quick outputs, bad flags."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from commands import run_module

from experiments import activations
from lib.nielsen import studies

ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    return run_module("experiments.activations", *args, timeout=120)


@pytest.mark.parametrize("layout", ["vmap", "unrolled", "devices"])
def test_vmapped_seeds_match_each_seed_alone(mnist_small, tmp_path, layout):
    """Two seeds as one program give each seed's lone run: curves, test accuracy, weights."""
    splits = mnist_small._replace(
        train=mnist_small.train.take(300),
        validation=mnist_small.validation.take(1000),
        test=mnist_small.test.take(1000),
    )
    config = {"epochs": 1, "batch_size": 10, "seed": 3, "seeds": 2, "eval_batch_size": 500,
              "driver": "auto", "ensemble_layout": layout, "num_devices": 1}  # fmt: skip
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
    config = {"preset": "quick", "train_size": 500, "epochs": 1, "seeds": 2,
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
        (["--variants=tanh,swish"], "unknown variant 'swish'"),
        (["--seeds=0"], "seeds must be at least 1"),
        (["--thresholds=high"], "thresholds must be percentages"),
    ],
)
def test_bad_flags_get_one_clear_line(args, message):
    done = cli(*args)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
