"""The nets' blind spots: adversarial examples and fooling images, over any classifier.

Every attack takes `apply(params, x) -> logits` (images in [0, 1], NHWC or any shape
with the batch first) and returns images of x's shape, kept in [0, 1]; each is jitted
with `apply` static, so pass the same function object from call to call.

- `fgsm`: the fast gradient sign method, x + eps sign(grad_x loss) (Goodfellow, Shlens
  and Szegedy 2014, "Explaining and harnessing adversarial examples").
- `pgd`: projected gradient descent from a random start in the L-inf ball (Madry et
  al. 2017, "Towards deep learning models resistant to adversarial attacks").
- `minimum_distortion`: Szegedy et al. 2013 ("Intriguing properties of neural
  networks"): the smallest L2 perturbation r with f(x + r) = target, by L-BFGS on
  c |r| + loss(x + r, target) with x + r = (tanh(w) + 1) / 2 kept in the box, and a
  search over c; `rms_distortion` is their Table 1's measure.
- `fooling_images`: images a net classifies with near certainty that look like noise
  to a person (Nguyen, Yosinski and Clune 2014), by gradient ascent on one class's
  log-probability from a given start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Apply = Callable[[Any, jax.Array], jax.Array]


def _loss(apply: Apply, params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Summed cross-entropy, so each example's input gradient is its own loss's."""
    return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).sum()


@partial(jax.jit, static_argnames="apply")
def fgsm(apply: Apply, params, x: jax.Array, y: jax.Array, eps: float) -> jax.Array:
    """x moved by eps along the sign of its loss gradient (labels y), clipped to [0, 1]."""
    grad = jax.grad(partial(_loss, apply, params))(x, y)
    return jnp.clip(x + eps * jnp.sign(grad), 0.0, 1.0)


@partial(jax.jit, static_argnames=("apply", "steps"))
def pgd(
    apply: Apply,
    params,
    x: jax.Array,
    y: jax.Array,
    eps: float,
    steps: int,
    step_size: float,
    key: jax.Array,
) -> jax.Array:
    """`steps` signed-gradient ascent steps of `step_size` on the loss, each projected
    back into the L-inf ball of radius eps around x and into [0, 1], from a uniform
    random start in the ball."""
    start = x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps)

    def project(z):
        return jnp.clip(jnp.clip(z, x - eps, x + eps), 0.0, 1.0)

    def step(_, z):
        grad = jax.grad(partial(_loss, apply, params))(z, y)
        return project(z + step_size * jnp.sign(grad))

    return jax.lax.fori_loop(0, steps, step, project(start))


@partial(jax.jit, static_argnames="apply")
def _predict(apply: Apply, params, x: jax.Array) -> jax.Array:
    return jnp.argmax(apply(params, x), axis=-1)


def predictions(apply: Apply, params, x: jax.Array, batch_size: int = 1000) -> jax.Array:
    """The predicted labels of x, in batches (compiled once per `apply` and batch shape)."""
    return jnp.concatenate(
        [_predict(apply, params, x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    )


def rms_distortion(x: jax.Array, x_adv: jax.Array) -> jax.Array:
    """Per image, sqrt(mean over pixels of (x_adv - x)^2): Szegedy et al.'s measure."""
    axes = tuple(range(1, x.ndim))
    return jnp.sqrt(jnp.mean((x_adv - x) ** 2, axis=axes))


@partial(jax.jit, static_argnames=("apply", "iterations"))
def _distort(apply: Apply, params, x, target, c, iterations: int):
    """For each image (and its own weight c), L-BFGS on c |r| + loss(x + r, target)
    over w, where x + r = (tanh w + 1) / 2."""
    inside = jnp.clip(x, 1e-4, 1 - 1e-4)  # tanh's preimage of the box's faces is infinite

    def one(image, label, weight):
        def objective(w):
            moved = (jnp.tanh(w) + 1) / 2
            norm = jnp.sqrt(jnp.sum((moved - image) ** 2) + 1e-12)
            logits = apply(params, moved[None])[0]
            return weight * norm + optax.softmax_cross_entropy_with_integer_labels(logits, label)

        solver = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(objective)

        def step(_, carry):
            w, state = carry
            value, grad = value_and_grad(w, state=state)
            updates, state = solver.update(
                grad, state, w, value=value, grad=grad, value_fn=objective
            )
            return optax.apply_updates(w, updates), state

        w0 = jnp.arctanh(2 * jnp.clip(image, 1e-4, 1 - 1e-4) - 1)
        w, _ = jax.lax.fori_loop(0, iterations, step, (w0, solver.init(w0)))
        return (jnp.tanh(w) + 1) / 2

    return jax.vmap(one)(inside, target, c)


def check_labels(apply: Apply, params, x: jax.Array, labels, what: str = "target") -> None:
    """ValueError unless every one of `labels` (concrete, not traced) names one of the
    net's classes: out of range, the softmax would silently score no class at all."""
    classes = jax.eval_shape(lambda z: apply(params, z), x[:1]).shape[-1]
    labels = np.asarray(labels)
    bad = labels[(labels < 0) | (labels >= classes)]
    if bad.size:
        raise ValueError(
            f"{what} labels must be in [0, {classes}), the net's classes; got {bad[0]}"
        )


def minimum_distortion(
    apply: Apply,
    params,
    x: jax.Array,
    target: jax.Array,
    c_values: Sequence[float] = (10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01),
    iterations: int = 50,
    refine: int = 6,
) -> tuple[jax.Array, jax.Array]:
    """The least-distorted x + r classified as `target`, and whether one was found, per
    image: a full L-BFGS solve for each penalty weight of `c_values`, then `refine`
    rounds of `search_c` (bisection in log c, per image, between the largest c that
    succeeded and the smallest above it that failed, since a larger c weighs the
    distortion more; a tenth of the smallest c tried where none has succeeded yet).

    Where no c succeeds the image is returned unchanged with found False.
    """
    check_labels(apply, params, x, target)
    batch = (-1,) + (1,) * (x.ndim - 1)
    best, best_norm = x, jnp.full(len(x), jnp.inf)

    def attempt(c):
        nonlocal best, best_norm
        moved = _distort(apply, params, x, target, c, iterations)
        hit = predictions(apply, params, moved) == target
        norm = rms_distortion(x, moved)
        better = hit & (norm < best_norm)
        best = jnp.where(better.reshape(batch), moved, best)
        best_norm = jnp.where(better, norm, best_norm)
        return hit

    search_c(attempt, len(x), c_values, refine)
    return best, jnp.isfinite(best_norm)


def search_c(
    attempt: Callable[[jax.Array], jax.Array],
    n: int,
    c_values: Sequence[float],
    refine: int,
) -> tuple[jax.Array, jax.Array]:
    """The search over the penalty weight c of `minimum_distortion`, for n images at once:
    `attempt(c)` solves with each image's own c (n,) and says which succeeded (n,). Every
    c of `c_values` is tried, smallest first, then `refine` rounds of `next_c`. Returns
    (c_hit, c_miss): per image, the largest c that succeeded (0 where none did) and the
    smallest c above it that failed (inf where none did)."""
    if not len(c_values) or min(c_values) <= 0:
        raise ValueError(f"c_values must be positive penalty weights; got {tuple(c_values)}")
    c_hit, c_miss = jnp.zeros(n), jnp.full(n, jnp.inf)
    for c in sorted(c_values):
        c = jnp.full(n, c, jnp.float32)
        c_hit, c_miss = update_bracket(c, attempt(c), c_hit, c_miss)
    for _ in range(refine):
        c = next_c(c_hit, c_miss)
        c_hit, c_miss = update_bracket(c, attempt(c), c_hit, c_miss)
    return c_hit, c_miss


def update_bracket(
    c: jax.Array, hit: jax.Array, c_hit: jax.Array, c_miss: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The bracket (c_hit, c_miss) after trying c with outcome `hit`, per image: c_hit the
    largest c that succeeded (0: none), c_miss the smallest that failed above it (inf:
    none), so that c_hit < c_miss always. Where none has succeeded, c_miss is the smallest
    c that failed."""
    c_hit_new = jnp.where(hit & (c > c_hit), c, c_hit)
    # A success at or above the old c_miss leaves no failure known above it.
    c_miss = jnp.where(c_miss <= c_hit_new, jnp.inf, c_miss)
    c_miss = jnp.where(~hit & (c > c_hit_new) & (c < c_miss), c, c_miss)
    return c_hit_new, c_miss


def next_c(c_hit: jax.Array, c_miss: jax.Array) -> jax.Array:
    """The c to try next, per image: midway in log c between c_hit and c_miss (ten times
    c_hit when no c above it has failed); a tenth of the smallest c that failed where
    none has succeeded, so every round tries a new, smaller c."""
    found = c_hit > 0
    above = jnp.where(jnp.isfinite(c_miss), c_miss, 10 * c_hit)
    middle = jnp.sqrt(jnp.where(found, c_hit, 1.0) * jnp.where(found, above, 1.0))
    lower = jnp.where(jnp.isfinite(c_miss), c_miss, 1.0) / 10
    return jnp.where(found, middle, lower)


def fooling_images(
    apply: Apply,
    params,
    start: jax.Array,
    label: jax.Array,
    confidence: float = 0.9999,
    step_size: float = 0.01,
    max_steps: int = 2000,
) -> tuple[jax.Array, jax.Array]:
    """From `start` (noise, or a blank image), signed-gradient ascent on log p(label | x)
    in [0, 1] until the net gives each image's label at least `confidence` (each image
    stops moving once it does) or `max_steps` pass; returns the images and their
    probabilities of `label`."""
    check_labels(apply, params, start, label, "fooling")
    return _fooling_images(apply, params, start, label, confidence, step_size, max_steps)


@partial(jax.jit, static_argnames=("apply", "max_steps"))
def _fooling_images(apply, params, start, label, confidence, step_size, max_steps):

    def probability(z):
        return jnp.take_along_axis(jax.nn.softmax(apply(params, z)), label[:, None], 1)[:, 0]

    def log_p(z):
        return -_loss(apply, params, z, label)

    def not_done(carry):
        z, step = carry
        return (step < max_steps) & jnp.any(probability(z) < confidence)

    def ascend(carry):
        z, step = carry
        moving = (probability(z) < confidence).reshape((-1,) + (1,) * (z.ndim - 1))
        grad = jax.grad(log_p)(z)
        return jnp.where(moving, jnp.clip(z + step_size * jnp.sign(grad), 0, 1), z), step + 1

    images, _ = jax.lax.while_loop(not_done, ascend, (start, jnp.int32(0)))
    return images, probability(images)
