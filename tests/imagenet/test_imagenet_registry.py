"""What the registry tells its callers: the smallest input each model trains at, the one
name checker for registered and smoke models, and where the reference numbers come from."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from launch import model_table
from lib.core.errors import ConfigError
from lib.imagenet import loop
from lib.imagenet import train as it
from lib.imagenet.nets import registry
from lib.imagenet.nets.inception import AUX_GRID


@functools.cache
def inception_v3():
    model = registry.get_model("inception_v3", num_classes=10)
    return model, registry.variable_shapes(model, 299)


def aux_grid(size):
    """The side of the grid Inception v3's auxiliary classifier reads at a size x size input
    (the output of mixed6e, which does not depend on the mode)."""
    model, variables = inception_v3()
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(
            v,
            x,
            capture_intermediates=lambda module, _: module.name == "mixed6e",
            mutable=["intermediates"],
        ),
        variables,
        x,
    )
    return state["intermediates"]["mixed6e"]["__call__"][0].shape[1]


def train_shapes(name, size):
    model = registry.get_model(name, num_classes=10)
    variables = registry.variable_shapes(model, registry.RESOLUTION[name])
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(
        lambda v, x: model.apply(
            v, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]
        )[0],
        variables,
        x,
    )


def test_inception_v3_trains_from_the_smallest_input_that_gives_its_aux_head_17x17():
    smallest = registry.MIN_TRAIN_RESOLUTION["inception_v3"]
    assert (aux_grid(smallest - 1), aux_grid(smallest)) == (AUX_GRID - 1, AUX_GRID) == (16, 17)
    logits, aux = train_shapes("inception_v3", smallest)
    assert logits.shape == aux.shape == (1, 10)
    # Below it the head's 5x5 convolution would see an empty map (NaN logits): refused.
    with pytest.raises(ValueError, match=r"needs a 17x17 grid, got 16x16.*inception_v3_noaux"):
        train_shapes("inception_v3", smallest - 1)
    # Without the head, and in evaluation, the small inputs still work.
    assert registry.MIN_TRAIN_RESOLUTION["inception_v3_noaux"] == 75
    assert train_shapes("inception_v3_noaux", 75).shape == (1, 10)
    assert registry.MIN_RESOLUTION["inception_v3"] == 75


def test_training_settings_and_the_benchmark_respect_the_aux_head():
    for size in (75, 298):
        config = loop.resolve({"model": "inception_v3", "image_size": size})
        with pytest.raises(ConfigError) as refused:
            loop.validate(config)
        message = str(refused.value)
        assert message.startswith(f"inception_v3 needs --image_size of at least 299, got {size}")
        assert "inception_v3_noaux trains from 75" in message and "\n" not in message
    loop.validate(loop.resolve({"model": "inception_v3", "image_size": 299}))
    loop.validate(loop.resolve({"model": "inception_v3_noaux", "image_size": 75}))
    # launch.bench_imagenet raises its input to this.
    assert (it.min_resolution("inception_v3"), it.min_resolution("inception_v3_noaux")) == (299, 75)


def test_one_name_checker_for_registered_and_smoke_models():
    assert registry.check_name("resnet50") == "resnet50"
    assert registry.check_name("resnet_tiny", it.SMOKE_MODELS) == "resnet_tiny"
    with pytest.raises(registry.UnknownModelError, match=r"choose one of: alexnet, .*xception$"):
        registry.check_name("resnet_tiny")
    with pytest.raises(registry.UnknownModelError, match=r"resnet51'; .*xception, resnet_tiny$"):
        registry.check_name("resnet51", it.SMOKE_MODELS)
    with pytest.raises(ConfigError, match=r"unknown model 'resnet51'; .*resnet_tiny"):
        loop.resolve({"model": "resnet51"})
    assert loop.resolve({"model": "resnet_tiny"})["image_size"] == 224


def test_the_table_footnote_names_each_models_reference_source():
    note = model_table.footnote(["resnet50", "alexnet_ksh", "resnet18", "xception"])
    lines = note.splitlines()
    assert lines[0] == "references:"
    assert lines[1] == f"- resnet50, resnet18: {registry.REFERENCE_SOURCE['resnet50']}"
    assert lines[2] == f"- alexnet_ksh: {registry.REFERENCE_SOURCE['alexnet_ksh']}"
    assert lines[3].startswith("- xception: Keras Applications")
    assert len(lines) == 4
