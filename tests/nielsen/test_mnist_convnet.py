"""The MNIST convnet experiment end to end: learning, resuming, devices, bad input."""

import json
import os
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from commands import assert_refused, result, run_module, start_module

from lib.core import parallel
from lib.core.xla_cpu import DEVICE_COUNT
from lib.nielsen import nets, train

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--net=relu", "--train_size=2000", "--epochs=2", "--num_devices=1",
         "--validation_size=1000", "--test_size=1000"]  # fmt: skip
QUICK_STEPS_PER_EPOCH = 2000 // 10  # the relu rung's batch of 10


def small(splits, n_train: int):
    """`n_train` training images, 500 to validate and 500 to test: these tests compare
    runs with each other, which the full held-out sets would only make slower."""
    return splits._replace(
        train=splits.train.take(n_train),
        validation=splits.validation.take(500),
        test=splits.test.take(500),
    )


def cli(*args, env=None, timeout=300):
    return run_module("experiments.mnist_convnet", *args, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    done = cli(*QUICK, f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr
    return workdir


def test_short_run_learns(uninterrupted):
    """2,000 images, two epochs of the book's ReLU net at batch 10: well above chance (10%).

    Measured on CPU: 83.3% validation, 83.7% test.
    """
    got = result(uninterrupted)["summary"]
    assert got["best_val_accuracy"] > 0.80
    assert got["test_accuracy"] > 0.80
    for name in ("config.json", "summary.json", "metrics.jsonl", "accuracy.png", "filters.png"):
        assert (uninterrupted / name).exists(), name
    assert list((uninterrupted / "tensorboard").iterdir())


def _wait_for(predicate, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_resume_after_sigkill_matches_uninterrupted(uninterrupted, tmp_path):
    process = start_module("experiments.mnist_convnet", *QUICK, f"--workdir={tmp_path}")
    ckpts = tmp_path / "checkpoints"
    saved = _wait_for(
        lambda: ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()), process
    )
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert saved, "the run ended before its first checkpoint"
    assert not (tmp_path / "summary.json").exists()
    again = cli(*QUICK, f"--workdir={tmp_path}")
    assert again.returncode == 0, again.stderr
    assert "resuming at step 200" in again.stdout
    assert result(tmp_path) == result(uninterrupted)


def test_sigterm_saves_mid_epoch_and_resumes(uninterrupted, tmp_path):
    process = start_module("experiments.mnist_convnet", *QUICK, f"--workdir={tmp_path}")
    # The first line is printed once training is about to start.
    started = _wait_for(lambda: process.output()[0].endswith("\n"), process, timeout=240)
    assert started and "start" in process.output()[0], process.output()
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 3, err
    assert "to resume" in out
    steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    # The checkpoint is the step it stopped at, inside an epoch (2,000 images at batch 10:
    # 200 steps each), not an epoch's end that it might have run on to.
    assert len(steps) == 1 and 0 < steps[0] < 400 and steps[0] % QUICK_STEPS_PER_EPOCH, steps
    again = cli(*QUICK, f"--workdir={tmp_path}")
    assert again.returncode == 0, again.stderr
    assert f"{QUICK_STEPS_PER_EPOCH} steps/epoch" in again.stdout
    assert f"resuming at step {steps[0]}\n" in again.stdout
    assert result(tmp_path) == result(uninterrupted)


def test_one_device_and_eight_devices_take_the_same_step(mnist_small):
    assert jax.device_count() >= 8, "conftest sets eight simulated CPU devices"
    model = nets.create("conv2")
    optimizer = train.make_optimizer("momentum", 0.05)
    data = {"images": mnist_small.train.images[:64], "labels": mnist_small.train.labels[:64]}
    idx = jnp.arange(64).reshape(4, 16)
    key = jax.random.PRNGKey(0)

    def three_steps(num_devices):
        mesh = parallel.make_mesh(num_devices)
        sharding = parallel.batch_sharding(mesh) if num_devices > 1 else None
        step = jax.jit(train.make_train_step(model, optimizer, 1e-4, sharding=sharding))
        state = train.init_state(model, optimizer, key, jnp.asarray(data["images"][:1]))
        state = parallel.put_replicated(state, mesh)
        on_mesh = parallel.put_replicated(data, mesh)
        for i in range(3):
            state, metrics = step(state, on_mesh, idx[i], key)
        return jax.device_get(state.params), metrics

    one, m1 = three_steps(1)
    eight, m8 = three_steps(8)
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_scan_and_loop_drivers_agree(mnist_small):
    model = nets.create("shallow")
    optimizer = train.make_optimizer("sgd", 0.1)
    step = train.make_train_step(model, optimizer, 0.0)
    data = {"images": mnist_small.train.images[:200], "labels": mnist_small.train.labels[:200]}
    idx = train.epoch_indices(jax.random.PRNGKey(1), 0, 200, 10)
    key = jax.random.PRNGKey(2)
    results = []
    for driver in ("scan", "loop"):
        state = train.init_state(model, optimizer, key, jnp.asarray(data["images"][:1]))
        state, metrics = train.EpochRunner(step, driver)(state, data, idx, key)
        results.append((jax.device_get(state.params), metrics["loss"]))
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_ensemble_on_cpu_trains_each_member_on_a_device_of_its_own(mnist_small, tmp_path):
    splits = small(mnist_small, 500)
    config = train.TrainConfig(
        epochs=1, batch_size=20, learning_rate=0.1, ensemble=3, num_devices=1
    )
    summary, state = train.train_and_evaluate(nets.create("shallow"), splits, config, tmp_path)
    assert jax.tree.leaves(state.params)[0].shape[0] == 3
    members = summary["test_member_accuracy"]
    assert len(members) == 3 and len(set(members)) > 1  # different seeds, different nets
    assert summary["test_accuracy"] >= min(members)
    # eight CPU devices: the auto layout puts each member on a device of its own
    assert train.resolve_layout("auto") == "devices" and summary["device"].endswith(" x3")


def fit_members(splits, seed, members, workdir, layout="auto"):
    """The parameters of a one-epoch run of a small conv1 net with `members` seeds."""
    config = train.TrainConfig(
        epochs=1,
        batch_size=20,
        learning_rate=0.1,
        seed=seed,
        ensemble=members,
        ensemble_layout=layout,
        num_devices=1,
    )
    model = nets.create("conv1", hidden=(30,))
    return train.train_and_evaluate(model, splits, config, workdir).state.params


@pytest.fixture(scope="module")
def lone_seeds(mnist_small, tmp_path_factory):
    """Seeds 5 and 6 trained alone (300 images), with the splits they saw."""
    splits = small(mnist_small, 300)
    root = tmp_path_factory.mktemp("alone")
    return splits, [fit_members(splits, seed, 1, root / str(seed)) for seed in (5, 6)]


@pytest.mark.parametrize("layout", ["vmap", "unrolled", "devices"])
def test_members_train_as_their_seeds_alone(lone_seeds, tmp_path, layout):
    splits, alone = lone_seeds
    together = fit_members(splits, 5, 2, tmp_path, layout)
    for m in range(2):
        for a, b in zip(jax.tree.leaves(alone[m]), jax.tree.leaves(together), strict=True):
            np.testing.assert_allclose(a, b[m], rtol=1e-4, atol=1e-5)


def test_three_members_on_two_cores_predict_as_their_seeds_alone(tmp_path):
    """The README's main job's layout: three nets on a CPU of two devices (member 2 shares
    device 0 with member 0). Its members' test predictions are, label for label, those
    of seeds 0, 1 and 2 trained alone (here, in the test process: one program per net
    either way, the same whatever the device count)."""
    from experiments import mnist_convnet

    # The shallow net: it compiles in a fraction of the relu net's time, and 100 steps
    # take each seed to 40-55% on the test images, so their predictions differ.
    tiny = {"net": "shallow", "train_size": 1000, "validation_size": 100, "test_size": 200,
            "epochs": 1}  # fmt: skip
    flags = [f for f in os.environ["XLA_FLAGS"].split() if not f.startswith(DEVICE_COUNT)]
    two_cores = {"XLA_FLAGS": " ".join([*flags, f"{DEVICE_COUNT}=2"])}
    args = [f"--{k}={v}" for k, v in tiny.items()]
    together = start_module(
        "experiments.mnist_convnet", *args, "--ensemble=3", f"--workdir={tmp_path / 'three'}",
        env=two_cores,
    )  # fmt: skip
    alone = []
    for seed in range(3):
        mnist_convnet.run({**tiny, "seed": seed}, str(tmp_path / str(seed)), verbose=False)
        alone.append(np.load(tmp_path / str(seed) / "test_predictions.npy"))
    out, err = together.communicate(timeout=240)
    assert together.returncode == 0, err
    assert "3 nets (devices)" in out and " s on cpu x2\n" in out, out
    summary = json.loads((tmp_path / "three" / "summary.json").read_text())
    assert summary["device"] == "cpu x2"
    assert len({a.tobytes() for a in alone}) == 3  # three seeds, three different nets
    members = np.load(tmp_path / "three" / "test_predictions.npy")
    np.testing.assert_array_equal(members, np.stack(alone))


def test_runs_differing_in_learning_rate_share_compiled_programs(mnist_small, tmp_path):
    splits = small(mnist_small, 200)
    model = nets.create("shallow")

    def fit(learning_rate, workdir):
        config = train.TrainConfig(
            epochs=1, batch_size=20, learning_rate=learning_rate, num_devices=1
        )
        return train.train_and_evaluate(model, splits, config, tmp_path / workdir).state.params

    train.compiled_programs.cache_clear()
    slow, fast = fit(0.1, "slow"), fit(0.5, "fast")
    info = train.compiled_programs.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    train.compiled_programs.cache_clear()
    fast_alone = fit(0.5, "fast_alone")
    for b, c in zip(jax.tree.leaves(fast), jax.tree.leaves(fast_alone), strict=True):
        np.testing.assert_array_equal(b, c)  # the shared program used the run's own rate
    pairs = zip(jax.tree.leaves(slow), jax.tree.leaves(fast), strict=True)
    assert not all(np.allclose(a, b) for a, b in pairs)


def test_majority_vote():
    votes = np.array([[0, 1, 2], [0, 2, 2], [1, 1, 0]])
    np.testing.assert_array_equal(train.majority_vote(votes, 3), [0, 1, 2])


def test_ensemble_accuracies_count_every_class():
    """Labels past 9 (a dataset of more than ten classes) are voted, not an index error."""
    predictions = np.array([[3, 15, 25], [3, 15, 7], [4, 2, 7]])
    scored = train.accuracies(predictions, np.array([3, 15, 26]))
    assert scored["member_accuracy"] == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert scored["accuracy"] == pytest.approx(2 / 3)  # votes 3, 15, 7


def test_diverging_run_stops_and_keeps_last_good_checkpoint(tmp_path):
    args = ["--net=relu", "--train_size=200", "--num_devices=1", "--validation_size=500",
            "--test_size=500", f"--workdir={tmp_path}"]  # fmt: skip
    first = cli(*args, "--epochs=1")
    assert first.returncode == 0, first.stderr
    steps_before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    # Its config.json would refuse another learning rate; without it the checkpoint resumes.
    (tmp_path / "config.json").unlink()
    blown = cli(*args, "--epochs=2", "--learning_rate=1e12")
    assert blown.returncode == 1
    assert "epoch 2" in blown.stderr and "Traceback" not in blown.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == steps_before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--net=lenet"], "--net"),
        (["--learning_rate=0"], "--learning_rate=0.0 must be > 0"),
        (["--learning_rate=-0.1"], "--learning_rate=-0.1 must be > 0"),
        (["--batch_size=0"], "--batch_size=0 must be >= 1"),
        (["--train_size=100", "--batch_size=200"], "larger than the 100 training examples"),
        (["--workdir=/dev/null/run"], "cannot write to workdir"),
    ],
)
def test_bad_input_gets_one_clear_line(args, message, tmp_path):
    done = cli(f"--workdir={tmp_path / 'run'}", *args, "--epochs=1")
    assert_refused(done, message)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "run").exists()


def test_missing_dataset_says_how_to_point_tfds(tmp_path):
    env = {"TFDS_DATA_DIR": str(tmp_path / "empty"), "CLASSIC_NETS_CACHE": str(tmp_path / "c")}
    done = cli("--epochs=1", f"--workdir={tmp_path / 'run'}", env=env)
    assert done.returncode == 1
    assert "TFDS_DATA_DIR" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("rung", ["relu", "dropout"])
def test_blocks_of_steps_per_call_train_exactly_as_single_steps(rung, mnist_small):
    """A host-loop call of 2 unrolled steps, 23 steps in all (11 blocks and a single step),
    ends with the same parameters, bit for bit, as 23 calls of one step, dropout masks
    and the expanded set included, and so does a run of blocks stopped and resumed. (The
    losses it reports, a sum XLA may order otherwise inside the larger program, agree to
    float32 rounding.)"""
    spec = nets.RUNGS[rung]
    model = nets.create(rung)
    optimizer = train.make_optimizer("sgd", spec.learning_rate)
    step = train.make_train_step(
        model, optimizer, 0.5 * spec.l2 / 100, train.make_batch_fn(spec.expanded)
    )
    init_key, shuffle_key, step_key = train.run_keys(0)
    images = mnist_small.train
    data = {"images": jnp.asarray(images.images), "labels": jnp.asarray(images.labels)}
    idx = train.epoch_indices(shuffle_key, 0, 5 * len(images) if spec.expanded else len(images), 10)
    finals = []
    for block in (1, 2):
        state = train.init_state(model, optimizer, init_key, data["images"][:1])
        runner = train.EpochRunner(step, "loop", check_every=10, steps_per_call=block)
        state, metrics = runner(state, data, idx[:23], step_key)
        assert metrics["loss"].shape == (23,) and int(state.step) == 23
        finals.append((jax.device_get(state.params), metrics["loss"]))
    # The same 23 steps stopped after 10 and resumed at row 10 of the same indices, by the
    # runner of 2-step blocks: no new program (the block and the single step it has).
    state = train.init_state(model, optimizer, init_key, data["images"][:1])
    state, first = runner(state, data, idx[:23], step_key, should_stop=lambda: True)
    state, rest = runner(state, data, idx[:23], step_key, start=10)
    assert (first["loss"].shape, rest["loss"].shape, int(state.step)) == ((10,), (13,), 23)
    assert runner._steps._cache_size() == 2
    finals.append((jax.device_get(state.params), np.concatenate([first["loss"], rest["loss"]])))
    (params, losses), *others = finals
    for other_params, other_losses in others:
        for one, other in zip(jax.tree.leaves(params), jax.tree.leaves(other_params), strict=True):
            np.testing.assert_array_equal(one, other)
        np.testing.assert_allclose(losses, other_losses, rtol=1e-6)


def test_the_book_nets_train_on_another_tfds_dataset(tmp_path, monkeypatch):
    from fake_tfds import prepared_copy

    from experiments import mnist_convnet
    from lib.core.errors import ConfigError

    prepared_copy(tmp_path / "tfds", "fashion_mnist", train=1200, test=200)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("CLASSIC_NETS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="--train_size=1001 must be at most 1,000"):
        mnist_convnet.run({"dataset": "fashion_mnist", "train_size": 1001}, str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    overrides = {"net": "relu", "dataset": "fashion_mnist", "epochs": 2, "num_devices": 1}
    summary = mnist_convnet.run(overrides, str(tmp_path / "run"), verbose=False)
    assert summary["dataset"] == "fashion_mnist" and summary["book_accuracy"] is None
    assert summary["best_val_accuracy"] > 0.7  # 1,000 training images of (copied) digits
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["dataset"] == "fashion_mnist"


def test_the_nets_infer_colour_32x32_images():
    model = nets.create("relu")
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert params["ConvPool_0"]["kernel"].shape == (5, 5, 3, 20)
    assert params["FullyConnected_0"]["kernel"].shape == (5 * 5 * 40, 100)  # 32-4=28, /2, -4, /2
    assert model.apply({"params": params}, jnp.zeros((2, 32, 32, 3))).shape == (2, 10)
    assert nets.forward_macs(model, (32, 32, 3)) == (
        28 * 28 * 25 * 3 * 20 + 10 * 10 * 25 * 20 * 40 + 1000 * 100 + 100 * 10
    )


def test_an_ensemble_run_says_its_test_accuracy_is_the_vote(tmp_path, capsys):
    from experiments import mnist_convnet

    overrides = {"net": "shallow", "train_size": 200, "validation_size": 200, "test_size": 200,
                 "epochs": 1, "batch_size": 20, "ensemble": 2, "num_devices": 1}  # fmt: skip
    summary = mnist_convnet.run(overrides, str(tmp_path / "run"))
    alone = ", ".join(f"{100 * a:.2f}%" for a in summary["test_member_accuracy"])
    out = capsys.readouterr().out
    assert f"test accuracy there {100 * summary['test_accuracy']:.2f}%" in out
    assert f"the vote of 2 nets (alone {alone})" in out


def test_members_stopped_and_resumed_mid_epoch_train_as_uninterrupted(mnist_small):
    """The devices layout resumed at row 10 of the epoch's indices: the same parameters,
    bit for bit, and no program compiled for the remainder."""
    model = nets.create("shallow")
    optimizer = train.make_optimizer("sgd", 0.1)
    step = train.make_train_step(model, optimizer, 0.0)
    data = {"images": jnp.asarray(mnist_small.train.images[:400]),
            "labels": jnp.asarray(mnist_small.train.labels[:400])}  # fmt: skip
    init_key, shuffle_key, step_key = train.run_keys(0, 2)
    idx = train.epoch_indices(shuffle_key, 0, 400, 10)
    runner = train.make_runner(step, 2, "devices", "loop", steps_per_call=2)
    runner.check_every = 10
    whole, _ = runner(
        train.init_state(model, optimizer, init_key, data["images"][:1]), data, idx, step_key
    )
    state = train.init_state(model, optimizer, init_key, data["images"][:1])
    state, first = runner(state, data, idx, step_key, should_stop=lambda: True)
    state, rest = runner(state, data, idx, step_key, start=10)
    assert (first["loss"].shape, rest["loss"].shape) == ((10, 2), (30, 2))
    assert runner._steps._cache_size() == 2  # the 2-step block, once per device
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)
