"""Restricted Boltzmann machines trained by one step of contrastive divergence (CD-1), the
layers of the deep belief nets of Hinton and Salakhutdinov, "Reducing the dimensionality of
data with neural networks" (Science 2006), as the Matlab code published with that paper
trains them (its rbm.m and rbmhidlinear.m): weights drawn N(0, 0.1^2), biases zero, the
momentum and weight cost of `lib.autoencoders.train`. (Hinton's later "A practical guide
to training restricted Boltzmann machines", 2010, advises smaller initial weights, 0.01,
and visible biases log(p / (1 - p)) of the pixels' means; they are not used here.)

Visible units are logistic: pixel intensities in [0, 1] are taken as their probabilities,
and the reconstruction uses probabilities rather than samples. Hidden units are either
binary (logistic, sampled in the positive phase) or, for the code layer of the
autoencoder, linear with unit-variance Gaussian noise (`HIDDEN`). The update keeps a
momentum ("velocity") and decays the weights (not the biases).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

HIDDEN = ("binary", "linear")


def check_hidden(hidden: str) -> None:
    """ValueError unless `hidden` is one of the kinds of hidden unit, `HIDDEN`."""
    if hidden not in HIDDEN:
        raise ValueError(f"hidden units {hidden!r} are unknown; choose from {', '.join(HIDDEN)}")


class Params(NamedTuple):
    w: jax.Array  # (visible, hidden)
    b_visible: jax.Array  # (visible,)
    b_hidden: jax.Array  # (hidden,)


class State(NamedTuple):
    params: Params
    velocity: Params


def init(key: jax.Array, n_visible: int, n_hidden: int, scale: float = 0.1) -> State:
    """Weights N(0, scale^2) (0.1: the paper's code), biases zero, velocity zero."""
    params = Params(
        scale * jax.random.normal(key, (n_visible, n_hidden)),
        jnp.zeros(n_visible),
        jnp.zeros(n_hidden),
    )
    return State(params, jax.tree.map(jnp.zeros_like, params))


def hidden_mean(params: Params, v: jax.Array, hidden: str = "binary") -> jax.Array:
    """E[h | v]: the hidden units' probabilities (binary) or means (linear)."""
    check_hidden(hidden)
    pre = v @ params.w + params.b_hidden
    return jax.nn.sigmoid(pre) if hidden == "binary" else pre


def visible_mean(params: Params, h: jax.Array) -> jax.Array:
    """E[v | h]: the logistic visible units' probabilities."""
    return jax.nn.sigmoid(h @ params.w.T + params.b_visible)


def cd1_gradient(
    params: Params, v: jax.Array, key: jax.Array, hidden: str = "binary"
) -> tuple[Params, jax.Array]:
    """CD-1's estimate of the log-likelihood's gradient (to ascend) on the batch `v`
    (N, visible), and the batch's mean squared reconstruction error per example."""
    positive = hidden_mean(params, v, hidden)
    if hidden == "binary":
        sample = (jax.random.uniform(key, positive.shape) < positive).astype(v.dtype)
    else:
        sample = positive + jax.random.normal(key, positive.shape, v.dtype)
    reconstruction = visible_mean(params, sample)
    negative = hidden_mean(params, reconstruction, hidden)
    n = v.shape[0]
    gradient = Params(
        (v.T @ positive - reconstruction.T @ negative) / n,
        jnp.mean(v - reconstruction, axis=0),
        jnp.mean(positive - negative, axis=0),
    )
    error = jnp.mean(jnp.sum((v - reconstruction) ** 2, axis=1))
    return gradient, error


def cd1_update(
    state: State,
    v: jax.Array,
    key: jax.Array,
    learning_rate: float | jax.Array,
    momentum: float | jax.Array,
    weight_cost: float = 0.0002,
    hidden: str = "binary",
) -> tuple[State, jax.Array]:
    """One CD-1 step with momentum and weight decay; returns the new state and the batch's
    reconstruction error (before the step)."""
    gradient, error = cd1_gradient(state.params, v, key, hidden)
    gradient = gradient._replace(w=gradient.w - weight_cost * state.params.w)
    velocity = jax.tree.map(lambda u, g: momentum * u + learning_rate * g, state.velocity, gradient)
    params = jax.tree.map(jnp.add, state.params, velocity)
    return State(params, velocity), error


def reconstruction_error(params: Params, v: jax.Array, hidden: str = "binary") -> jax.Array:
    """Mean squared error per example of the deterministic up-down pass (means, no sampling)."""
    reconstruction = visible_mean(params, hidden_mean(params, v, hidden))
    return jnp.mean(jnp.sum((v - reconstruction) ** 2, axis=1))


def up_pass(stack: Sequence[Params], v: jax.Array, hiddens: Sequence[str]) -> jax.Array:
    """The top layer's means of a stack of RBMs, each fed the means of the one below: the
    data each next RBM is trained on, and the code of the unrolled autoencoder."""
    for params, hidden in zip(stack, hiddens, strict=True):
        v = hidden_mean(params, v, hidden)
    return v
