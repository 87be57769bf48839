"""The toy SVMs, the 2-layer net and the MNIST SVMs (lib/karpathy/svm.py, experiments/svm.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import svm as svm_experiment
from lib.karpathy import svm


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def _accuracy(score_fn, params):
    points, labels = svm.toy_data()
    return float(svm.accuracy(score_fn, params, points, labels))


@pytest.mark.parametrize("reg", [0.1, 1.0])  # the experiment's default and the text's
def test_circuit_svm_reaches_100_percent(reg):
    for seed in range(3):
        run = svm.train_circuit_svm(jax.random.PRNGKey(seed), reg=reg, max_iterations=3000)
        assert run.history[-1] == (run.iterations, 1.0)
        assert _accuracy(svm.svm_score, run.params) == 1.0
        assert run.history[0][1] < 1.0  # it starts wrong: a = 1, b = -2, c = -1


def test_two_layer_net_reaches_100_percent():
    for seed in range(3):
        run = svm.train_two_layer(jax.random.PRNGKey(seed), hidden=3)
        assert run.history[-1][1] == 1.0
        assert _accuracy(svm.two_layer_score, run.params) == 1.0


def test_loss_gradient_is_minus_the_circuit_pulls_on_every_point():
    points, labels = svm.toy_data()
    key = jax.random.PRNGKey(3)
    for params in (svm.SVM_INIT, dict(zip("abc", jax.random.normal(key, (3,)), strict=True))):
        params = {k: jnp.float64(v) for k, v in params.items()}
        for i in range(len(labels)):
            grad = jax.grad(svm.svm_loss)(params, points[i : i + 1], labels[i : i + 1], 0.3)
            pulls = svm.circuit_svm_pulls(params, points[i], labels[i], 0.3)
            for k in "abc":
                assert float(grad[k]) == pytest.approx(-float(pulls[k]), abs=1e-15)


def test_loss_svm_and_circuit_svm_agree():
    reg = 0.1
    loss_run = svm.train_loss_svm(steps=2000, learning_rate=0.01, reg=reg)
    full_batch = svm.circuit_full_batch(steps=2000, step_size=0.01, reg=reg)
    for k in "abc":  # the same algorithm two ways: the same parameters
        assert float(loss_run.params[k]) == pytest.approx(float(full_batch[k]), abs=1e-12)
    stochastic = svm.train_circuit_svm(jax.random.PRNGKey(0), reg=reg)
    points, _ = svm.toy_data()
    assert _accuracy(svm.svm_score, loss_run.params) == 1.0
    assert _accuracy(svm.svm_score, stochastic.params) == 1.0
    np.testing.assert_array_equal(
        svm.svm_score(loss_run.params, points) > 0, svm.svm_score(stochastic.params, points) > 0
    )
    assert float(loss_run.losses[-1]) < float(loss_run.losses[0])


def test_multiclass_hinge_loss_by_hand():
    scores = jnp.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])
    labels = jnp.array([0, 1, 2])
    # Per example: max(0, 5.1-3.2+1) + max(0, -1.7-3.2+1) = 2.9; 0; 6.3 + 6.6 = 12.9.
    assert float(svm.multiclass_hinge_loss(scores, labels)) == pytest.approx((2.9 + 12.9) / 3)


def test_random_fourier_features_approximate_the_rbf_kernel():
    key_x, key_rff = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.uniform(key_x, (6, 20), jnp.float64)
    gamma = 0.3
    rff = svm.init_random_fourier_features(key_rff, 20, 50_000, gamma, jnp.float64)
    z = svm.random_fourier_features(rff, x)
    exact = jnp.exp(-gamma * jnp.sum((x[:, None] - x[None]) ** 2, axis=-1))
    np.testing.assert_allclose(z @ z.T, exact, atol=0.02)


def test_mnist_linear_svm_quick_run_passes_87_percent():
    """5,000 training images, 3 epochs: at least 87% on validation and test (about 89%)."""
    with jax.enable_x64(False):
        from lib.core import data

        splits = data.mnist(train_size=5000)
        rows = [(s.images.reshape(len(s), -1), s.labels) for s in splits]
        run = svm.train_multiclass_svm(jax.random.PRNGKey(0), *rows, epochs=3)
    assert run.validation_accuracy >= 0.87
    assert run.test_accuracy >= 0.87
    assert [h["epoch"] for h in run.history] == [1, 2, 3]


def test_experiment_toy_part_writes_results_and_plot(tmp_path):
    summary = svm_experiment.run({"workdir": str(tmp_path), "mnist": False}, verbose=False)
    assert summary["circuit_svm"]["training_accuracy"] == 1.0
    assert summary["two_layer_net"]["training_accuracy"] == 1.0
    assert summary["loss_svm"]["training_accuracy"] == 1.0
    assert summary["loss_svm"]["full_batch_trajectory_difference"] < 1e-12
    assert summary["loss_svm"]["same_predictions_as_circuit"]
    assert (tmp_path / "toy_boundaries.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "summary.json").read_text())["circuit_svm"]["iterations_to_100"]
    assert json.loads((tmp_path / "config.json").read_text())["reg"] == 0.1


def test_a_whole_config_runs_as_its_changed_settings_do(tmp_path):
    config = svm_experiment.get_config()
    assert config.reg == 0.1 and config.mnist and config.mnist_train_size is None
    config.update(workdir=str(tmp_path / "whole"), mnist=False, loss_steps=10)
    whole = svm_experiment.run(config.to_dict(), verbose=False)
    given = {"workdir": "runs/not_here", "mnist": False, "loss_steps": 10}
    # The workdir argument (a sweep's) wins over the settings' workdir.
    given_run = svm_experiment.run(given, str(tmp_path / "given"), verbose=False)
    assert given_run["loss_svm"] == whole["loss_svm"]
    written = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("whole", "given")]
    assert {**written[0], "workdir": ""} == {**written[1], "workdir": ""}
    assert set(written[0]) == {s.name for s in svm_experiment.SETTINGS}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"step_size": -0.1}, r"--step_size=-0\.1 must be > 0"),
        ({"step_size": float("nan")}, r"--step_size=nan must be > 0"),
        ({"reg": -1.0}, r"--reg=-1\.0 must be >= 0"),
        ({"mnist_epochs": 0}, r"--mnist_epochs=0 must be >= 1"),
        ({"rff_features": -1}, r"--rff_features=-1 must be >= 0"),
        ({"mnist_train_size": 60_000}, r"--mnist_train_size=60000 must be in \[1, 50000\]"),
        (
            {"mnist_train_size": 50},
            r"--mnist_train_size \(50\) must be at least --mnist_batch_size \(100\)",
        ),
        ({"nosuch": 1}, "unknown setting nosuch"),
    ],
)
def test_bad_flag_values_get_a_clear_message_before_any_file(tmp_path, change, message):
    workdir = tmp_path / "run"
    with pytest.raises(svm_experiment.UserError, match=message):
        svm_experiment.run({"workdir": str(workdir), **change}, verbose=False)
    assert not workdir.exists()
