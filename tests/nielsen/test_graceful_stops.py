"""Stops asked of the book's trainer: under the scan driver one mid-epoch saves there and
resumes exactly, and one that comes as a ladder run ends stops the ladder before its next."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.core.stop import STOPPED
from lib.nielsen import nets, train


def tiny(splits, n_train=200):
    return splits._replace(
        train=splits.train.take(n_train),
        validation=splits.validation.take(100),
        test=splits.test.take(100),
    )


def assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_the_scan_driver_stops_between_calls_and_resumes_in_the_same_program(mnist_small):
    model = nets.create("shallow")
    optimizer = train.make_optimizer("sgd", 0.1)
    step = train.make_train_step(model, optimizer, 0.0)
    data = {"images": jnp.asarray(mnist_small.train.images[:400]),
            "labels": jnp.asarray(mnist_small.train.labels[:400])}  # fmt: skip
    init_key, shuffle_key, step_key = train.run_keys(0)
    idx = train.epoch_indices(shuffle_key, 0, 400, 10)  # 40 steps
    runner = train.EpochRunner(step, "scan", steps_per_call=10)

    def fresh():
        return train.init_state(model, optimizer, init_key, data["images"][:1])

    whole, metrics = runner(fresh(), data, idx, step_key)
    # asked as the first call ends, the runner stops after the second, queued before it looked
    state, first = runner(fresh(), data, idx, step_key, should_stop=lambda: True)
    assert first["loss"].shape == (20,) and int(state.step) == 20
    state, rest = runner(state, data, idx, step_key, start=20)
    assert rest["loss"].shape == (20,) and int(state.step) == 40
    assert runner._steps._cache_size() == 1  # one scan of 10 steps ran every call
    assert_same_params(whole.params, state.params)
    np.testing.assert_array_equal(metrics["loss"], np.concatenate([first["loss"], rest["loss"]]))


def test_a_scan_run_stopped_mid_epoch_resumes_as_if_never_stopped(
    mnist_small, tmp_path, monkeypatch
):
    monkeypatch.setattr(train, "SCAN_STEPS_PER_CALL", 7)  # 20 steps an epoch: 7, 7 and 6
    splits = tiny(mnist_small)
    model = nets.create("shallow")
    config = train.TrainConfig(
        epochs=2, batch_size=10, learning_rate=0.1, driver="scan", num_devices=1
    )
    whole = train.train_and_evaluate(model, splits, config, tmp_path / "whole")
    stopped = train.train_and_evaluate(
        model, splits, config, tmp_path / "split", should_stop=lambda: True
    )
    assert not stopped.summary["finished"]
    assert train.current_step(stopped.state) == 14, "the stop waited for more than two calls"
    saved = [p.name for p in (tmp_path / "split" / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved == ["14"]
    resumed = train.train_and_evaluate(model, splits, config, tmp_path / "split")
    assert resumed.summary["finished"] and train.current_step(resumed.state) == 40
    assert_same_params(whole.state.params, resumed.state.params)

    def timeless(path):
        drop = ("epoch_time_s", "examples_per_s")
        lines = path.read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]

    assert timeless(tmp_path / "split" / "metrics.jsonl") == timeless(
        tmp_path / "whole" / "metrics.jsonl"
    )


def test_a_stop_as_a_ladder_run_ends_stops_the_ladder_before_the_next(
    tmp_path, monkeypatch, signalled_as_it_ends
):
    from absl.testing import flagsaver

    from launch import ladder

    flags = {"nets": "shallow", "seeds": "0,1", "train_size": "200", "validation_size": "100",
             "test_size": "100", "epochs": "1", "num_devices": "1", "table_only": "false",
             "results": "", "readme": "", "figure": ""}  # fmt: skip
    first, second = tmp_path / "shallow" / "seed=0", tmp_path / "shallow" / "seed=1"
    with flagsaver.as_parsed(**flags):
        with monkeypatch.context() as patch, pytest.raises(SystemExit) as stopped:
            patch.setattr(train, "train_and_evaluate", signalled_as_it_ends)
            ladder.ladder(tmp_path)
        assert stopped.value.code == STOPPED
        assert (first / "summary.json").exists(), "the run that finished is kept"
        assert not second.exists(), "the next run started"
        kept = (first / "summary.json").stat().st_mtime_ns
        ladder.ladder(tmp_path)  # the same command goes on with the next run
    assert (second / "summary.json").exists()
    assert (first / "summary.json").stat().st_mtime_ns == kept
