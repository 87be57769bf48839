"""Training: the train state, pure train and eval steps, the epoch loop, model selection.

Nielsen's `network3.py` (chapter 6) trains by plain SGD on mini-batches of the
log-likelihood cost plus an L2 penalty, and reports test accuracy at the epoch
of best validation accuracy. The pieces here are pure functions compiled with
`jax.jit`; `train_and_evaluate` strings them into a run that checkpoints every
epoch and resumes where it stopped.

The training images live on the device. Each step gathers its mini-batch by
index, so an epoch is a (steps, batch) array of indices into that data, drawn
from `jax.random.fold_in(key, epoch)`: the same epoch always sees the same
batches, which is what makes a resumed run end exactly where an uninterrupted
one does. Two epoch drivers run those steps: `lax.scan` over 1,000 steps at a
time (accelerators: the host only looks in between, for a request to stop) or a
host loop over a jitted step (CPU, where XLA runs convolutions inside a scan body
several times slower).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from lib.core import parallel
from lib.core.data import Split, Splits
from lib.core.errors import ConfigError, DivergedError
from lib.core.metrics import count_params
from lib.nielsen import DRIVERS, LAYOUTS

Batch = tuple[jax.Array, jax.Array]
BatchFn = Callable[[Mapping[str, jax.Array], jax.Array, jax.Array], Batch]


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    l2: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    schedule: str = "constant"
    seed: int = 0
    ensemble: int = 1  # K nets together (ensemble_layout); member m trains as seed + m would
    ensemble_layout: str = "auto"  # one of LAYOUTS; "auto" picks per backend (resolve_layout)
    expanded: bool = False  # the book's 5x set: each image and its four one-pixel shifts
    augment: Any = None  # a lib.nielsen.augment.AugmentConfig applied to every training batch
    eval_batch_size: int = 1000
    driver: str = "auto"  # "scan", "loop", or "auto" (scan on accelerators, loop on CPU)
    num_devices: int | None = None
    adversary: Any = None  # a lib.adversarial.training.Adversary: adversarial training


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")
SCHEDULES = ("constant", "cosine")


def make_optimizer(
    name: str,
    learning_rate: float,
    momentum: float = 0.9,
    schedule: str = "constant",
    total_steps: int = 0,
) -> optax.GradientTransformation:
    """Plain SGD at a constant rate is the book's: w <- w - eta * grad.

    `schedule="cosine"` decays the rate to zero over `total_steps` (Loshchilov & Hutter 2016).
    A constant rate lives in the optimizer state (`optax.inject_hyperparams`), so runs
    that differ only in it share one compiled train step.
    """
    if schedule == "cosine":
        if total_steps <= 0:
            raise ConfigError("a cosine schedule needs the run's total number of steps")
        learning_rate = optax.cosine_decay_schedule(learning_rate, total_steps)
    elif schedule != "constant":
        raise ConfigError(f"unknown schedule '{schedule}'; choose from {', '.join(SCHEDULES)}")
    if name == "sgd":
        return optax.inject_hyperparams(optax.sgd)(learning_rate)
    if name in ("momentum", "nesterov"):
        return optax.inject_hyperparams(optax.sgd, static_args="nesterov")(
            learning_rate, momentum=momentum, nesterov=name == "nesterov"
        )
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate)
    raise ConfigError(f"unknown optimizer '{name}'; choose from {', '.join(OPTIMIZERS)}")


def resolve_driver(driver: str) -> str:
    if driver not in DRIVERS:
        raise ConfigError(f"unknown driver '{driver}'; choose from {', '.join(DRIVERS)}")
    if driver == "auto":
        return "loop" if jax.default_backend() == "cpu" else "scan"
    return driver


CPU_STEPS_PER_CALL = 5
CPU_BLOCK_MIN_STEPS = 500
SCAN_STEPS_PER_CALL = 1000


def steps_per_call(driver: str, steps_per_epoch: int) -> int:
    """Steps each call of the epoch runner runs (`EpochRunner`). The scan driver scans
    1,000 at a time: a stop request waits at most two calls (the host looks at each once
    the next is queued, so the device never waits for it). The host loop runs, on the
    CPU, a block of 5 (on two idle cores it took the book's dropout net at batch 10 from
    5.2 to 4.1 ms per step; `python -m launch.benchmark --steps_per_call=1,5` compares
    them), once an epoch has at least 500 steps to repay compiling the block (a few
    seconds); otherwise one."""
    if resolve_driver(driver) == "scan":
        return SCAN_STEPS_PER_CALL
    if jax.default_backend() == "cpu" and steps_per_epoch >= CPU_BLOCK_MIN_STEPS:
        return CPU_STEPS_PER_CALL
    return 1


def resolve_layout(layout: str, data_parallel: bool = False) -> str:
    """How an ensemble's members share the machine. "vmap" batches them into every op of
    one program (convolutions become grouped ones); "unrolled" traces one copy of the
    step per member into one program; "devices" gives each member a program of its own
    on device m % n, dispatched side by side, so on a CPU with one JAX device per core
    (`lib.core.xla_cpu`) two nets train in about the time of one. "auto": devices on a CPU
    with several devices, unrolled on one, vmap on accelerators. A batch sharded over
    the devices (`data_parallel`) leaves none to spare: auto then picks unrolled on CPU.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown ensemble layout '{layout}'; choose from {', '.join(LAYOUTS)}")
    if layout == "devices" and data_parallel:
        raise ConfigError(
            "the devices ensemble layout needs the batch on one device; set --num_devices=1 "
            "or choose another --ensemble_layout"
        )
    if layout == "auto":
        if jax.default_backend() != "cpu":
            return "vmap"
        return "devices" if len(jax.local_devices()) > 1 and not data_parallel else "unrolled"
    return layout


def devices_used(mesh_size: int, layout: str, members: int) -> int:
    """How many devices a run trains on: its mesh's, or, for the devices layout, one per
    member up to the local devices (member m runs on device m mod their count)."""
    if members > 1 and layout == "devices":
        return min(members, len(jax.local_devices()))
    return mesh_size


def virtual_train_size(n: int, config: TrainConfig) -> int:
    """Examples in an epoch: the book's expanded set of n images, or the n images."""
    from lib.nielsen import augment as aug

    return aug.expanded_size(n) if config.expanded else n


def validate(config: TrainConfig, n_train: int) -> None:
    """Raise ConfigError for settings that cannot train."""
    if config.learning_rate <= 0:
        raise ConfigError(f"learning rate must be positive, got {config.learning_rate}")
    if config.batch_size <= 0:
        raise ConfigError(f"batch size must be positive, got {config.batch_size}")
    n = virtual_train_size(n_train, config)
    if config.batch_size > n:
        raise ConfigError(
            f"batch size {config.batch_size} is larger than the {n} training examples; "
            "lower --batch_size or raise --train_size"
        )
    if config.epochs <= 0:
        raise ConfigError(f"epochs must be positive, got {config.epochs}")
    if config.l2 < 0:
        raise ConfigError(f"l2 must not be negative, got {config.l2}")
    if config.ensemble < 1:
        raise ConfigError(f"ensemble must be at least 1, got {config.ensemble}")
    resolve_layout(config.ensemble_layout)
    if config.eval_batch_size <= 0:
        raise ConfigError(f"eval batch size must be positive, got {config.eval_batch_size}")
    parallel.check_device_count(config.num_devices)
    make_optimizer(config.optimizer, config.learning_rate, config.momentum, config.schedule, 1)
    resolve_driver(config.driver)


# ----------------------------------------------------------------------------- cost and steps


def l2_penalty(params: Any) -> jax.Array:
    """Sum of squared weights (kernels), not biases, as in `network3.py`."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(
        jnp.sum(jnp.square(w)) for path, w in leaves if getattr(path[-1], "key", None) == "kernel"
    )


def make_cost(model: nn.Module, l2_scale: float) -> Callable:
    """cost(params, x, y, rng, train) -> (mean log-likelihood cost + l2_scale * sum w^2, aux).

    The book's regularised cost has l2_scale = 0.5 * lambda / (mini-batches per epoch).
    """

    def cost(params, x, y, rng, train: bool):
        logits = model.apply({"params": params}, x, train=train, rngs={"dropout": rng})
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        total = nll + l2_scale * l2_penalty(params) if l2_scale else nll
        return total, {"nll": nll, "accuracy": accuracy}

    return cost


def _adversarial_cost(cost: Callable, clean_weight: float) -> Callable:
    """cost(params, x, x_adv, y, rng) -> (clean_weight cost(x) + (1 - clean_weight)
    cost(x_adv), aux), aux the clean batch's (the adversarial batch's nll as "adv_nll");
    with clean_weight 0 only the adversarial batch is seen."""

    def mixed(params, x, x_adv, y, rng):
        clean_rng, adv_rng = jax.random.split(rng)
        adv, adv_aux = cost(params, x_adv, y, adv_rng, True)
        if clean_weight == 0:
            return adv, {**adv_aux, "adv_nll": adv_aux["nll"]}
        clean, aux = cost(params, x, y, clean_rng, True)
        total = clean_weight * clean + (1 - clean_weight) * adv
        return total, {**aux, "adv_nll": adv_aux["nll"]}

    return mixed


def gather_batch(data: Mapping[str, jax.Array], idx: jax.Array, key: jax.Array) -> Batch:
    del key
    return data["images"][idx], data["labels"][idx]


def make_batch_fn(expanded: bool = False, augment: Any = None) -> BatchFn:
    """Gather a mini-batch by index, from the book's expanded set if asked, then augment."""
    if not expanded and augment is None:
        return gather_batch
    from lib.nielsen import augment as aug

    def batch_fn(data, idx, key):
        if expanded:
            x, y = aug.fixed_shift_batch(data["images"], data["labels"], idx)
        else:
            x, y = gather_batch(data, idx, key)
        if augment is not None:
            x = aug.augment_batch(key, x, augment)
        return x, y

    return batch_fn


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    l2_scale: float,
    batch_fn: BatchFn = gather_batch,
    sharding: jax.sharding.Sharding | None = None,
    adversary: Any = None,
) -> Callable:
    """train_step(state, data, idx, key) -> (state, metrics); pure, for `jax.jit`.

    The step's randomness (dropout, augmentation, a PGD start) is `fold_in(key,
    state.step)`. With an `adversary` (lib.adversarial.training.Adversary) the cost is
    its clean_weight times the cost of the batch plus the rest times the cost of the
    batch's adversarial examples, made from the parameters before the step.
    """
    cost = make_cost(model, l2_scale)
    grad_fn = jax.value_and_grad(cost, has_aux=True)
    if adversary is not None:
        grad_fn = jax.value_and_grad(_adversarial_cost(cost, adversary.clean_weight), has_aux=True)

        def logits(params, x):  # the attack aims at the net as it predicts: no dropout
            return model.apply({"params": params}, x, train=False)

    def train_step(state: TrainState, data, idx, key):
        rng = jax.random.fold_in(key, state.step)
        batch_key, dropout_key = jax.random.split(rng)
        x, y = batch_fn(data, idx, batch_key)
        if sharding is not None:
            x = jax.lax.with_sharding_constraint(x, sharding)
            y = jax.lax.with_sharding_constraint(y, sharding)
        if adversary is None:
            (loss, aux), grads = grad_fn(state.params, x, y, dropout_key, True)
        else:
            attack_key, dropout_key = jax.random.split(dropout_key)
            x_adv = adversary.perturb(logits, state.params, x, y, attack_key, state.step)
            (loss, aux), grads = grad_fn(state.params, x, x_adv, y, dropout_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **aux}
        return TrainState(state.step + 1, params, opt_state), metrics

    return train_step


def over_members(fn: Callable, in_axes: tuple, layout: str) -> Callable:
    """`fn` applied to each member: arguments whose axis is 0 carry a leading member axis,
    those with None are shared; outputs gain the member axis. Both layouts give every
    member exactly what `fn` alone would (see `resolve_layout` for the difference)."""
    layout = resolve_layout(layout)
    if layout == "vmap":
        return jax.vmap(fn, in_axes=in_axes)
    if layout == "devices":
        raise ValueError("the devices layout runs a program per member: see MemberDevices")

    def unrolled(*args):
        mapped = [a for a, axis in zip(args, in_axes, strict=True) if axis == 0]
        members = jax.tree.leaves(mapped)[0].shape[0]
        outputs = [
            fn(
                *(
                    jax.tree.map(lambda x, m=m: x[m], a) if axis == 0 else a
                    for a, axis in zip(args, in_axes, strict=True)
                )
            )
            for m in range(members)
        ]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)

    return unrolled


def ensemble_step(train_step: Callable, layout: str = "auto") -> Callable:
    """K members in one program: state, indices and key carry a leading member axis."""
    return over_members(train_step, (0, None, 0, 0), layout)


def init_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    sample: jax.Array,
) -> TrainState:
    """A fresh state; `key` with a leading axis gives a stacked state per member."""

    def one(k):
        params = model.init({"params": k, "dropout": k}, sample, train=False)["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

    return jax.jit(jax.vmap(one) if key.ndim > 1 else one)(key)


def run_keys(seed: int, members: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(init, shuffle, step) keys. Member m of an ensemble gets exactly the keys of a lone
    run with seed + m, so K seeds trained together train as they would alone."""
    keys = jnp.stack([jax.random.split(jax.random.PRNGKey(seed + m), 3) for m in range(members)])
    if members == 1:
        keys = keys[0]
        return keys[0], keys[1], keys[2]
    return keys[:, 0], keys[:, 1], keys[:, 2]


def current_step(state: TrainState) -> int:
    """The state's step; every member of an ensemble has taken the same number."""
    return int(np.asarray(state.step).reshape(-1)[0])


def epoch_indices(key: jax.Array, epoch: int, n: int, batch_size: int) -> jax.Array:
    """The epoch's mini-batches as indices: (steps, batch), or (steps, members, batch)
    for a stack of member keys.

    A random permutation of the n examples cut into whole batches (the remainder
    waits for the next epoch's permutation).
    """
    steps = n // batch_size

    def one(k):
        k = jax.random.fold_in(k, epoch)
        return jax.random.permutation(k, n)[: steps * batch_size].reshape(steps, batch_size)

    if key.ndim == 1:
        return one(key)
    return jnp.swapaxes(jax.vmap(one)(key), 0, 1)


_epoch_indices_jit = jax.jit(epoch_indices, static_argnums=(2, 3))


# ----------------------------------------------------------------------------- epoch drivers


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _on_host(x: Any) -> Any:
    """A NumPy copy of an array (typed PRNG keys, which NumPy cannot hold, stay put)."""
    return x if _is_key(x) else np.asarray(x)


class MemberDevices:
    """An ensemble's members spread over the local devices, member m on device m % n.

    A stacked tree (leading member axis, on the first device) splits into one tree per
    member on its device, and the members' trees stack back; `replicate` puts one copy
    of a shared tree on each device, reused while the same object is passed again.
    """

    def __init__(self, members: int):
        local = jax.local_devices()
        self.devices = [local[m % len(local)] for m in range(members)]
        self._shared: tuple[Any, list] | None = None

    def split(self, tree: Any) -> list:
        # Sliced on the host: slicing on a device compiles a program per leaf shape.
        host = jax.tree.map(_on_host, tree)
        return [
            jax.device_put(jax.tree.map(lambda x, m=m: x[m], host), device)
            for m, device in enumerate(self.devices)
        ]

    def stack(self, trees: list) -> Any:
        home = self.devices[0]

        def stacked(*xs):
            if _is_key(xs[0]):
                return jnp.stack([jax.device_put(x, home) for x in xs])
            return jax.device_put(np.stack([np.asarray(x) for x in xs]), home)

        return jax.tree.map(stacked, *trees)

    def replicate(self, tree: Any) -> list:
        if self._shared is None or self._shared[0] is not tree:
            copies = {d: jax.device_put(tree, d) for d in dict.fromkeys(self.devices)}
            self._shared = (tree, [copies[d] for d in self.devices])
        return self._shared[1]


class EpochRunner:
    """Runs a slice of an epoch's steps, a call of `steps_per_call` steps at a time: a
    `lax.scan` over them, or a program of that many steps unrolled for the host loop.

    The scan driver's calls are long (`SCAN_STEPS_PER_CALL` by default), so the host looks
    at each one. The host loop calls a block of steps while that many remain, then
    single steps, and looks in every `check_every` steps: on CPU a block of steps per call
    saves the per-call cost (dispatch, and the copy XLA makes of donated parameters it
    updates in place), and each step computes what it would alone (tested bit for bit).

    With `members`, `step_fn` is one member's step and each member runs it on its own
    device (`MemberDevices`); state, indices and key carry the leading member axis as
    they do for a step made by `ensemble_step`, and so does what comes back.
    """

    def __init__(
        self,
        step_fn: Callable,
        driver: str,
        check_every: int = 100,
        members: int = 0,
        steps_per_call: int | None = None,
    ):
        self.driver = resolve_driver(driver)
        if steps_per_call is None:
            steps_per_call = SCAN_STEPS_PER_CALL if self.driver == "scan" else 1
        if steps_per_call < 1:
            raise ValueError(f"steps_per_call must be at least 1, got {steps_per_call}")
        self.steps_per_call = steps_per_call
        self.check_every = steps_per_call if self.driver == "scan" else check_every
        self.members = MemberDevices(members) if members else None
        if self.driver == "scan":

            def steps(state, data, idx, i, key, count):
                rows = jax.lax.dynamic_slice_in_dim(idx, i, count, 0)
                return jax.lax.scan(lambda s, row: step_fn(s, data, row, key), state, rows)

        else:

            def steps(state, data, idx, i, key, count):
                collected = []
                for k in range(count):
                    row = jax.lax.dynamic_index_in_dim(idx, i + k, 0, False)
                    state, metrics = step_fn(state, data, row, key)
                    collected.append(metrics)
                return state, jax.tree.map(lambda *m: jnp.stack(m), *collected)

        self._steps = jax.jit(steps, donate_argnums=0, static_argnums=5)

    def _plan(self, n: int, start: int = 0) -> list[tuple[int, int]]:
        """(first row, count) of each call over rows start..n-1: scans of `steps_per_call`
        rows (the last may be shorter), or for the host loop blocks, then single steps."""
        block = self.steps_per_call
        if self.driver == "scan":
            return [(i, min(block, n - i)) for i in range(start, n, block)]
        whole = n - (n - start) % block if block > 1 else start
        return [(i, block) for i in range(start, whole, block)] + [(i, 1) for i in range(whole, n)]

    def __call__(
        self,
        state: TrainState,
        data,
        idx: jax.Array,
        key: jax.Array,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int], None] | None = None,
        *,
        start: int = 0,
    ) -> tuple[TrainState, dict[str, np.ndarray]]:
        """Runs the steps of rows `start`.. of `idx` and returns the new state and each
        step's metrics (fewer steps if stopped early). A run resumed mid-epoch passes the
        epoch's whole `idx` and its `start`, so it reuses the epoch's programs (their
        shapes are those of the whole `idx`)."""
        if self.members is not None:
            return self._run_members(state, data, idx, key, should_stop, progress, start)

        def call(i, count):
            nonlocal state
            state, metrics = self._steps(state, data, idx, i, key, count)
            return [metrics]

        calls = self._host_loop(call, idx.shape[0], start, should_stop, progress)
        return state, {k: np.concatenate([c[0][k] for c in calls]) for k in calls[0][0]}

    def _host_loop(self, call, n, start, should_stop, progress) -> list[list[dict]]:
        """call(i, count) for each (first row, count) of `_plan(n, start)`, each giving one
        metrics dict per net it ran; every `check_every` steps the loop stops at a
        non-finite loss (the caller finds the first bad step), reports progress, and stops
        if asked. The scan's calls are looked at once the next one is queued, so the device
        never waits for the host: it stops a call later. Returns what the calls gave, on
        the host."""
        behind = 1 if self.driver == "scan" else 0
        collected, due = [], []  # due: (steps done, metrics) of the calls to look at
        for i, count in self._plan(n, start):
            collected.append(call(i, count))
            done = i + count - start
            if done // self.check_every > (i - start) // self.check_every:
                due.append((done, collected[-1]))
            if len(due) > behind:
                done, metrics = due.pop(0)
                if not all(np.all(np.isfinite(np.asarray(m["loss"]))) for m in metrics):
                    break
                if progress is not None:
                    progress(done)
                if should_stop is not None and should_stop():
                    break
        return jax.device_get(collected)

    def _run_members(self, state, data, idx, key, should_stop, progress, start):
        """One program per member on its device: each call is dispatched without waiting,
        so the devices (cores) work side by side."""
        devices = self.members
        states = devices.split(state)
        datas = devices.replicate(data)
        idxs = devices.split(jnp.swapaxes(idx, 0, 1))
        keys = devices.split(key)
        members = range(len(states))

        def call(i, count):
            out = []
            for m in members:
                states[m], metrics = self._steps(states[m], datas[m], idxs[m], i, keys[m], count)
                out.append(metrics)
            return out

        calls = self._host_loop(call, idx.shape[0], start, should_stop, progress)
        metrics = {
            k: np.concatenate([np.stack([m[k] for m in c], axis=1) for c in calls])
            for k in calls[0][0]
        }
        return devices.stack(states), metrics


# ----------------------------------------------------------------------------- evaluation


def make_predict(model: nn.Module, members: int = 1, layout: str = "auto") -> Callable:
    """predict(params, x) -> labels (N,) or (members, N), in eval mode, jitted."""

    def predict(params, x):
        return jnp.argmax(model.apply({"params": params}, x, train=False), -1)

    if members > 1 and resolve_layout(layout) == "devices":
        return _MemberPredict(jax.jit(predict), members)
    if members > 1:
        predict = over_members(predict, (0, None), layout)
    return jax.jit(predict)


class _MemberPredict:
    """Each member's labels computed on its own device (the "devices" layout)."""

    def __init__(self, predict: Callable, members: int):
        self.predict = predict
        self.devices = MemberDevices(members)
        self._params: tuple[Any, list] | None = None

    def __call__(self, params, x):
        if self._params is None or self._params[0] is not params:  # split once per params
            self._params = (params, self.devices.split(params))
        xs = self.devices.replicate(x)
        labels = [self.predict(p, xm) for p, xm in zip(self._params[1], xs, strict=True)]
        return np.stack(jax.device_get(labels))


def majority_vote(predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """The most common label over members (axis 0); ties go to the lowest label."""
    votes = np.zeros((*predictions.shape[1:], num_classes), np.int32)
    for member in predictions:
        votes[np.arange(member.shape[0]), member] += 1
    return np.argmax(votes, -1)


def predict_split(predict: Callable, params: Any, images: jax.Array, batch_size: int) -> np.ndarray:
    """Labels for every image, in fixed-size batches (the last padded, so one compile)."""
    n = images.shape[0]
    batch_size = min(batch_size, n)
    out = []
    for start in range(0, n, batch_size):
        x = images[start : start + batch_size]
        pad = batch_size - x.shape[0]
        if pad:
            x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
        out.append(predict(params, x))
    labels = np.concatenate([np.asarray(p) for p in jax.device_get(out)], axis=-1)
    return labels[..., :n]


def accuracies(predictions: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy of one net, or of each member and of the ensemble's majority vote (over
    as many classes as the largest label predicted or true says)."""
    labels = np.asarray(labels)
    if predictions.ndim == 1:
        return {"accuracy": float(np.mean(predictions == labels))}
    members = [float(np.mean(p == labels)) for p in predictions]
    vote = majority_vote(predictions, int(max(predictions.max(), labels.max())) + 1)
    return {"accuracy": float(np.mean(vote == labels)), "member_accuracy": members}


# ----------------------------------------------------------------------------- the run


def set_hyperparams(state: TrainState, config: TrainConfig) -> TrainState:
    """The state with the learning rate and momentum of `config` in its optimizer state."""
    hyperparams = dict(state.opt_state.hyperparams)
    if config.schedule == "constant":
        hyperparams["learning_rate"] = config.learning_rate
    if "momentum" in hyperparams:
        hyperparams["momentum"] = config.momentum
    hyperparams = {
        k: jnp.full_like(state.opt_state.hyperparams[k], v) for k, v in hyperparams.items()
    }
    return state._replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


@functools.lru_cache(maxsize=32)
def compiled_programs(
    model: nn.Module,
    optimizer_spec: tuple,
    schedule_rate: float | None,
    l2_scale: float,
    expanded: bool,
    augment: Any,
    sharding: jax.sharding.Sharding | None,
    members: int,
    layout: str,
    driver: str,
    steps_per_call: int | None = None,
    adversary: Any = None,
) -> tuple[EpochRunner, Callable]:
    """The epoch runner and predictor of a run, shared by every run with the same settings.

    A sweep run in one process (seeds, constant learning rates) thus compiles once.
    """
    name, momentum, schedule, total_steps = optimizer_spec
    optimizer = make_optimizer(name, schedule_rate or 1.0, momentum, schedule, total_steps)
    step_fn = make_train_step(
        model, optimizer, l2_scale, make_batch_fn(expanded, augment), sharding, adversary
    )
    runner = make_runner(step_fn, members, layout, driver, steps_per_call)
    return runner, make_predict(model, members, layout)


def make_runner(
    step_fn: Callable, members: int, layout: str, driver: str, steps_per_call: int | None = None
) -> EpochRunner:
    """The epoch runner of one net's `step_fn`, or of `members` nets in `layout`."""
    if members > 1 and resolve_layout(layout) == "devices":
        return EpochRunner(step_fn, driver, members=members, steps_per_call=steps_per_call)
    if members > 1:
        step_fn = ensemble_step(step_fn, layout)
    return EpochRunner(step_fn, driver, steps_per_call=steps_per_call)


class RunResult(NamedTuple):
    summary: dict
    state: TrainState


@dataclasses.dataclass
class Hooks:
    """What the caller hears during a run (the library itself never prints)."""

    on_start: Callable[[dict], None] = lambda info: None
    on_epoch: Callable[[dict], None] = lambda record: None
    on_progress: Callable[[dict], None] = lambda progress: None


def agreed_stop(should_stop: Callable[[], bool]) -> Callable[[], bool]:
    """`should_stop` asked of every process at once, true when any process was asked to
    stop: the processes of a multi-process run must save and stop at the same step. Each
    call is a collective, so every process must call it at the same point of the run."""
    from jax.experimental import multihost_utils

    def stop() -> bool:
        return bool(np.asarray(multihost_utils.process_allgather(np.asarray(should_stop()))).any())

    return stop


def _first_bad_step(losses: np.ndarray) -> int | None:
    bad = ~np.isfinite(losses.reshape(losses.shape[0], -1)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def train_and_evaluate(
    model: nn.Module,
    splits: Splits,
    config: TrainConfig,
    workdir: str | Path,
    hooks: Hooks | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Train, evaluate every epoch, keep test accuracy at the best validation epoch.

    Resumes from the newest intact checkpoint in `workdir/checkpoints` when there is one
    (`on_start` hears of damaged newer ones as "checkpoint_notice"). Writes metrics.jsonl and
    TensorBoard events as it goes, and test_predictions.npy (the test labels predicted
    at the best epoch so far; (members, N) for an ensemble), and returns the summary
    with the final state; `summary["finished"]` is False when `should_stop` ended the
    run early. Raises DivergedError on a non-finite loss, before saving, and UserError
    when no checkpoint there is intact or the disk fills up while saving one.
    """
    from lib.core.checkpoint import Checkpointer
    from lib.core.metrics import MetricsWriter

    hooks = hooks or Hooks()
    if should_stop is not None and jax.process_count() > 1:
        should_stop = agreed_stop(should_stop)  # asked at the same steps by every process
    workdir = Path(workdir)
    train: Split = splits.train
    validate(config, len(train))
    members = config.ensemble
    n_virtual = virtual_train_size(len(train), config)
    steps_per_epoch = n_virtual // config.batch_size
    mesh = parallel.make_mesh(config.num_devices, config.batch_size)
    sharding = parallel.batch_sharding(mesh, 0) if mesh.size > 1 else None
    layout = resolve_layout(config.ensemble_layout, data_parallel=mesh.size > 1)

    total_steps = config.epochs * steps_per_epoch
    optimizer = make_optimizer(
        config.optimizer, config.learning_rate, config.momentum, config.schedule, total_steps
    )
    runner, predict = compiled_programs(
        model,
        (config.optimizer, config.momentum, config.schedule, total_steps),
        config.learning_rate if config.schedule != "constant" else None,
        0.5 * config.l2 / steps_per_epoch,
        config.expanded,
        config.augment,
        sharding,
        members,
        layout,
        config.driver,
        steps_per_call(config.driver, steps_per_epoch),
        config.adversary,
    )

    init_key, shuffle_key, step_key = run_keys(config.seed, members)
    state = init_state(model, optimizer, init_key, jnp.asarray(train.images[:1]))
    state = parallel.put_replicated(state, mesh)
    data = parallel.put_replicated({"images": train.images, "labels": train.labels}, mesh)
    val_x, test_x = parallel.put_replicated((splits.validation.images, splits.test.images), mesh)

    checkpoints = Checkpointer(workdir / "checkpoints")
    writer = MetricsWriter(workdir)
    record: dict = {"history": [], "best": None, "wall_time_s": 0.0}
    restored = checkpoints.restore_latest(state)  # the newest intact step, or None
    if restored is not None:
        state, record = restored.state, restored.record
        # The run's flags, not the checkpoint, decide a constant learning rate and momentum.
        state = parallel.put_replicated(jax.device_get(set_hyperparams(state, config)), mesh)
    writer.reset(record["history"])
    hooks.on_start(
        {
            "resumed_step": current_step(state),
            "steps_per_epoch": steps_per_epoch,
            "devices": mesh.size,
            "driver": runner.driver,
            "layout": layout if members > 1 else None,
            "params": count_params(state.params) // members,
            # One line on damaged checkpoint steps passed over, for the caller to show.
            "checkpoint_notice": restored.notice if restored is not None else None,
        }
    )

    def evaluate(x, split: Split, params) -> tuple[dict, np.ndarray]:
        labels = predict_split(predict, params, x, config.eval_batch_size)
        return accuracies(labels, split.labels), labels

    finished = True
    try:
        while True:
            step = current_step(state)
            epoch, offset = divmod(step, steps_per_epoch)
            if epoch >= config.epochs:
                break
            started = time.perf_counter()
            idx = _epoch_indices_jit(shuffle_key, epoch, n_virtual, config.batch_size)

            def progress(done, _epoch=epoch, _offset=offset, _started=started):
                seconds = time.perf_counter() - _started
                hooks.on_progress(
                    {
                        "epoch": _epoch + 1,
                        "step": _offset + done,
                        "steps": steps_per_epoch,
                        "examples_per_s": done * config.batch_size * members / seconds,
                    }
                )

            state, metrics = runner(state, data, idx, step_key, should_stop, progress, start=offset)
            bad = _first_bad_step(metrics["loss"])
            if bad is not None:
                loss = metrics["loss"].reshape(len(metrics["loss"]), -1)[bad]
                raise DivergedError.at(loss, epoch + 1, offset + bad + 1, steps_per_epoch)
            done = len(metrics["loss"])
            train_seconds = time.perf_counter() - started
            # A run stopped mid-epoch keeps the metrics of the steps it took, so the epoch's
            # means come out exactly as if it had never stopped.
            earlier = record.pop("partial", None) or {"loss": [], "accuracy": []}
            partial = {
                k: earlier[k] + np.mean(metrics[k].reshape(done, -1), axis=1).tolist()
                for k in ("loss", "accuracy")
            }
            if offset + done < steps_per_epoch:  # asked to stop mid-epoch
                record["partial"] = partial
                record["wall_time_s"] += train_seconds
                checkpoints.save(current_step(state), state, record)
                finished = False
                break
            val, _ = evaluate(val_x, splits.validation, state.params)
            best = record["best"]
            entry = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(partial["loss"])),
                "train_accuracy": float(np.mean(partial["accuracy"])),
                "val_accuracy": val["accuracy"],
                "epoch_time_s": train_seconds,
                "examples_per_s": done * config.batch_size * members / train_seconds,
            }
            if "member_accuracy" in val:
                entry["val_member_accuracy"] = val["member_accuracy"]
            predictions = None  # the test labels at a new best epoch, for votes over runs
            if best is None or val["accuracy"] > best["val_accuracy"]:
                test, predictions = evaluate(test_x, splits.test, state.params)
                best = {"epoch": epoch + 1, "val_accuracy": val["accuracy"]}
                best["test_accuracy"] = test["accuracy"]
                if "member_accuracy" in test:
                    best["test_member_accuracy"] = test["member_accuracy"]
                entry["test_accuracy"] = test["accuracy"]
            record["best"] = best
            record["history"].append(entry)
            record["wall_time_s"] += time.perf_counter() - started
            checkpoints.save(current_step(state), state, record)
            if predictions is not None:  # only once the checkpoint records this best epoch
                writer.write_array("test_predictions.npy", predictions.astype(np.uint8))
            writer.write(entry)
            hooks.on_epoch(entry)
            if should_stop is not None and should_stop() and epoch + 1 < config.epochs:
                finished = False
                break
    finally:
        checkpoints.close()
        writer.close()

    best = record["best"] or {}
    history = record["history"]
    summary = {
        "finished": finished,
        "epochs": len(history),
        "best_epoch": best.get("epoch"),
        "best_val_accuracy": best.get("val_accuracy"),
        "test_accuracy": best.get("test_accuracy"),
        "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
        "wall_time_s": record["wall_time_s"],
        "examples_per_s": float(np.median([h["examples_per_s"] for h in history]))
        if history
        else None,
        "device": f"{jax.devices()[0].device_kind} x{devices_used(mesh.size, layout, members)}",
        "params": count_params(state.params) // members,
    }
    if "test_member_accuracy" in best:
        summary["test_member_accuracy"] = best["test_member_accuracy"]
    return RunResult(summary, state)
