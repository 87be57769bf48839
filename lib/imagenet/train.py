"""Image classification at ImageNet scale as pure functions: state, schedule, train and eval steps.

The recipe follows Goyal et al. 2017 ("Accurate, Large Minibatch SGD: Training ImageNet
in 1 Hour") with the refinements of He et al. 2019 ("Bag of Tricks for Image
Classification with Convolutional Neural Networks"):

- SGD with Nesterov momentum 0.9;
- a peak learning rate of 0.1 per 256 images (linear scaling rule, Goyal et al. section 2.1),
  reached by a linear warm-up (section 2.2) and then decayed to zero along a half cosine
  (He et al. section 5.1);
- label smoothing (Szegedy et al. 2015, "Rethinking the Inception Architecture", section 7);
- weight decay on the convolution and dense kernels only, not on biases or batch-norm
  parameters (He et al. section 3.1, "no bias decay"); it is added to the gradient, so it
  equals an L2 penalty of `weight_decay / 2 * |w|^2` in the loss, as in the papers.

Precision: parameters, optimizer state and batch-norm statistics are float32; the forward
and backward passes run in the model's `dtype` (bfloat16 on accelerators); logits, the
loss and the metrics are float32. Images may arrive as uint8 and are normalised on the
device, a quarter of the bytes of float32 to move from the host.

Data parallelism: `jit_train_step` compiles the step over a mesh with the batch sharded
along the `data` axis and the state replicated. Batch norm takes its mean and variance with
`jnp.mean` over the batch axis of the *global* array, so XLA inserts the cross-device
reduction itself and every device normalises with the statistics of the whole global
batch: the same numbers one device computes for that batch. The models therefore run with
`bn_axis_name=None` (see `lib.imagenet.nets.common`); tests/imagenet/test_imagenet.py checks
that eight devices give one device's batch statistics and parameters.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lib.core import parallel
from lib.imagenet.input_pipeline import IMAGENET_MEAN, IMAGENET_STD
from lib.imagenet.nets import registry
from lib.imagenet.nets.resnet import BasicBlock, ResNet

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]

# Images in ImageNet's training split (1,281,167); synthetic runs count epochs in these.
IMAGENET_TRAIN_SIZE = 1_281_167

# Small nets for smoke runs and tests on CPU, beside the published ones of the registry:
# ResNet-10 (one basic block per stage) at a quarter of ResNet's widths.
SMOKE_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet_tiny": functools.partial(
        ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock, width=16
    ),
}


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    batch_stats: Any  # batch norm's running averages; {} for nets without batch norm
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The optimisation settings of one run (see the module docstring)."""

    learning_rate: float  # peak, reached at the end of the warm-up
    total_steps: int
    warmup_steps: int = 0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    # Auxiliary classifiers' share of the loss (GoogLeNet, Inception v3): 0.3, the
    # discount of Szegedy et al. 2014, section 5.
    aux_weight: float = 0.3


# ----------------------------------------------------------------------------- models


def model_names() -> list[str]:
    return [*registry.MODELS, *SMOKE_MODELS]


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """A registered model (or a smoke model) built with `kwargs` (num_classes, dtype, ...);
    UnknownModelError for another name."""
    registry.check_name(name, SMOKE_MODELS)
    if name in SMOKE_MODELS:
        return SMOKE_MODELS[name](**kwargs)
    return registry.get_model(name, **kwargs)


def default_resolution(name: str) -> int:
    return registry.RESOLUTION.get(name, 224)


def min_resolution(name: str) -> int:
    """The smallest square input `name` trains at (registry.MIN_TRAIN_RESOLUTION)."""
    return registry.MIN_TRAIN_RESOLUTION.get(name, 32)


# ----------------------------------------------------------------------------- optimiser


def scaled_learning_rate(batch_size: int, per_256: float = 0.1) -> float:
    """Goyal et al.'s linear scaling rule: `per_256` for every 256 images of the batch."""
    return per_256 * batch_size / 256


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warm-up to `peak` over `warmup_steps`, then a half cosine down to 0.

    Step s (counted from 0) of the warm-up uses peak * (s + 1) / warmup_steps, so the
    first update already moves; the cosine reaches zero at `total_steps`.
    """
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        warm = peak * (step + 1) / max(warmup_steps, 1)
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * peak * (1 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < warmup_steps, warm, cosine)

    return schedule


def decay_mask(params: Any) -> Any:
    """True for the weights that get weight decay: convolution and dense kernels."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def make_optimizer(recipe: Recipe) -> optax.GradientTransformation:
    """Weight decay added to the gradient, then Nesterov-momentum SGD on the schedule."""
    schedule = learning_rate_schedule(recipe.learning_rate, recipe.warmup_steps, recipe.total_steps)
    return optax.chain(
        optax.add_decayed_weights(recipe.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=recipe.momentum, nesterov=recipe.nesterov),
    )


# ----------------------------------------------------------------------------- state


def make_init(
    model: nn.Module, optimizer: optax.GradientTransformation, image_size: int
) -> Callable[[jax.Array], TrainState]:
    """init(key) -> a fresh TrainState for images of `image_size`; pure, for `jax.jit`.

    Initialised in training mode, the mode it trains in; every model of the zoo gives the
    same variables in either mode, so a checkpoint restores into an evaluation-mode init.
    """

    def init(key: jax.Array) -> TrainState:
        images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        variables = model.init({"params": key, "dropout": key}, images, train=True)
        params = variables["params"]
        batch_stats = variables.get("batch_stats", {})
        return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, optimizer.init(params))

    return init


def jit_init(init: Callable[[jax.Array], TrainState], mesh: Mesh | None = None) -> Callable:
    """`init` compiled to create the state directly on the mesh's devices (replicated)."""
    return jax.jit(init, out_shardings=None if mesh is None else parallel.replicated(mesh))


def init_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    image_size: int,
    mesh: Mesh | None = None,
) -> TrainState:
    """A fresh state (see `make_init`), on the mesh's devices when one is given."""
    return jit_init(make_init(model, optimizer, image_size), mesh)(key)


# ----------------------------------------------------------------------------- loss, metrics


def model_input(images: jax.Array) -> jax.Array:
    """uint8 images normalised with the ImageNet statistics; float images pass unchanged."""
    if images.dtype != jnp.uint8:
        return images
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255
    inv_std = 1 / (jnp.asarray(IMAGENET_STD, jnp.float32) * 255)
    return (images.astype(jnp.float32) - mean) * inv_std


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    """Per-example cross-entropy against one-hot targets mixed with `smoothing` of uniform."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if smoothing:
        targets = optax.smooth_labels(targets, smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def correct_at_k(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Whether each label is among the k highest logits (ties go to the lower class index,
    as with argmax, so constant logits do not count as correct)."""
    k = min(k, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    return jnp.any(top == labels[:, None], axis=-1)


def _split_outputs(outputs: Any) -> tuple[jax.Array, list[jax.Array]]:
    # Nets with auxiliary classifiers return (logits, *aux_logits) in training.
    if isinstance(outputs, tuple):
        return outputs[0], list(outputs[1:])
    return outputs, []


# ----------------------------------------------------------------------------- steps


def make_train_step(
    model: nn.Module, recipe: Recipe, optimizer: optax.GradientTransformation
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """train_step(state, batch, key) -> (state, metrics); pure, for `jit_train_step`.

    `batch` holds "image" (N, S, S, 3), uint8 or float, and "label" (N,). Dropout draws
    from `fold_in(key, state.step)`. Metrics are float32 scalars: loss (with smoothing and
    auxiliary heads), top1 (training accuracy), learning_rate and grad_norm.
    """
    schedule = learning_rate_schedule(recipe.learning_rate, recipe.warmup_steps, recipe.total_steps)

    def loss_fn(params, batch_stats, images, labels, rng):
        outputs, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        logits, aux = _split_outputs(outputs)
        loss = jnp.mean(smoothed_cross_entropy(logits, labels, recipe.label_smoothing))
        for head in aux:
            head_loss = smoothed_cross_entropy(head, labels, recipe.label_smoothing)
            loss = loss + recipe.aux_weight * jnp.mean(head_loss)
        return loss, (logits, updates.get("batch_stats", batch_stats))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(key, state.step)
        labels = batch["label"]
        (loss, (logits, batch_stats)), grads = grad_fn(
            state.params, state.batch_stats, model_input(batch["image"]), labels, rng
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "top1": jnp.mean(correct_at_k(logits, labels, 1).astype(jnp.float32)),
            "learning_rate": schedule(state.step),
            "grad_norm": jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))),
        }
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return train_step


def make_eval_step(model: nn.Module) -> Callable[[TrainState, Batch], Metrics]:
    """eval_step(state, batch) -> sums over the batch's real images (batch["mask"], if any):
    loss (plain cross-entropy), top1 and top5 (correct counts) and count."""

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        logits = model.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            model_input(batch["image"]),
            train=False,
        )
        labels = batch["label"]
        mask = batch.get("mask")
        weight = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
        return {
            "loss": jnp.sum(weight * smoothed_cross_entropy(logits, labels, 0.0)),
            "top1": jnp.sum(weight * correct_at_k(logits, labels, 1)),
            "top5": jnp.sum(weight * correct_at_k(logits, labels, 5)),
            "count": jnp.sum(weight),
        }

    return eval_step


def jit_train_step(train_step: Callable, mesh: Mesh) -> Callable:
    """The train step compiled over `mesh`: batch sharded, state replicated and donated
    (updated in place, so only one copy of the state lives on each device)."""
    state, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state, data, state),
        out_shardings=(state, state),
        donate_argnums=0,
    )


def jit_eval_step(eval_step: Callable, mesh: Mesh) -> Callable:
    state, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(eval_step, in_shardings=(state, data), out_shardings=state)


def synthetic_batch(
    key: jax.Array, batch_size: int, image_size: int, num_classes: int, mesh: Mesh
) -> dict[str, jax.Array]:
    """Random uint8 images and labels of a global batch, generated on the devices, sharded."""

    def make() -> dict[str, jax.Array]:
        image_key, label_key = jax.random.split(key)
        shape = (batch_size, image_size, image_size, 3)
        images = jax.random.randint(image_key, shape, 0, 256, jnp.int32).astype(jnp.uint8)
        labels = jax.random.randint(label_key, (batch_size,), 0, num_classes, jnp.int32)
        return {"image": images, "label": labels}

    return jax.jit(make, out_shardings=parallel.batch_sharding(mesh))()
