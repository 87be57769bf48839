"""From a circuit to a Support Vector Machine, and on to MNIST.

Karpathy, "Hacker's guide to Neural Networks", chapter 2 ("Machine Learning"):
the binary SVM score = a*x + b*y + c is a circuit of multiply and add gates; training
pulls its output up on a +1 point and down on a -1 point whenever the margin is
violated (score < 1 for +1, score > -1 for -1), and pulls a and b towards zero
(regularisation). The same SVM is a loss, hinge plus L2, for `jax.grad`; a 2-layer
net of ReLU units trains the same way ("Training a Neural Network").

Beyond the text: the multiclass (Weston-Watkins) hinge loss on MNIST pixels, and on
random Fourier features (Rahimi and Recht, "Random Features for Large-Scale Kernel
Machines", 2007), whose inner products approximate the RBF kernel, so a linear SVM
on them approximates a kernel SVM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib.karpathy import gates
from lib.karpathy.gates import Node

Params = dict[str, Any]

# The toy data of chapter 2 ("Binary Classification"): (x, y) points with +1/-1 labels.
TOY_POINTS = np.array(
    [[1.2, 0.7], [-0.3, -0.5], [3.0, 0.1], [-0.1, -1.0], [-1.0, 1.1], [2.1, -3.0]]
)
TOY_LABELS = np.array([1, -1, 1, -1, -1, 1])

# The text's starting point for the SVM.
SVM_INIT: Params = {"a": 1.0, "b": -2.0, "c": -1.0}

# score = a*x + b*y + c as gates.
SVM_CIRCUIT: gates.Circuit = (
    Node(gates.multiply, ("a", "x"), "ax"),
    Node(gates.multiply, ("b", "y"), "by"),
    Node(gates.add, ("ax", "by"), "ax+by"),
    Node(gates.add, ("ax+by", "c"), "score"),
)


def toy_data(dtype: Any = None) -> tuple[jax.Array, jax.Array]:
    """The six toy points and their +1/-1 labels as arrays (float64 under x64)."""
    return jnp.asarray(TOY_POINTS, dtype), jnp.asarray(TOY_LABELS)


def svm_score(params: Params, points: jax.Array) -> jax.Array:
    """a*x + b*y + c for each row (x, y) of `points`."""
    return params["a"] * points[..., 0] + params["b"] * points[..., 1] + params["c"]


def accuracy(
    score_fn: Callable[[Params, jax.Array], jax.Array],
    params: Params,
    points: jax.Array,
    labels: jax.Array,
) -> jax.Array:
    """The fraction of points on the right side of the decision boundary (score = 0)."""
    return jnp.mean(jnp.where(score_fn(params, points) > 0, 1, -1) == labels)


# The SVM as a circuit ---------------------------------------------------------------


def margin_pull(score: jax.Array, label: jax.Array) -> jax.Array:
    """+1 (pull up) for a +1 point scoring below 1, -1 for a -1 point above -1, else 0."""
    pull_up = (label == 1) & (score < 1)
    pull_down = (label == -1) & (score > -1)
    return jnp.where(pull_up, 1.0, jnp.where(pull_down, -1.0, 0.0))


def circuit_svm_pulls(
    params: Params, point: jax.Array, label: jax.Array, reg: float = 1.0
) -> Params:
    """The pulls on a, b, c for one point: backprop of the margin pull, plus -reg * (a, b).

    These point uphill for the SVM, so a step follows them (params += step * pull). The
    text's regularisation pull is -a and -b (reg = 1).
    """
    wires = gates.forward(SVM_CIRCUIT, {**params, "x": point[0], "y": point[1]})
    grads = gates.backward(SVM_CIRCUIT, wires, margin_pull(wires["score"], label))
    return {
        "a": grads["a"] - reg * params["a"],  # regularisation pulls a and b towards zero
        "b": grads["b"] - reg * params["b"],
        "c": grads["c"],
    }


@jax.jit
def circuit_svm_step(
    params: Params, point: jax.Array, label: jax.Array, step_size: float, reg: float = 1.0
) -> Params:
    """One stochastic step of the circuit SVM on one point."""
    pulls = circuit_svm_pulls(params, point, label, reg)
    return {k: params[k] + step_size * pulls[k] for k in params}


class ToyRun(NamedTuple):
    params: Params
    history: list[tuple[int, float]]  # (iterations done, training accuracy)
    iterations: int  # iterations until 100% training accuracy, or all of them if never


def train_by_random_points(
    step: Callable[[Params, jax.Array, jax.Array], Params],
    score_fn: Callable[[Params, jax.Array], jax.Array],
    params: Params,
    key: jax.Array,
    *,
    eval_every: int = 25,
    max_iterations: int = 5000,
) -> ToyRun:
    """SGD on the toy data, one random point at a time, until 100% training accuracy.

    Accuracy is measured before the first step and every `eval_every` steps after it.
    """
    points, labels = toy_data()
    order = np.asarray(jax.random.randint(key, (max_iterations,), 0, len(labels)))
    history: list[tuple[int, float]] = []
    for it in range(max_iterations + 1):
        if it % eval_every == 0 or it == max_iterations:
            acc = float(accuracy(score_fn, params, points, labels))
            history.append((it, acc))
            if acc == 1.0:
                return ToyRun(params, history, it)
        if it < max_iterations:
            i = order[it]
            params = step(params, points[i], labels[i])
    return ToyRun(params, history, max_iterations)


def train_circuit_svm(
    key: jax.Array,
    params: Params | None = None,
    step_size: float = 0.01,
    reg: float = 1.0,
    eval_every: int = 25,
    max_iterations: int = 5000,
) -> ToyRun:
    """The text's SVM training loop: the circuit's pulls on one random point per step."""
    params = {k: jnp.asarray(v, toy_data()[0].dtype) for k, v in (params or SVM_INIT).items()}
    return train_by_random_points(
        lambda p, x, y: circuit_svm_step(p, x, y, step_size, reg),
        svm_score,
        params,
        key,
        eval_every=eval_every,
        max_iterations=max_iterations,
    )


# The SVM as a loss -------------------------------------------------------------------


def hinge_loss(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """max(0, 1 - label * score): zero once a point is beyond the margin."""
    return jnp.maximum(0.0, 1.0 - labels * scores)


def svm_loss(params: Params, points: jax.Array, labels: jax.Array, reg: float = 1.0) -> jax.Array:
    """Mean hinge loss plus reg/2 * (a^2 + b^2).

    Its gradient on one point is exactly minus the circuit's pulls with the same reg.
    """
    l2 = params["a"] ** 2 + params["b"] ** 2
    return jnp.mean(hinge_loss(svm_score(params, points), labels)) + 0.5 * reg * l2


class LossRun(NamedTuple):
    params: Params
    losses: jax.Array  # the loss before each step
    accuracies: jax.Array  # the training accuracy before each step


def train_loss_svm(
    params: Params | None = None,
    steps: int = 2000,
    learning_rate: float = 0.01,
    reg: float = 1.0,
) -> LossRun:
    """Full-batch gradient descent on `svm_loss` with `jax.grad` and `optax.sgd`."""
    points, labels = toy_data()
    params = {k: jnp.asarray(v, points.dtype) for k, v in (params or SVM_INIT).items()}
    optimizer = optax.sgd(learning_rate)

    def step(carry, _):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(svm_loss)(params, points, labels, reg)
        updates, opt_state = optimizer.update(grads, opt_state)
        acc = accuracy(svm_score, params, points, labels)
        return (optax.apply_updates(params, updates), opt_state), (loss, acc)

    init = (params, optimizer.init(params))
    (params, _), (losses, accuracies) = jax.lax.scan(step, init, None, steps)
    return LossRun(params, losses, accuracies)


def circuit_full_batch(
    params: Params | None = None, steps: int = 1000, step_size: float = 0.01, reg: float = 1.0
) -> Params:
    """The circuit SVM trained on all points at once: each step follows the mean pull.

    The same algorithm as `train_loss_svm`, written with the gates' backward pass instead
    of `jax.grad`, so the two must give the same parameters.
    """
    points, labels = toy_data()
    params = {k: jnp.asarray(v, points.dtype) for k, v in (params or SVM_INIT).items()}

    def step(params, _):
        pulls = jax.vmap(circuit_svm_pulls, in_axes=(None, 0, 0, None))(params, points, labels, reg)
        return {k: params[k] + step_size * jnp.mean(pulls[k]) for k in params}, None

    return jax.lax.scan(step, params, None, steps)[0]


# A 2-layer neural network ------------------------------------------------------------


def init_two_layer(key: jax.Array, hidden: int = 3, dtype: Any = None) -> Params:
    """Weights uniform in [-0.5, 0.5], as in the text."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    dtype = toy_data()[0].dtype if dtype is None else dtype

    def u(k, shape):
        return jax.random.uniform(k, shape, dtype, -0.5, 0.5)

    return {
        "w1": u(k1, (2, hidden)),
        "b1": u(k2, (hidden,)),
        "w2": u(k3, (hidden,)),
        "b2": u(k4, ()),
    }


def two_layer_score(params: Params, points: jax.Array) -> jax.Array:
    """score = w2 . relu(W1 x + b1) + b2: three ReLU units feeding one output."""
    hidden = jax.nn.relu(points @ params["w1"] + params["b1"])
    return hidden @ params["w2"] + params["b2"]


def two_layer_loss(
    params: Params, points: jax.Array, labels: jax.Array, reg: float = 1e-3
) -> jax.Array:
    """Mean hinge loss plus reg/2 times the squared weights (not the biases)."""
    l2 = jnp.sum(params["w1"] ** 2) + jnp.sum(params["w2"] ** 2)
    return jnp.mean(hinge_loss(two_layer_score(params, points), labels)) + 0.5 * reg * l2


def train_two_layer(
    key: jax.Array,
    hidden: int = 3,
    step_size: float = 0.01,
    reg: float = 1e-3,
    eval_every: int = 25,
    max_iterations: int = 20_000,
) -> ToyRun:
    """The 2-layer net trained like the circuit SVM: one random point per SGD step."""
    init_key, order_key = jax.random.split(key)

    @jax.jit
    def step(params: Params, point: jax.Array, label: jax.Array) -> Params:
        grads = jax.grad(two_layer_loss)(params, point[None], label[None], reg)
        return jax.tree.map(lambda p, g: p - step_size * g, params, grads)

    return train_by_random_points(
        step,
        two_layer_score,
        init_two_layer(init_key, hidden),
        order_key,
        eval_every=eval_every,
        max_iterations=max_iterations,
    )


# Multiclass SVMs on MNIST ------------------------------------------------------------


def multiclass_hinge_loss(scores: jax.Array, labels: jax.Array, margin: float = 1.0) -> jax.Array:
    """Weston-Watkins multiclass hinge: sum over wrong classes j of max(0, s_j - s_y + margin).

    Averaged over the batch.
    """
    correct = jnp.take_along_axis(scores, labels[:, None], axis=1)
    violations = jnp.maximum(0.0, scores - correct + margin)
    violations = jnp.where(jax.nn.one_hot(labels, scores.shape[1], dtype=bool), 0.0, violations)
    return jnp.mean(jnp.sum(violations, axis=1))


def init_linear(input_dim: int, num_classes: int = 10, dtype: Any = jnp.float32) -> Params:
    """A linear classifier at zero: hinge loss training needs no symmetry breaking."""
    return {"w": jnp.zeros((input_dim, num_classes), dtype), "b": jnp.zeros((num_classes,), dtype)}


def linear_scores(params: Params, features: jax.Array) -> jax.Array:
    return features @ params["w"] + params["b"]


def init_random_fourier_features(
    key: jax.Array, input_dim: int, num_features: int, gamma: float, dtype: Any = jnp.float32
) -> Params:
    """Frequencies ~ N(0, 2 gamma I) and phases ~ U[0, 2 pi) for the RBF kernel.

    With z(x) = sqrt(2 / D) cos(W x + phase), E[z(x) . z(x')] = exp(-gamma ||x - x'||^2).
    """
    k_freq, k_phase = jax.random.split(key)
    return {
        "frequencies": jnp.sqrt(2.0 * gamma)
        * jax.random.normal(k_freq, (input_dim, num_features), dtype),
        "phases": jax.random.uniform(k_phase, (num_features,), dtype, 0.0, 2.0 * jnp.pi),
    }


def random_fourier_features(rff: Params, x: jax.Array) -> jax.Array:
    """z(x) = sqrt(2 / D) cos(x W + phase), for rows x."""
    num_features = rff["phases"].shape[0]
    return jnp.sqrt(2.0 / num_features) * jnp.cos(x @ rff["frequencies"] + rff["phases"])


def flatten_images(images: jax.Array | np.ndarray) -> jax.Array:
    return jnp.reshape(images, (images.shape[0], -1))


class MulticlassRun(NamedTuple):
    params: Params
    best_epoch: int  # 1-based epoch with the best validation accuracy
    validation_accuracy: float  # at best_epoch
    test_accuracy: float  # at best_epoch
    history: list[dict[str, float]]  # per epoch: epoch, loss, validation_accuracy


def _batches(n: int, batch_size: int, key: jax.Array) -> Iterator[jax.Array]:
    perm = jax.random.permutation(key, n)
    for start in range(0, n - batch_size + 1, batch_size):
        yield perm[start : start + batch_size]


def train_multiclass_svm(
    key: jax.Array,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    features: Callable[[jax.Array], jax.Array] = flatten_images,
    epochs: int = 10,
    batch_size: int = 100,
    learning_rate: float = 0.01,
    momentum: float = 0.9,
    reg: float = 1e-4,
    eval_batch_size: int = 2000,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> MulticlassRun:
    """A linear multiclass SVM trained by minibatch SGD (momentum, cosine decay) on hinge + L2.

    `features` maps a batch of images to feature rows (raw pixels by default, or random
    Fourier features); it runs inside the compiled step, so features are never stored
    for the whole training set. Data are (images, labels) pairs. The test set is scored
    only with the parameters of the epoch with the best validation accuracy. `on_epoch`
    gets each epoch's record as soon as it is done.
    """
    train_x, train_y = (jnp.asarray(a) for a in train)
    input_dim = features(train_x[:1]).shape[1]
    params = init_linear(input_dim, 10, train_x.dtype)
    steps_per_epoch = len(train_y) // batch_size
    # Cosine decay lets the last epochs settle instead of bouncing at a high rate.
    schedule = optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch)
    optimizer = optax.sgd(schedule, momentum)
    opt_state = optimizer.init(params)

    def loss_fn(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
        l2 = jnp.sum(params["w"] ** 2)
        return multiclass_hinge_loss(linear_scores(params, features(x)), y) + 0.5 * reg * l2

    @jax.jit
    def train_step(params, opt_state, idx):
        loss, grads = jax.value_and_grad(loss_fn)(params, train_x[idx], train_y[idx])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def correct(params, x, y):
        return jnp.sum(jnp.argmax(linear_scores(params, features(x)), axis=1) == y)

    def evaluate(params, data):
        x, y = data
        hits = sum(
            int(
                correct(
                    params,
                    jnp.asarray(x[i : i + eval_batch_size]),
                    jnp.asarray(y[i : i + eval_batch_size]),
                )
            )
            for i in range(0, len(y), eval_batch_size)
        )
        return hits / len(y)

    best = (-1.0, 0, params)
    history = []
    for epoch in range(1, epochs + 1):
        losses = []
        for idx in _batches(len(train_y), batch_size, jax.random.fold_in(key, epoch)):
            params, opt_state, loss = train_step(params, opt_state, idx)
            losses.append(loss)
        val_acc = evaluate(params, validation)
        history.append(
            {
                "epoch": epoch,
                "loss": float(jnp.mean(jnp.stack(losses))),
                "validation_accuracy": val_acc,
            }
        )
        if on_epoch is not None:
            on_epoch(history[-1])
        if val_acc > best[0]:
            best = (val_acc, epoch, params)
    val_acc, best_epoch, params = best
    return MulticlassRun(params, best_epoch, val_acc, evaluate(params, test), history)
