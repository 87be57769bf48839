"""ImageNet-scale training: eight devices vs one, global batch norm, learning on MNIST
through the Grain pipeline, resume after SIGKILL, clear errors."""

import itertools
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from commands import imagenet_result, run_module, start_module

from lib.core import parallel
from lib.imagenet import train as it
from lib.imagenet.nets import registry
from lib.imagenet.nets.resnet import BasicBlock, ResNet

# resnet_tiny on 2,048 MNIST images at 32x32: 64 steps per epoch, about 10 s on one core.
SMOKE = ["--model=resnet_tiny", "--dataset=mnist", "--train_split=train[:2048]",
         "--eval_split=test[:500]", "--image_size=32", "--batch_size=32", "--steps=60",
         "--eval_every=20", "--log_every=20", "--learning_rate=0.2", "--warmup_epochs=0.25",
         "--workers=0", "--num_devices=1"]  # fmt: skip


def cli(*args, timeout=300):
    return run_module("experiments.imagenet_nets", *args, timeout=timeout)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run never stopped; the session's compilation cache (conftest) hands its
    compiled steps to the later runs."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    done = cli(*SMOKE, f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr
    return workdir


# ----------------------------------------------------------------------------- library


def test_schedule_warms_up_linearly_then_falls_along_a_cosine():
    schedule = it.learning_rate_schedule(0.4, warmup_steps=4, total_steps=14)
    got = [float(schedule(s)) for s in range(15)]
    np.testing.assert_allclose(got[:4], [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
    np.testing.assert_allclose(got[4], 0.4, rtol=1e-6)  # the peak, where the cosine starts
    np.testing.assert_allclose(got[9], 0.2, rtol=1e-5)  # half-way down
    assert got[14] == pytest.approx(0.0, abs=1e-7)
    assert all(a >= b for a, b in itertools.pairwise(got[4:]))


def test_weight_decay_only_on_kernels():
    model = it.build_model("resnet_tiny", num_classes=10)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    mask = jax.tree_util.tree_leaves_with_path(it.decay_mask(params))
    decayed = {jax.tree_util.keystr(p) for p, m in mask if m}
    assert decayed and all(name.endswith("['kernel']") for name in decayed)
    assert any("bn" in jax.tree_util.keystr(p) for p, m in mask if not m)


def test_top_k_counts_and_ties():
    logits = jnp.array([[0.1, 0.5, 0.2, 0.0, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    labels = jnp.array([2, 5])
    np.testing.assert_array_equal(it.correct_at_k(logits, labels, 1), [False, False])
    np.testing.assert_array_equal(it.correct_at_k(logits, labels, 5), [True, False])
    # Constant logits are not "everything correct": ties go to the lowest class, as argmax.
    np.testing.assert_array_equal(it.correct_at_k(logits, jnp.array([2, 0]), 1), [False, True])


@pytest.mark.parametrize("name", ["inception_v3", "googlenet_aux"])
def test_auxiliary_heads_have_parameters_however_the_model_is_initialised(name):
    """A checkpoint trained with the heads restores into a tree initialised for evaluation,
    and the count with the heads is still the published one."""
    model = it.build_model(name)
    size = registry.RESOLUTION[name]

    def shapes(train):
        key, images = jax.random.key(0), jnp.zeros((1, size, size, 3))
        return jax.eval_shape(
            lambda: model.init({"params": key, "dropout": key}, images, train=train)
        )

    trained, evaluated = shapes(train=True), shapes(train=False)
    assert jax.tree.structure(trained) == jax.tree.structure(evaluated)
    same = jax.tree.map(lambda a, b: a.shape == b.shape, trained, evaluated)
    assert all(jax.tree.leaves(same))
    assert any(key.startswith("aux") for key in evaluated["params"])
    assert registry.count_variables(evaluated) == registry.REFERENCE_PARAMS[name]


@pytest.fixture(scope="module")
def tiny():
    """Two stages of one basic block at width 8 (batch norm everywhere, little to compile),
    its optimizer and train step, and an initial state on the host. The RBG key compiles
    the initialisers several times faster on CPU than threefry; any key would do here."""
    model = ResNet(stage_sizes=(1, 1), block_cls=BasicBlock, width=8, num_classes=10)
    recipe = it.Recipe(learning_rate=0.2, total_steps=10, warmup_steps=1, weight_decay=1e-3)
    optimizer = it.make_optimizer(recipe)
    key = jax.random.key(0, impl="rbg")
    initial = jax.device_get(it.init_state(model, optimizer, key, 16))
    return model, it.make_train_step(model, recipe, optimizer), initial


def _shard_dependent_images(n=32, size=16, shards=8, seed=0):
    """Images whose brightness and contrast differ per shard, so statistics taken per
    device would differ from the global batch's."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, size, size, 3)).astype(np.float32)
    shard = np.repeat(np.arange(shards), n // shards)[:, None, None, None]
    return x * (1 + shard) + shard, rng.integers(0, 10, n).astype(np.int32)


def test_eight_devices_take_the_same_steps_as_one(tiny):
    assert jax.device_count() >= 8, "conftest sets eight simulated CPU devices"
    _, train_step, initial = tiny
    batches = []
    for seed in (1, 2):
        images, labels = _shard_dependent_images(seed=seed)
        batches.append({"image": images, "label": labels})
    key = jax.random.PRNGKey(0)

    def two_steps(num_devices):
        mesh = parallel.make_mesh(num_devices)
        step = it.jit_train_step(train_step, mesh)
        state = parallel.put_replicated(initial, mesh)
        for batch in batches:
            state, metrics = step(state, parallel.put_process_batch(batch, mesh), key)
        return jax.device_get((state, metrics))

    (one, m1), (eight, m8) = two_steps(1), two_steps(8)
    for name in ("loss", "top1", "grad_norm"):
        np.testing.assert_allclose(m1[name], m8[name], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(eight.step) == 2


def test_batch_norm_uses_the_global_batch_under_jit_with_a_sharded_batch(tiny):
    """What the data-parallel step relies on: no axis_name, yet global statistics."""
    model, _, state = tiny
    images, _ = _shard_dependent_images()

    def new_stats(state, x):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return updates["batch_stats"]

    mesh = parallel.make_mesh(8)
    sharded = jax.device_put(images, parallel.batch_sharding(mesh))
    on_eight = jax.jit(new_stats, out_shardings=parallel.replicated(mesh))(state, sharded)
    on_one = jax.jit(new_stats)(state, images)
    for a, b in zip(jax.tree.leaves(on_one), jax.tree.leaves(on_eight), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Per-device statistics (what an explicit per-shard BN would use) would be different.
    per_shard = [jax.jit(new_stats)(state, images[i * 4 : (i + 1) * 4]) for i in range(8)]
    local_var = np.mean([s["stem"]["bn"]["var"] for s in per_shard], axis=0)
    global_var = np.asarray(on_eight["stem"]["bn"]["var"])
    assert np.max(np.abs(local_var - global_var) / global_var) > 0.05


# ----------------------------------------------------------------------------- experiment


def test_short_run_on_mnist_through_grain_learns(uninterrupted):
    """60 steps of batch 32 (Inception crops of 32x32 MNIST), not quite one epoch: far
    above chance (10% top-1, 50% top-5).

    Measured on one CPU core: 56.8% top-1 and 94.8% top-5 on 500 test images.
    """
    got = imagenet_result(uninterrupted)
    assert got["summary"]["steps"] == 60
    assert got["summary"]["final_top1"] > 0.45
    assert got["summary"]["final_top5"] > 0.85
    assert [m["step"] for m in got["metrics"]] == [20, 40, 60]
    for name in ("config.json", "summary.json", "metrics.jsonl"):
        assert (uninterrupted / name).exists(), name
    assert list((uninterrupted / "tensorboard").iterdir())


def test_resume_after_sigkill_matches_uninterrupted(uninterrupted, tmp_path):
    process = start_module("experiments.imagenet_nets", *SMOKE, f"--workdir={tmp_path}")
    checkpoints = tmp_path / "checkpoints"
    deadline, saved = time.time() + 240, False
    while time.time() < deadline and process.poll() is None and not saved:
        saved = checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert saved, "the run ended before its first checkpoint"
    assert not (tmp_path / "summary.json").exists()

    again = cli(*SMOKE, f"--workdir={tmp_path}")
    assert again.returncode == 0, again.stderr
    assert "resuming at step 20" in again.stdout
    assert imagenet_result(tmp_path) == imagenet_result(uninterrupted)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model=resnet51"], "unknown model 'resnet51'; choose one of: alexnet"),
        (["--dataset=no_such_dataset"], "TFDS dataset 'no_such_dataset'"),
    ],
)
def test_bad_model_or_dataset_gets_one_clear_line(args, message, tmp_path):
    done = cli(*SMOKE, *args, f"--workdir={tmp_path}")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr
