"""The model zoo: parameter counts against the published models, forward shapes, layers."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.imagenet.nets import registry
from lib.imagenet.nets.common import adaptive_avg_pool, local_response_norm, max_pool_ceil

NUM_CLASSES = 10


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_parameter_count_equals_reference(name):
    assert registry.parameter_count(name) == registry.REFERENCE_PARAMS[name]


def test_two_tower_alexnet_matches_hand_count_from_the_paper():
    # Krizhevsky et al. 2012, section 3.5 / figure 2: kernels (count, size, depth seen).
    convs = [
        (96, 11, 3),  # conv1: both towers see the whole image
        (256, 5, 48),  # conv2: each tower sees its own 48 maps
        (384, 3, 256),  # conv3: crosses towers
        (384, 3, 192),  # conv4: own tower
        (256, 3, 192),  # conv5: own tower
    ]
    dense = [(9216, 4096), (4096, 4096), (4096, 1000)]
    hand = sum(n * k * k * depth + n for n, k, depth in convs)
    hand += sum(fan_in * fan_out + fan_out for fan_in, fan_out in dense)
    assert hand == 60_965_224
    assert registry.parameter_count("alexnet_ksh") == hand

    params = registry.variable_shapes(registry.get_model("alexnet_ksh"), 224)["params"]
    assert params["conv2"]["kernel"].shape == (5, 5, 48, 256)
    assert params["conv3"]["kernel"].shape == (3, 3, 256, 384)


def test_xception_count_is_params_plus_batch_stats_like_keras():
    shapes = registry.variable_shapes(registry.get_model("xception"), 299)
    assert registry.count_variables(shapes, ("params",)) == 22_855_952  # Keras "trainable"
    assert registry.count_variables(shapes, ("batch_stats",)) == 54_528  # "non-trainable"


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_every_model_traces_at_its_smallest_resolution(name):
    model = registry.get_model(name, num_classes=NUM_CLASSES)
    size = registry.MIN_RESOLUTION[name]
    variables = registry.variable_shapes(model, registry.RESOLUTION[name])
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert logits.shape == (2, NUM_CLASSES)
    assert logits.dtype == jnp.float32


def random_variables(shapes, seed=0):
    """Finite variables of the given shapes, drawn with NumPy.

    Compiling a big model's `init` takes XLA far longer (about 25 s of CPU for
    Inception v3) than compiling its forward pass (about 2 s); the forward tests
    only need scaled random weights, batch-norm scales of one and unit variances.
    """
    rng = np.random.default_rng(seed)

    def leaf(path, shape):
        name = path[-1].key
        if name in ("scale", "var"):
            return jnp.ones(shape.shape, shape.dtype)
        if name in ("bias", "mean"):
            return jnp.zeros(shape.shape, shape.dtype)
        fan_in = int(np.prod(shape.shape[:-1]))
        return jnp.asarray(rng.standard_normal(shape.shape, np.float32) / np.sqrt(fan_in))

    return jax.tree_util.tree_map_with_path(leaf, shapes)


@functools.cache
def model_and_forward(name, **kwargs):
    """The model and one compiled function for its training pass (returning the
    batch-stat updates) and its evaluation; cached so tests share the compilation.

    Compiled at LLVM's optimisation level 0: for one batch of two images the code need
    not be fast, and Inception v3's compiles in 1.5 s instead of 6.5 (runs in 0.16 s
    instead of 0.11)."""
    model = registry.get_model(name, num_classes=NUM_CLASSES, **kwargs)

    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
    def run(variables, x):
        train_out, updates = model.apply(
            variables, x, train=True, rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"]
        )
        return train_out, updates, model.apply(variables, x, train=False)

    return model, run


# One member of every family actually runs, at a small size.
# (Narrow hidden layers spare drawing 100M random classifier weights.)
FORWARD_CASES = [
    ("alexnet_ksh", 64, {"hidden": 64}),
    ("vgg11_bn", 32, {"hidden": 64}),
    ("resnet18", 32, {}),
    ("googlenet_aux", 64, {}),
    ("inception_v3_noaux", 75, {}),
    ("xception", 71, {}),
]


@pytest.mark.parametrize(("name", "size", "kwargs"), FORWARD_CASES)
def test_forward_runs_at_small_resolution(name, size, kwargs):
    model, forward = model_and_forward(name, **kwargs)
    variables = random_variables(registry.variable_shapes(model, size))
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    train_out, updates, eval_out = forward(variables, x)
    heads = train_out if isinstance(train_out, tuple) else (train_out,)
    assert len(heads) == (3 if name == "googlenet_aux" else 1)
    for logits in (*heads, eval_out):
        assert logits.shape == (2, NUM_CLASSES)
        assert bool(jnp.all(jnp.isfinite(logits)))
    if "batch_stats" in variables:
        # Training moves every running average a step (momentum < 1) toward the batch's.
        moved = jax.tree.map(
            lambda old, new: not np.allclose(old, new),
            variables["batch_stats"],
            updates["batch_stats"],
        )
        assert all(jax.tree.leaves(moved))


def test_evaluation_uses_running_averages_so_each_image_is_independent():
    model, forward = model_and_forward("resnet18")
    variables = random_variables(registry.variable_shapes(model, 32))
    x = 3.0 + jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    other = x.at[1].set(-x[1])  # same first image, another batch-mate
    train_a, _, eval_a = forward(variables, x)
    train_b, _, eval_b = forward(variables, other)
    np.testing.assert_allclose(eval_a[0], eval_b[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(train_a[0], train_b[0])  # batch statistics depend on batch-mates


def test_inception_v3_aux_head_in_training_only():
    model = registry.get_model("inception_v3", num_classes=NUM_CLASSES)
    variables = registry.variable_shapes(model, 299)
    assert "aux" in variables["params"]
    x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
    logits, aux = jax.eval_shape(
        lambda v, x: model.apply(
            v, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]
        )[0],
        variables,
        x,
    )
    assert logits.shape == aux.shape == (2, NUM_CLASSES)
    evaluated = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert evaluated.shape == (2, NUM_CLASSES)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = registry.get_model("resnet18", num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
    variables = registry.variable_shapes(model, 32)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    assert convs and all(e.outvars[0].aval.dtype == jnp.bfloat16 for e in convs)
    assert jaxpr.out_avals[0].dtype == jnp.float32


# The published figures are rounded to hundredths of a GMAC (torchvision's table); the
# commonly quoted Xception figure, to tenths.
GMACS_QUOTED_TO = {"xception": 0.1}


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_layer_macs_match_published(name):
    """Every model at its own resolution: a layer at the wrong place in a stack (a
    stride, a pool, a conv moved between stages) leaves the parameter count as it was
    but not the multiply-adds."""
    resolution = registry.RESOLUTION[name]
    model = registry.get_model(name)
    variables = registry.variable_shapes(model, resolution)
    gmacs = registry.layer_macs(model, variables, resolution) / 1e9
    rounding = GMACS_QUOTED_TO.get(name, 0.01) / 2
    assert gmacs == pytest.approx(registry.REFERENCE_GMACS[name], abs=rounding + 0.001)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(registry.UnknownModelError, match="resnet50"):
        registry.get_model("resnet51")


def test_local_response_norm_follows_the_paper_formula():
    x = jax.random.normal(jax.random.key(0), (1, 2, 2, 8)) * 30
    k, n, alpha, beta = 2.0, 5, 1e-4, 0.75
    got = np.asarray(local_response_norm(x, n, k, alpha, beta, groups=2))
    a = np.asarray(x)
    want = np.empty_like(a)
    for tower in range(2):  # normalisation never crosses the tower boundary
        maps = a[..., tower * 4 : (tower + 1) * 4]
        for i in range(4):
            lo, hi = max(0, i - n // 2), min(3, i + n // 2)
            denom = (k + alpha * np.sum(maps[..., lo : hi + 1] ** 2, axis=-1)) ** beta
            want[..., tower * 4 + i] = maps[..., i] / denom
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_adaptive_avg_pool_averages_pytorch_windows():
    x = jnp.arange(5.0).reshape(1, 5, 1, 1) * jnp.ones((1, 5, 3, 1))
    # Windows of 5 -> 2: rows 0..2 and 2..4 (they overlap at row 2).
    pooled = adaptive_avg_pool(x, (2, 3))
    np.testing.assert_allclose(pooled[0, :, 0, 0], [1.0, 3.0])
    # 2 -> 4 repeats each cell twice.
    small = jnp.arange(2.0).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(adaptive_avg_pool(small, (4, 1))[0, :, 0, 0], [0, 0, 1, 1])


def test_max_pool_ceil_sizes_of_googlenet():
    sizes = []
    x = jnp.zeros((1, 112, 112, 1))
    for window in (3, 3, 3, 2):
        x = max_pool_ceil(x, window, 2)
        sizes.append(x.shape[1])
    assert sizes == [56, 28, 14, 7]
    # The overhanging window sees only real values, never the -inf padding.
    y = max_pool_ceil(-jnp.arange(16.0).reshape(1, 4, 4, 1), 3, 2)
    assert y.shape == (1, 2, 2, 1) and bool(jnp.all(jnp.isfinite(y)))
