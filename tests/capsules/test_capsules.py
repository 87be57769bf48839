"""Capsule networks (Sabour, Frosst and Hinton 2017): squash, routing by agreement, the
margin loss, the paper's parameter counts, gradients against finite differences, a
tiny CapsNet that learns, and the experiment's resume and errors."""

import itertools
import json
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from commands import run_module, start_module

from lib.capsules import layers, nets
from lib.capsules import train as train_lib
from lib.core import loop
from lib.core import steps as batching
from lib.core.errors import UserError
from lib.core.metrics import count_params


def shapes(model, *args, **kwargs):
    """The output and the sown intermediates of `model` on zeros, as shapes (no compute)."""

    def apply(x):
        variables = model.init(jax.random.key(0), x, *args)
        return model.apply(variables, x, *args, mutable=["intermediates"], **kwargs)

    out, state = jax.eval_shape(apply, jnp.zeros((2, 28, 28, 1)))
    leaves = jax.tree_util.tree_leaves_with_path(state)
    return out, {jax.tree_util.keystr(path): leaf.shape for path, leaf in leaves}


def test_every_stage_of_the_papers_capsnet_and_baseline_has_its_shape():
    out, stages = shapes(nets.CapsNet())
    by_name = {k.split("'")[-2]: s for k, s in stages.items()}
    assert by_name == {
        "conv1_relu": (2, 20, 20, 256),
        "primary_capsules": (2, 1152, 8),  # 6 x 6 x 32 capsules
        "u_hat": (2, 1152, 10, 16),
    }
    assert out.lengths.shape == (2, 10) and out.capsules.shape == (2, 10, 16)
    assert out.coupling.shape == (2, 1152, 10) and out.reconstruction.shape == (2, 784)
    logits, stages = shapes(nets.BaselineCNN())
    assert sorted(stages.values()) == [(2, 28, 28, 128), (2, 28, 28, 256), (2, 28, 28, 256)]
    assert logits.shape == (2, 10)


def test_parameter_counts_are_the_papers():
    # What the architecture implies: Conv1, PrimaryCaps (a convolution to 32 x 8 maps),
    # a 8x16 matrix per (primary capsule, digit capsule) pair, the decoder on 10 x 16.
    conv1 = 9 * 9 * 1 * 256 + 256
    primary = 9 * 9 * 256 * (32 * 8) + 32 * 8
    digits = (6 * 6 * 32) * 10 * (8 * 16)
    decoder = (160 * 512 + 512) + (512 * 1024 + 1024) + (1024 * 784 + 784)
    count = lambda m: count_params(jax.eval_shape(lambda: train_lib.init(m, jax.random.key(0))))
    # The published counts ("6.8M", "8.2M", "35.4M"), as the module states them exactly.
    without_decoder = count(nets.CapsNet(decoder=None))
    assert without_decoder == conv1 + primary + digits == nets.CAPSNET_PARAMS_WITHOUT_DECODER
    assert round(without_decoder / 1e6, 1) == 6.8
    assert count(nets.CapsNet()) == conv1 + primary + digits + decoder == nets.CAPSNET_PARAMS
    assert round(nets.CAPSNET_PARAMS / 1e6, 1) == 8.2
    # The baseline: 5x5 'same' convolutions 256, 256, 128, FC 328, 192, softmax 10.
    convs = (25 * 1 * 256 + 256) + (25 * 256 * 256 + 256) + (25 * 256 * 128 + 128)
    fcs = (28 * 28 * 128 * 328 + 328) + (328 * 192 + 192) + (192 * 10 + 10)
    assert count(nets.BaselineCNN()) == convs + fcs == nets.BASELINE_PARAMS
    assert round(nets.BASELINE_PARAMS / 1e6, 1) == 35.4


def test_squash_keeps_direction_and_maps_lengths_into_zero_one():
    s = jax.random.normal(jax.random.key(0), (50, 16)) * jnp.logspace(-3, 3, 50)[:, None]
    v = layers.squash(s)
    n = jnp.linalg.norm(s, axis=-1)
    np.testing.assert_allclose(jnp.linalg.norm(v, axis=-1), n**2 / (1 + n**2), rtol=1e-5)
    cosine = jnp.sum(v * s, -1) / (jnp.linalg.norm(v, axis=-1) * n)
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-5)
    length = layers.lengths(v)
    assert bool(jnp.all(length >= 0)) and bool(jnp.all(length < 1))
    assert float(length[0]) < 1e-4 and float(length[-1]) > 0.999
    np.testing.assert_array_equal(layers.squash(jnp.zeros((1, 8))), 0.0)
    assert bool(jnp.all(jnp.isfinite(jax.grad(lambda x: layers.squash(x).sum())(jnp.zeros(8)))))


def test_margin_loss_matches_a_hand_computation():
    lengths = jnp.array([[0.95, 0.5, 0.05, 0.3], [0.2, 0.0, 0.1, 0.99]])
    labels = jnp.array([0, 2])
    # Example 0: class 0 present and long enough (0); absent 0.5 and 0.3 over m- = 0.1:
    # 0.5 * (0.4^2 + 0.2^2) = 0.1. Example 1: class 2 present at 0.1, 0.8 short of m+ = 0.9:
    # 0.64; absent 0.2 and 0.99: 0.5 * (0.1^2 + 0.89^2) = 0.40105.
    np.testing.assert_allclose(
        layers.margin_loss(lengths, labels), [0.1, 0.64 + 0.40105], rtol=1e-5
    )
    # A perfect prediction: the true class at least m+ long, every other at most m-.
    perfect = jnp.array([[0.9, 0.1, 0.0, 0.05], [0.02, 0.1, 1.0, 0.0]])
    np.testing.assert_array_equal(layers.margin_loss(perfect, labels), [0.0, 0.0])


def test_one_routing_iteration_is_a_uniform_average():
    u_hat = jax.random.normal(jax.random.key(1), (3, 20, 10, 16))
    v, c = layers.routing(u_hat, 1)
    np.testing.assert_allclose(c, 0.1)  # softmax of all-zero logits over 10 digit capsules
    # s_j = sum_i c_ij u_hat_j|i = (1/10) sum over the 20 primary capsules.
    np.testing.assert_allclose(v, layers.squash(u_hat.sum(axis=1) / 10), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="at least one iteration"):
        layers.routing(u_hat, 0)


def test_more_iterations_route_to_the_capsule_the_predictions_agree_on():
    # 12 primary capsules all predict the same vector for output 1; for outputs 0, 2, 3
    # their predictions point every which way (they disagree).
    agreed = jnp.broadcast_to(jnp.array([0.6, -0.4, 0.2, 0.8]), (12, 4))
    scattered = 0.5 * jax.random.normal(jax.random.key(2), (12, 4, 4))
    u_hat = scattered.at[:, 1].set(agreed)[None]
    couplings, lengths = [], []
    for iterations in (1, 2, 3, 5):
        v, c = layers.routing(u_hat, iterations)
        couplings.append(float(c[0, :, 1].mean()))
        lengths.append(float(layers.lengths(v)[0, 1]))
        np.testing.assert_allclose(c.sum(axis=2), 1.0, rtol=1e-6)
    assert couplings[0] == pytest.approx(0.25)
    assert all(a < b for a, b in itertools.pairwise(couplings)), couplings
    assert all(a < b for a, b in itertools.pairwise(lengths)), lengths
    assert couplings[-1] > 0.8


def test_the_patches_convolution_has_xlas_values_and_gradients():
    x = jax.random.normal(jax.random.key(3), (2, 11, 11, 3))
    k = jax.random.normal(jax.random.key(4), (3, 3, 3, 5))

    @jax.jit
    def both(x, k):
        out = {}
        for impl in ("patches", "xla"):
            for stride in (1, 2):
                f = lambda x, k, s=stride, i=impl: jnp.sum(jnp.sin(layers.conv(x, k, s, i)))
                out[impl, stride] = (f(x, k), *jax.grad(f, (0, 1))(x, k))
        return out

    out = both(x, k)
    for stride in (1, 2):
        for a, b in zip(out["patches", stride], out["xla", stride], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def tiny_capsnet(**kwargs):
    sizes = dict(conv_filters=4, conv_kernel=5, primary_channels=2, primary_dim=4,
                 primary_kernel=5, primary_stride=2, num_classes=3, digit_dim=4,
                 decoder=(8,), pixels=144)  # fmt: skip
    return nets.CapsNet(**{**sizes, **kwargs})


def test_the_loss_gradient_matches_finite_differences():
    """On a tiny CapsNet (12x12 images, 8 primary capsules, 3 digit capsules of 4-D),
    routing 3 and the decoder included, in float64, along a random direction within each
    parameter array. The parameters are random, none zero (zero biases would put the
    decoder's ReLUs on their kink, where a finite difference straddles it)."""
    rng = np.random.default_rng(5)  # numpy's: no random-number program to compile
    with jax.enable_x64(True):
        model = tiny_capsnet()
        key = jax.random.key(5)
        x = jnp.asarray(rng.random((4, 12, 12, 1)))
        y = jnp.array([0, 1, 2, 1])
        shapes = jax.eval_shape(lambda: train_lib.init(model, key, (12, 12, 1)))
        params = jax.tree.map(lambda p: jnp.asarray(0.3 * rng.normal(size=p.shape)), shapes)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        loss = train_lib.capsnet_loss(model, max_shift=0, reconstruction_weight=0.05)
        f = jax.jit(lambda v: loss(unravel(v), (x, y), key)[0])
        grad = jax.jit(jax.grad(f))(flat)
        # One random direction within each parameter array, all differenced at once.
        directions, start = [], 0
        for leaf in jax.tree.leaves(params):
            d = np.zeros(flat.shape)
            d[start : start + leaf.size] = rng.normal(size=leaf.size)
            directions.append(jnp.asarray(d))
            start += leaf.size
        directions = jnp.stack(directions)
        h = 1e-6
        values = jax.jit(jax.vmap(f))(jnp.concatenate([flat + h * directions,
                                                       flat - h * directions]))  # fmt: skip
        numeric = (values[: len(directions)] - values[len(directions) :]) / (2 * h)
        np.testing.assert_allclose(directions @ grad, numeric, rtol=1e-6)


def test_a_tiny_capsnet_learns_a_few_hundred_digits(mnist_small, tmp_path):
    """400 training digits, a CapsNet of 16 Conv1 filters and 4 PrimaryCaps channels
    (144 primary capsules), routing 3 and the decoder, through the shared epoch loop."""
    model = nets.CapsNet(conv_filters=16, primary_channels=4, decoder=(32, 64))
    train, held = mnist_small.train.take(400), mnist_small.validation.take(500)
    params = train_lib.init(model, jax.random.key(0))
    tx = train_lib.optimizer(3e-3)
    batches = batching.Batches(len(train), 40, seed=0)
    arrays = (jnp.asarray(train.images), jnp.asarray(train.labels))
    step = batching.make_step(train_lib.capsnet_loss(model, 2), tx, arrays, batches, 0)
    predict = train_lib.classify(model)
    accuracy = lambda s: {
        "val_accuracy": float(jnp.mean(predict(s.params, jnp.asarray(held.images)) == held.labels))
    }
    state = batching.TrainState(params, tx.init(params))
    result = loop.train(state, step, batches.schedule(4), tmp_path, accuracy)
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < 0.6 * first["train_loss"]
    assert last["val_accuracy"] > 0.6, result.history  # chance is 0.1


# XLA's convolutions compile in half the time of the CPU's patches formulation, whose
# values and gradients test_the_patches_convolution_has_xlas_values_and_gradients checks
# and which the tiny CapsNet above trains with.
QUICK = {"train_size": 192, "batch_size": 32, "eval_size": 64, "eval_batch_size": 64,
         "conv_filters": 8, "primary_channels": 2, "routing_iterations": 2,
         "epochs": 3, "conv": "xla"}  # fmt: skip
QUICK_FLAGS = [f"--{name}={value}" for name, value in QUICK.items()]


def timeless(workdir):
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in e.items() if k not in ("epoch_time_s", "examples_per_s")}
            for e in lines]  # fmt: skip


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL once the first of 3 epochs is saved; the same command resumes and ends with
    the same metrics, test predictions and test accuracy as a run never stopped (run in
    this process, whose compiled programs the session's cache hands to the commands)."""
    from experiments import capsules

    whole, split = tmp_path / "whole", tmp_path / "split"
    capsules.run(QUICK, str(whole), verbose=False)
    killed = start_module("experiments.capsules", *QUICK_FLAGS, f"--workdir={split}")
    deadline = time.monotonic() + 120
    metrics_file = split / "metrics.jsonl"
    while not (metrics_file.exists() and metrics_file.read_text().strip()):
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    killed.kill()
    killed.wait()
    assert not (split / "summary.json").exists()
    resumed = run_module("experiments.capsules", *QUICK_FLAGS, f"--workdir={split}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step" in resumed.stdout
    assert timeless(split) == timeless(whole) and len(timeless(whole)) == 3
    keys = ("test_accuracy", "best_val_accuracy", "test_rotated_accuracy", "params")
    a, b = (json.loads((d / "summary.json").read_text()) for d in (whole, split))
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    np.testing.assert_array_equal(
        np.load(whole / "test_predictions.npy"), np.load(split / "test_predictions.npy")
    )
    for picture in ("accuracy.png", "reconstructions.png", "perturbations.png"):
        assert (split / picture).stat().st_size > 5_000
    # The convolutions' formulation is no part of the run's identity; the net is.
    with pytest.raises(UserError, match=r"settings: routing_iterations=2 \(now 3\); resume"):
        capsules.run({**QUICK, "routing_iterations": 3, "conv": "patches"}, str(split))


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--routing_iterations=0", "error: --routing_iterations=0 must be >= 1"),
        ("--model=resnet", "error: flag --model=resnet"),
    ],
)
def test_bad_settings_are_one_line_and_write_nothing(tmp_path, flag, message):
    done = run_module("experiments.capsules", f"--workdir={tmp_path / 'w'}", flag)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr
    assert not (tmp_path / "w").exists()


def test_the_optimizer_decays_the_learning_rate_exponentially():
    tx = train_lib.optimizer(1e-3, decay_rate=0.5, decay_steps=10)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    steps = []
    for _ in range(21):
        updates, state = tx.update({"w": jnp.ones(3)}, state, params)
        steps.append(float(-updates["w"][0]))
    # Adam's first steps on a constant gradient are the learning rate itself.
    np.testing.assert_allclose([steps[0], steps[10], steps[20]], [1e-3, 5e-4, 2.5e-4], rtol=1e-3)
    assert isinstance(tx, optax.GradientTransformation)


def test_colour_images_of_another_dataset_train_and_draw(tmp_path, monkeypatch):
    """--dataset=cifar10's shape (32x32x3) and its classes reach the net, the decoder (its
    3,072 pixels) and the pictures; no paper's number is claimed for it."""
    from fake_tfds import colour_splits

    from experiments import capsules

    loaded = []
    monkeypatch.setattr(
        capsules.data_lib, "load", lambda *a, **k: loaded.append(k) or colour_splits()
    )
    monkeypatch.setattr(capsules.data_lib, "training_size", lambda *a, **k: None)
    summary = capsules.run(
        {"dataset": "cifar10", "epochs": 1, "batch_size": 32, "eval_batch_size": 48,
         "conv_filters": 8, "primary_channels": 2, "routing_iterations": 1, "conv": "xla"},
        str(tmp_path), verbose=False,
    )  # fmt: skip
    assert summary["dataset"] == "cifar10" and summary["paper_test_error_pct"] is None
    assert 0 <= summary["test_accuracy"] <= 1 and summary["test_size"] == 48
    for picture in ("accuracy.png", "reconstructions.png", "perturbations.png"):
        assert (tmp_path / picture).stat().st_size > 5_000
    assert capsules.resolve({"dataset": "kmnist"}).workdir == "runs/kmnist/capsules/capsnet_r3"
    # The order the test predictions follow, for launch.vote.
    assert loaded[0]["order"] == json.loads((tmp_path / "config.json").read_text())["split"]
    assert capsules.resolve({})["split"] == "book"
