"""The book's layers: shapes, initialisation, dropout, and the cost's gradients."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from lib.core.metrics import count_params
from lib.nielsen import layers, nets, train


def init(module, x, *args, seed=0):
    return module.init({"params": jax.random.PRNGKey(seed)}, x, *args)["params"]


def test_convpool_shapes_and_book_init():
    x = jnp.ones((2, 28, 28, 1))
    module = layers.ConvPool(200)
    params = init(module, x)
    assert params["kernel"].shape == (5, 5, 1, 200)
    assert module.apply({"params": params}, x).shape == (2, 12, 12, 200)
    # N(0, 1/n_out) with n_out = filters * 25 / 4; biases N(0, 1).
    np.testing.assert_allclose(np.std(params["kernel"]), np.sqrt(4 / (200 * 25)), rtol=0.05)
    np.testing.assert_allclose(np.std(params["bias"]), 1.0, rtol=0.25)
    second = layers.ConvPool(40)
    y = module.apply({"params": params}, x)
    assert second.apply({"params": init(second, y)}, y).shape == (2, 4, 4, 40)


def test_fully_connected_init_options():
    x = jnp.ones((3, 640))
    book = init(layers.FullyConnected(1000), x, False)
    np.testing.assert_allclose(np.std(book["kernel"]), np.sqrt(1 / 1000), rtol=0.02)
    n_in = init(layers.FullyConnected(1000, weight_init="sqrt_n_in"), x, False)
    np.testing.assert_allclose(np.std(n_in["kernel"]), np.sqrt(1 / 640), rtol=0.02)
    with pytest.raises(ValueError, match="unknown init"):
        init(layers.FullyConnected(10, weight_init="he"), x, False)


def test_softmax_starts_at_zero():
    params = init(layers.Softmax(10), jnp.ones((1, 100)), False)
    assert not np.any(params["kernel"]) and not np.any(params["bias"])


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("shallow", 784 * 100 + 100 + 100 * 10 + 10),
        ("conv1", 20 * 25 + 20 + 2880 * 100 + 100 + 1010),
        ("conv2", 520 + 40 * 20 * 25 + 40 + 640 * 100 + 100 + 1010),
        ("fc2", 520 + 20040 + 64100 + 100 * 100 + 100 + 1010),
        ("dropout", 520 + 20040 + 640 * 1000 + 1000 + 1000 * 1000 + 1000 + 10010),
    ],
)
def test_ladder_parameter_counts(name, count):
    model = nets.create(name)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.ones((1, 28, 28, 1)))["params"]
    )
    assert count_params(shapes) == count


def test_dropout_train_and_test_semantics():
    layer = layers.FullyConnected(4, activation="linear", dropout=0.5)
    x = jnp.ones((1000, 8))
    params = init(layer, x, False)
    params = {"kernel": jnp.ones((8, 4)), "bias": jnp.zeros(4)}
    # Test time: the full input, weights scaled by (1 - p).
    out = layer.apply({"params": params}, x, False)
    np.testing.assert_allclose(out, 0.5 * 8 * np.ones((1000, 4)), rtol=1e-6)
    # Training: inputs dropped at rate p and the survivors not rescaled.
    out = layer.apply({"params": params}, x, True, rngs={"dropout": jax.random.PRNGKey(1)})
    kept = np.asarray(out[:, 0])
    assert set(np.unique(kept)) <= set(range(9))
    assert abs(kept.mean() / 8 - 0.5) < 0.03
    again = layer.apply({"params": params}, x, True, rngs={"dropout": jax.random.PRNGKey(1)})
    np.testing.assert_array_equal(out, again)


def test_cost_gradient_matches_finite_differences():
    """The book's regularised cost, differentiated by JAX, against central differences."""
    with jax.enable_x64(True):
        model = nets.create("dropout", conv_features=(3, 4), hidden=(6, 5), dtype=jnp.float64)
        x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1), jnp.float64)
        y = jnp.array([0, 3, 7, 9])
        params = jax.tree.map(
            lambda p: p.astype(jnp.float64),
            jax.jit(model.init)(jax.random.PRNGKey(1), x[:1].astype(jnp.float32))["params"],
        )
        # Give the softmax layer non-zero weights so every gradient path is exercised.
        params["Softmax_0"]["kernel"] = 0.3 * jax.random.normal(
            jax.random.PRNGKey(2), params["Softmax_0"]["kernel"].shape, jnp.float64
        )
        cost = train.make_cost(model, l2_scale=0.05)
        rng = jax.random.PRNGKey(3)  # same dropout mask for every evaluation

        flat, unravel = jax.flatten_util.ravel_pytree(params)
        f = jax.jit(lambda flat: cost(unravel(flat), x, y, rng, True)[0])  # compiled once

        flat_grads = np.asarray(jax.jit(jax.grad(f))(flat))
        picks = np.random.default_rng(0).choice(flat.size, 40, replace=False)
        h = 1e-6
        # Every pick's two nudged copies in one call: f over a batch of parameter vectors.
        nudges = np.zeros((len(picks), flat.size))
        nudges[np.arange(len(picks)), picks] = h
        f_many = jax.jit(jax.vmap(f))
        numeric = (f_many(flat + nudges) - f_many(flat - nudges)) / (2 * h)
        for i, n in zip(picks, np.asarray(numeric), strict=True):
            assert abs(n - flat_grads[i]) <= 1e-6 * max(1.0, abs(n)), i


def test_l2_penalty_counts_weights_not_biases():
    params = {"a": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 5.0)}}
    assert float(train.l2_penalty(params)) == 16.0
