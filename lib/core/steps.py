"""Step functions for the shared epoch loop (`lib.core.loop.train`): mini-batches chosen
by the step number alone, and a jitted optimiser update on any loss of the form
`loss(params, batch, key) -> (loss, metrics)`, so a resumed run repeats the
uninterrupted one exactly with nothing but the step number saved."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib.core import loop


class TrainState(NamedTuple):
    params: Any
    opt_state: Any


class Batches:
    """Mini-batches of `n` examples by step number: epoch e visits a permutation keyed on
    (seed, e), in `steps_per_epoch` batches of `batch_size` (the remainder left out)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size > n:
            raise ValueError(f"batch size {batch_size} exceeds the {n} training examples")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps_per_epoch = n // batch_size
        self._order: tuple[int, np.ndarray] | None = None  # the latest epoch's, kept

    def order(self, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s permutation of the n examples."""
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = (epoch, rng.permutation(self.n).astype(np.int32))
        return self._order[1]

    def indices(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        return self.order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]

    def schedule(self, epochs: int) -> loop.Schedule:
        return loop.Schedule(epochs, self.steps_per_epoch, self.batch_size)


Loss = Callable[[Any, tuple, jax.Array], tuple[jax.Array, dict]]


def make_step(
    loss: Loss,
    tx: optax.GradientTransformation,
    arrays: Sequence[jax.Array],
    batches: Batches,
    seed: int,
) -> Callable[[TrainState, int], tuple[TrainState, dict]]:
    """`step(state, step)` for `loop.train`: one update of `tx` on `loss(params, batch, key)
    -> (loss, metrics)`, the batch the `arrays` (on the device) at `batches.indices(step)`,
    the key folded from `seed` and the step."""

    @functools.partial(jax.jit, donate_argnums=0)
    def update(state, indices, step, arrays):
        batch = tuple(a[indices] for a in arrays)
        key = jax.random.fold_in(jax.random.key(seed), step)
        (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state), {"loss": value, **metrics}

    arrays = tuple(arrays)
    return lambda state, step: update(state, jnp.asarray(batches.indices(step)), step, arrays)


def batched(fn: Callable[..., Any], *arrays: jax.Array, batch_size: int = 1000) -> Any:
    """`fn` over the arrays in chunks of `batch_size` rows, the results (one row per input
    row) concatenated. A short last chunk is padded with copies of its last row and the
    padding's results dropped, so a jitted `fn` compiles once."""
    n = len(arrays[0])
    batch_size = min(batch_size, n)
    parts = []
    for i in range(0, n, batch_size):
        chunk = [a[i : i + batch_size] for a in arrays]
        pad = batch_size - len(chunk[0])
        if pad:
            chunk = [jnp.concatenate([c, jnp.repeat(c[-1:], pad, axis=0)]) for c in chunk]
        parts.append(fn(*chunk))
    return jax.tree.map(lambda *p: jnp.concatenate(p)[:n], *parts)
