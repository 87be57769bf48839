"""lib.core.loop: the shared epoch loop resumes exactly, stops on divergence, reports."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.core import loop
from lib.core.errors import DivergedError

X = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
Y = X @ np.array([1.0, -2.0, 0.5], np.float32)


def make_step(learning_rate=0.1):
    @jax.jit
    def update(w, step):
        order = jax.random.permutation(jax.random.PRNGKey(step // 8), 64)
        idx = jax.lax.dynamic_slice(order, ((step % 8) * 8,), (8,))
        x, y = jnp.asarray(X)[idx], jnp.asarray(Y)[idx]
        noise = 0.01 * jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(1), step), (3,))

        def loss(w):
            return jnp.mean((x @ w - y) ** 2)

        value, grad = jax.value_and_grad(loss)(w)
        return w - learning_rate * grad + noise, {"loss": value}

    return lambda w, step: update(w, step)


def evaluate(w):
    return {"val_loss": float(np.mean((X @ np.asarray(w) - Y) ** 2))}


SCHEDULE = loop.Schedule(epochs=4, steps_per_epoch=8, examples_per_step=8)


def lines(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def timeless(entries):
    return [
        {k: v for k, v in e.items() if k not in ("epoch_time_s", "examples_per_s")} for e in entries
    ]


def test_trains_and_writes_one_line_per_epoch(tmp_path):
    result = loop.train(jnp.zeros(3), make_step(), SCHEDULE, tmp_path, evaluate)
    assert result.finished
    assert [e["epoch"] for e in lines(tmp_path)] == [1, 2, 3, 4]
    assert result.history[-1]["val_loss"] < 0.1 * result.history[0]["train_loss"]


@pytest.mark.parametrize("stop_after", [3, 8, 13])  # mid-epoch, at an epoch's end, mid-epoch
def test_a_stopped_run_resumes_to_the_uninterrupted_result(tmp_path, stop_after):
    whole = loop.train(jnp.zeros(3), make_step(), SCHEDULE, tmp_path / "whole", evaluate)
    calls = iter(range(10**6))
    stopped = loop.train(
        jnp.zeros(3),
        make_step(),
        SCHEDULE,
        tmp_path / "split",
        evaluate,
        should_stop=lambda: next(calls) + 1 >= stop_after,
    )
    assert not stopped.finished
    resumed = loop.train(jnp.zeros(3), make_step(), SCHEDULE, tmp_path / "split", evaluate)
    assert resumed.finished
    np.testing.assert_array_equal(resumed.state, whole.state)
    assert timeless(lines(tmp_path / "split")) == timeless(lines(tmp_path / "whole"))


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    loop.train(jnp.zeros(3), make_step(), loop.Schedule(1, 8, 8), tmp_path, evaluate)
    with pytest.raises(DivergedError, match="epoch 2"):
        loop.train(jnp.zeros(3), make_step(learning_rate=1e6), SCHEDULE, tmp_path, evaluate)
    assert [e["epoch"] for e in lines(tmp_path)] == [1]
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [8]


def test_a_non_finite_loss_stops_the_run_at_the_next_progress_report(tmp_path):
    calls = []

    def step(w, step):
        calls.append(step)
        return w, {"loss": jnp.float32(np.nan if step >= 2 else 1.0)}

    hooks = loop.Hooks(progress_every_s=0.0)
    with pytest.raises(DivergedError, match="epoch 1, step 3 of 1000"):
        loop.train(jnp.zeros(3), step, loop.Schedule(1, 1000), tmp_path, hooks=hooks)
    assert len(calls) < 10  # not the rest of the epoch


def test_hooks_hear_start_progress_and_epochs_with_an_eta(tmp_path):
    heard = {"start": [], "progress": [], "epoch": []}
    hooks = loop.Hooks(
        on_start=heard["start"].append,
        on_progress=heard["progress"].append,
        on_epoch=heard["epoch"].append,
        progress_every_s=0.0,
    )
    loop.train(jnp.zeros(3), make_step(), SCHEDULE, tmp_path, evaluate, hooks)
    assert heard["start"] == [{"resumed_step": 0, "checkpoint_notice": None}]
    assert len(heard["epoch"]) == 4 and heard["epoch"][-1]["eta_s"] == 0
    assert heard["progress"] and all(p["eta_s"] >= 0 for p in heard["progress"])


def test_a_schedule_of_no_steps_is_refused():
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        loop.Schedule(epochs=0, steps_per_epoch=5)
