"""Logistic PCA: principal components for binary-like data, after Schein, Saul and Ungar,
"A generalized linear model for principal component analysis of binary data" (AISTATS
2003), the second baseline of Hinton and Salakhutdinov (Science 2006), whose 30-component
logistic PCA reconstructs MNIST's test digits with a squared error of 8.01 per image.

Each image `x` (d pixel intensities in [0, 1]) is read as the probabilities of Bernoulli
pixels `sigmoid(bias + code @ components)`, with a k-d `code` of its own and `bias` (d,)
and `components` (k, d) shared by all images: PCA's linear reconstruction put through a
logistic function. Fitting minimises the cross-entropy summed over pixels, over the
codes and the shared parameters together; a new image's code is found with the shared
parameters held. Both are full-batch Adam from PCA's solution, compiled as one scan.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib.autoencoders import pca

EPS = 1e-4  # intensities are clipped into [EPS, 1 - EPS] for the bias's starting point


class LogisticPCA(NamedTuple):
    bias: jax.Array  # (d,)
    components: jax.Array  # (k, d)


def logits(model: LogisticPCA, codes: jax.Array) -> jax.Array:
    return model.bias + codes @ model.components


def decode(model: LogisticPCA, codes: jax.Array) -> jax.Array:
    """The reconstructions (N, d): each pixel's probability."""
    return jax.nn.sigmoid(logits(model, codes))


def cross_entropy(model: LogisticPCA, codes: jax.Array, x: jax.Array) -> jax.Array:
    """Mean over the rows of `x` (N, d) of the cross-entropy summed over pixels."""
    z = logits(model, codes)
    return jnp.mean(jnp.sum(-(x * jax.nn.log_sigmoid(z) + (1 - x) * jax.nn.log_sigmoid(-z)), 1))


def squared_error(model: LogisticPCA, codes: jax.Array, x: jax.Array) -> float:
    """Mean over the rows of `x` of the squared reconstruction error summed over pixels
    (the paper's measure)."""
    return float(jnp.mean(jnp.sum((decode(model, codes) - x) ** 2, axis=1)))


def _start(x: np.ndarray, k: int) -> tuple[LogisticPCA, jax.Array]:
    """PCA's solution in logit units: the sigmoid's slope at its centre is 1/4, so PCA's
    codes times 4 give logits that move as PCA's reconstructions do near the mean."""
    fitted = pca.fit(x, k)
    bias = np.log(np.clip(fitted.mean, EPS, 1 - EPS) / (1 - np.clip(fitted.mean, EPS, 1 - EPS)))
    model = LogisticPCA(jnp.asarray(bias, jnp.float32), jnp.asarray(fitted.components, jnp.float32))
    return model, jnp.asarray(4 * pca.encode(fitted, x), jnp.float32)


def _minimise(loss, params, steps: int, learning_rate: float):
    """`steps` full-batch Adam updates of `params` on `loss`; returns (params, losses)."""
    tx = optax.adam(learning_rate)

    def update(carry, _):
        params, opt_state = carry
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    (params, _), losses = jax.lax.scan(update, (params, tx.init(params)), None, length=steps)
    return params, losses


def fit(
    x: np.ndarray, k: int, steps: int = 500, learning_rate: float = 0.02
) -> tuple[LogisticPCA, jax.Array, jax.Array]:
    """Logistic PCA of the rows of `x` (N, ...) with `k` components: (the model, the
    rows' codes (N, k), the cross-entropy before each step)."""
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    if not 1 <= k <= x.shape[1]:
        raise ValueError(f"k must be in [1, {x.shape[1]}], got {k}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    model, codes = _start(x, k)
    (model, codes), losses = jax.jit(
        lambda p, x: _minimise(lambda q: cross_entropy(q[0], q[1], x), p, steps, learning_rate)
    )((model, codes), jnp.asarray(x))
    return model, codes, losses


def encode(
    model: LogisticPCA, x: np.ndarray, steps: int = 500, learning_rate: float = 0.02
) -> jax.Array:
    """The codes (N, k) of new rows `x`, the shared parameters held; they start where PCA
    with the model's components would put them."""
    x = jnp.asarray(np.asarray(x, np.float32).reshape(len(x), -1))
    mean = jax.nn.sigmoid(model.bias)
    start = 4 * (x - mean) @ jnp.linalg.pinv(model.components)

    @jax.jit
    def solve(codes, x):
        return _minimise(lambda c: cross_entropy(model, c, x), codes, steps, learning_rate)[0]

    return solve(start, x)
