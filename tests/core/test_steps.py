"""lib.core.steps: batches by step number, chunked evaluation."""

import jax
import jax.numpy as jnp
import numpy as np

from lib.core import steps


def test_batched_matches_one_call_and_compiles_once():
    traces = []

    @jax.jit
    def fn(x, y):
        traces.append(x.shape)
        return {"sum": x.sum(-1) + y, "double": 2 * x}

    x = jnp.arange(23 * 3, dtype=jnp.float32).reshape(23, 3)
    y = jnp.arange(23, dtype=jnp.float32)
    out = steps.batched(fn, x, y, batch_size=10)  # chunks of 10, 10 and 3 (padded to 10)
    assert traces == [(10, 3)]
    whole = fn(x, y)
    for key in ("sum", "double"):
        np.testing.assert_array_equal(out[key], whole[key])


def test_batches_are_a_permutation_per_epoch_and_repeat_by_step():
    batches = steps.Batches(n=10, batch_size=3, seed=0)
    epoch0 = np.concatenate([batches.indices(s) for s in range(3)])
    assert len(set(epoch0.tolist())) == 9  # three whole batches, the remainder left out
    again = steps.Batches(n=10, batch_size=3, seed=0)
    np.testing.assert_array_equal(again.indices(4), batches.indices(4))
    np.testing.assert_array_equal(again.indices(1), epoch0[3:6])  # back to epoch 0
    assert not np.array_equal(batches.order(0), batches.order(1))
