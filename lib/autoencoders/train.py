"""Training the autoencoders through the shared epoch loop (`lib.core.loop.train`, its
steps made by `lib.core.steps`): the optimisers, and greedy layer-wise pretraining of a stack of
RBMs (Hinton and Salakhutdinov 2006), each layer a loop of its own in its own folder."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from lib.autoencoders import rbm
from lib.core import loop
from lib.core.steps import Batches, batched

OPTIMIZERS = ("adam", "momentum")

# Hinton and Salakhutdinov's RBM recipe: momentum 0.5 for the first epochs, then 0.9.
INITIAL_MOMENTUM, FINAL_MOMENTUM, MOMENTUM_SWITCH_EPOCH = 0.5, 0.9, 5


def optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """Adam, or SGD with momentum 0.9."""
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


def rbm_momentum(epoch: int) -> float:
    return INITIAL_MOMENTUM if epoch < MOMENTUM_SWITCH_EPOCH else FINAL_MOMENTUM


def make_rbm_step(
    data: jax.Array,
    batches: Batches,
    hidden: str,
    learning_rate: float,
    weight_cost: float,
    seed: int,
) -> Callable[[rbm.State, int], tuple[rbm.State, dict]]:
    """`step(state, step)` for `loop.train`: one CD-1 update of an RBM on `data`."""

    @functools.partial(jax.jit, donate_argnums=0)
    def update(state, indices, step, momentum, data):
        key = jax.random.fold_in(jax.random.key(seed), step)
        state, error = rbm.cd1_update(
            state, data[indices], key, learning_rate, momentum, weight_cost, hidden
        )
        return state, {"loss": error}

    def step_fn(state, step):
        momentum = rbm_momentum(step // batches.steps_per_epoch)
        return update(state, jnp.asarray(batches.indices(step)), step, momentum, data)

    return step_fn


def pretrain(
    data: jax.Array,
    sizes: Sequence[int],
    hiddens: Sequence[str],
    learning_rates: Sequence[float],
    epochs: int,
    batch_size: int,
    weight_cost: float,
    seed: int,
    root: str | Path,
    hooks: Callable[[int], loop.Hooks] = lambda layer: loop.Hooks(),
    should_stop: Callable[[], bool] | None = None,
) -> list[loop.Result] | None:
    """Greedy layer-wise pretraining of a stack of RBMs on `data` (N, sizes[0]): RBM i
    (sizes[i]-sizes[i+1], hidden units `hiddens[i]`) trains by CD-1 for `epochs` on the
    hidden means of the one below, in `root/rbm_<i>` (its checkpoints and metrics), so a
    stopped run resumes at the right layer and step. Returns each RBM's `loop.Result`
    (its state an `rbm.State`), bottom first, or None when `should_stop` ended it early."""
    for hidden in hiddens:
        rbm.check_hidden(hidden)
    if len(hiddens) != len(sizes) - 1:
        raise ValueError(
            f"{len(sizes) - 1} RBMs ({'-'.join(map(str, sizes))}) need as many kinds of "
            f"hidden unit; got {len(hiddens)}"
        )
    results = []
    v = data
    batches = Batches(len(data), batch_size, seed)
    key = jax.random.fold_in(jax.random.key(seed), 1_000_003)  # apart from the fine-tuning's
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        layer_key = jax.random.fold_in(key, i)
        state = rbm.init(jax.random.fold_in(layer_key, 0), n_in, n_out)
        step = make_rbm_step(
            v, batches, hiddens[i], learning_rates[i], weight_cost, seed=int(i + 7919 * seed)
        )
        result = loop.train(
            state,
            step,
            batches.schedule(epochs),
            Path(root) / f"rbm_{i}",
            hooks=hooks(i),
            should_stop=should_stop,
        )
        if not result.finished:
            return None
        params = result.state.params
        results.append(result)
        if i < len(sizes) - 2:
            hidden = hiddens[i]
            v = batched(jax.jit(lambda x, p=params, h=hidden: rbm.up_pass([p], x, [h])), v)
    return results
