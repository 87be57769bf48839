"""Training the nets of Sabour, Frosst and Hinton, "Dynamic Routing Between Capsules"
(NIPS 2017): their losses, Adam with an exponentially decaying learning rate, random
shifts of up to two pixels with zero padding as the only augmentation, and the
predictions scored at evaluation.

The losses take `(params, (images, labels), key)` and return `(loss, metrics)`, the
form `lib.core.steps.make_step` turns into a step of the shared epoch loop
(`lib.core.loop.train`), whose batch and key follow from the step number alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lib.capsules import layers
from lib.capsules.nets import BaselineCNN, CapsNet
from lib.nielsen import augment

DECAY_RATE, DECAY_STEPS = 0.96, 2000

Loss = Callable[[Any, tuple[jax.Array, jax.Array], jax.Array], tuple[jax.Array, dict]]


def optimizer(
    learning_rate: float, decay_rate: float = DECAY_RATE, decay_steps: int = DECAY_STEPS
) -> optax.GradientTransformation:
    """Adam (its usual betas and epsilon) with the learning rate
    learning_rate * decay_rate ** (step / decay_steps)."""
    return optax.adam(optax.exponential_decay(learning_rate, decay_steps, decay_rate))


def shifted(key: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
    """Each image moved by its own whole-pixel (dy, dx), each in [-max_shift, max_shift],
    zero filled: the paper's only augmentation (max_shift 2)."""
    return augment.random_shift(key, images, max_shift) if max_shift else images


def capsnet_loss(
    model: CapsNet,
    max_shift: int = 2,
    reconstruction_weight: float = layers.RECONSTRUCTION_WEIGHT,
) -> Loss:
    """The mean over the batch of the margin loss plus, with a decoder, reconstruction_weight
    times the sum of squared errors of the image rebuilt from the true class's capsule."""

    def loss(params, batch, key):
        images, labels = batch
        images = shifted(key, images, max_shift)
        out = model.apply({"params": params}, images, labels)
        margin = jnp.mean(layers.margin_loss(out.lengths, labels))
        metrics = {
            "margin_loss": margin,
            "accuracy": jnp.mean(jnp.argmax(out.lengths, -1) == labels),
        }
        total = margin
        if out.reconstruction is not None:
            error = jnp.mean(layers.reconstruction_error(out.reconstruction, images))
            metrics["reconstruction_error"] = error
            total = total + reconstruction_weight * error
        return total, metrics

    return loss


def baseline_loss(model: BaselineCNN, max_shift: int = 2) -> Loss:
    """The mean softmax cross-entropy, with dropout keyed apart from the shifts."""

    def loss(params, batch, key):
        images, labels = batch
        shift_key, dropout_key = jax.random.split(key)
        images = shifted(shift_key, images, max_shift)
        logits = model.apply({"params": params}, images, train=True, rngs={"dropout": dropout_key})
        value = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        return value, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

    return loss


def classify(model: CapsNet | BaselineCNN) -> Callable[[Any, jax.Array], jax.Array]:
    """`predict(params, images) -> classes`: the longest digit capsule, or the largest
    logit (no dropout), jitted."""
    if isinstance(model, CapsNet):
        return jax.jit(
            lambda params, x: jnp.argmax(model.apply({"params": params}, x, decode=False)[0], -1)
        )
    return jax.jit(lambda params, x: jnp.argmax(model.apply({"params": params}, x), -1))


def init(model: CapsNet | BaselineCNN, key: jax.Array, image_shape=(28, 28, 1)) -> Any:
    """The model's parameters for images of `image_shape` (initialised in one compiled
    program, not op by op)."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    return jax.jit(lambda k: model.init(k, x)["params"])(key)
