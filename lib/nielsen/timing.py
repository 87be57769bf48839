"""Timing the ladder's training steps: the core of `launch.benchmark` and `launch.bench_ops`.

Data are random arrays of MNIST's shape living on the device (speed does not depend on
pixel values); a case compiles and warms up, then the fastest of several timings is kept
(other work on the machine only ever slows a timing down).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lib.core import xla_cpu
from lib.nielsen import layers, nets, train

IMAGES = 50_000  # a rung's training images; the expanded set is five times as many
# The parts of a training step `parts` times: those of this rung.
PARTS_NET = "relu"
FILTER, POOL = 5, 2  # ConvPool's filter and pool sizes
CONVS = ("xla", "patches")
POOLS = ("window", "mask")
PARTS = (
    "conv1_forward",
    "conv1_kernel_grad",
    "pool1",
    "conv2_forward",
    "conv2_kernel_grad",
    "conv2_input_grad",
    "pool2",
)


def fastest_ms(fn: Callable, args: Sequence, steps: int, repeats: int) -> float:
    """ms per call of `fn(*args)`: compiled once, then the fastest of `repeats` timings of
    `steps` calls, blocking on the last result."""
    jax.block_until_ready(fn(*args))
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - started)
    return 1e3 * best / steps


def step_indices(key: jax.Array, n: int, batch_size: int, steps: int) -> jax.Array:
    """`steps` mini-batches of indices into n examples: epoch 0's (`train.epoch_indices`),
    then epoch 1's and so on, as many epochs as it takes."""
    epochs = -(-steps // (n // batch_size))
    batches = [train.epoch_indices(key, epoch, n, batch_size) for epoch in range(epochs)]
    return jnp.concatenate(batches)[:steps]


def time_case(
    name: str,
    batch_size: int,
    members: int,
    layout: str,
    steps: int,
    driver: str,
    repeats: int = 1,
    steps_per_call: int | None = None,
    before_each: Callable[[], None] | None = None,
) -> dict:
    """One case's speed: the fastest of `repeats` timings of `steps` steps (`before_each`,
    if given, is called before each timing starts)."""
    rung = nets.RUNGS[name]
    model = nets.create(name)
    n = IMAGES
    config = train.TrainConfig(
        epochs=1, batch_size=batch_size, learning_rate=rung.learning_rate, expanded=rung.expanded
    )
    epoch_examples = train.virtual_train_size(n, config)
    optimizer = train.make_optimizer("sgd", rung.learning_rate)
    steps_per_epoch = epoch_examples // batch_size
    step = train.make_train_step(
        model, optimizer, 0.5 * rung.l2 / steps_per_epoch, train.make_batch_fn(rung.expanded)
    )
    if steps_per_call is None:
        steps_per_call = train.steps_per_call(driver, steps_per_epoch)
    runner = train.make_runner(step, members, layout, driver, steps_per_call)
    rng = np.random.default_rng(0)
    data = {
        "images": jnp.asarray(rng.random((n, 28, 28, 1), np.float32)),
        "labels": jnp.asarray(rng.integers(0, 10, n, np.int32)),
    }
    init_key, shuffle_key, step_key = train.run_keys(0, members)
    state = train.init_state(model, optimizer, init_key, data["images"][:1])
    idx = step_indices(shuffle_key, epoch_examples, batch_size, steps)
    for _ in range(2):  # compile, then warm up (the devices layout's copies compile on the way)
        state, _ = runner(state, data, idx, step_key)
        jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        if before_each is not None:
            before_each()
        started = time.perf_counter()
        state, _ = runner(state, data, idx, step_key)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - started)
    per_step = min(times) / steps
    examples_per_s = batch_size * members / per_step
    return {
        "path": xla_cpu.path() if jax.default_backend() == "cpu" else "-",
        "net": name,
        "batch": batch_size,
        "members": members,
        "layout": train.resolve_layout(layout) if members > 1 else "-",
        "driver": runner.driver,
        "steps_per_call": runner.steps_per_call,
        "ms_per_step": 1e3 * per_step,
        "examples_per_s": examples_per_s,
        "gflops": examples_per_s * 6 * nets.forward_macs(model) / 1e9,
        "epoch_examples": epoch_examples,
        "s_per_epoch": per_step * steps_per_epoch,
    }


@dataclasses.dataclass(frozen=True)
class Op:
    """One row: a jitted function and its inputs, on the device."""

    name: str
    formulation: str
    fn: Callable
    args: tuple[jax.Array, ...]


def conv_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return layers.conv_valid(x, kernel, "xla")


def kernel_grad(x: jax.Array, kernel: jax.Array, g: jax.Array, impl: str) -> jax.Array:
    return jax.vjp(lambda k: layers.conv_valid(x, k, impl), kernel)[1](g)[0]


def input_grad(x: jax.Array, kernel: jax.Array, g: jax.Array, impl: str) -> jax.Array:
    return jax.vjp(lambda x: layers.conv_valid(x, kernel, impl), x)[1](g)[0]


def pool(y: jax.Array, g: jax.Array, impl: str) -> tuple[jax.Array, jax.Array]:
    """Forward and backward: the pooled maxima and the gradient of `g` through them."""
    pooled, vjp = jax.vjp(lambda y: layers.max_pool(y, POOL, impl), y)
    return pooled, vjp(g)[0]


def parts(batch: int, names: Iterable[str] = PARTS, seed: int = 0) -> list[Op]:
    """The parts of PARTS_NET's training step named in `names`, at batch size `batch`, in
    the order of PARTS: each jitted alone, with random normal inputs on the device."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> jax.Array:
        return jax.device_put(rng.standard_normal(shape, np.float32))

    ops = []
    (h, _, c), names = (28, 28, 1), set(names)
    for layer, features in enumerate(nets.RUNGS[PARTS_NET].conv_features, 1):
        out = h - FILTER + 1
        x, kernel = normal(batch, h, h, c), normal(FILTER, FILTER, c, features)
        g, y, g_pooled = (
            normal(batch, out, out, features),
            normal(batch, out, out, features),
            normal(batch, out // POOL, out // POOL, features),
        )
        ops.append(Op(f"conv{layer}_forward", "xla", jax.jit(conv_forward), (x, kernel)))
        grads = [("kernel_grad", kernel_grad)] + [("input_grad", input_grad)] * (layer > 1)
        for what, grad in grads:  # the first layer's input gradient: not needed
            for impl in CONVS:
                fn = jax.jit(functools.partial(grad, impl=impl))
                ops.append(Op(f"conv{layer}_{what}", impl, fn, (x, kernel, g)))
        for impl in POOLS:
            fn = jax.jit(functools.partial(pool, impl=impl))
            ops.append(Op(f"pool{layer}", impl, fn, (y, g_pooled)))
        h, c = out // POOL, features
    return [op for op in ops if op.name in names]
