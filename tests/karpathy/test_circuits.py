"""Gates, backpropagation and gradient checks (lib/karpathy/gates.py, experiments/circuits.py)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import circuits
from lib.karpathy import gates

ROOT = Path(__file__).resolve().parents[2]

# Points away from the max gate's tie, where it has no derivative.
GATE_POINTS = [(-2.0, 3.0), (0.7, -1.3), (4.0, 4.5)]


@pytest.mark.parametrize("name", sorted(gates.GATES))
@pytest.mark.parametrize("point", GATE_POINTS)
def test_every_gate_backward_matches_finite_differences(name, point):
    gate = gates.GATES[name]
    with jax.enable_x64(True):
        args = tuple(jnp.float64(a) for a in point[: gate.forward.__code__.co_argcount])
        for upstream in (1.0, -2.5):  # the backward pass scales the gradient from above
            backward = gate.backward(args, upstream)
            numeric = gates.numerical_gradient(
                lambda *a, upstream=upstream: upstream * gate.forward(*a), args, h=1e-5
            )
            np.testing.assert_allclose(backward, numeric, rtol=1e-8, atol=1e-9)


def test_backprop_adds_up_the_gradients_of_a_wire_read_twice():
    # f(x) = x * x + x reads x three times: df/dx = 2x + 1.
    circuit = (
        gates.Node(gates.multiply, ("x", "x"), "xx"),
        gates.Node(gates.add, ("xx", "x"), "f"),
    )
    wires = gates.forward(circuit, {"x": 3.0})
    assert float(wires["f"]) == 12.0
    assert float(gates.backward(circuit, wires)["x"]) == 7.0


def test_add_multiply_circuit_matches_the_text():
    result = circuits.add_multiply()
    assert result["f"] == -12.0
    assert result["grad"] == {"x": -4.0, "y": -4.0, "z": 3.0}


def test_single_gate_strategies_improve_the_output():
    result = circuits.multiply_gate(seed=0, tweak=0.01, tries=100, h=1e-4, step_size=0.01)
    assert result["f"] == -6.0
    assert -6.0 < result["random_search"]["f"] < -5.9
    for way in ("numerical_gradient", "analytic_gradient"):
        np.testing.assert_allclose(result[way]["grad"], [3.0, -2.0], atol=1e-6)
        assert result[way]["f"] == pytest.approx(-1.97 * 2.98)


def test_neuron_gradient_three_ways_agree():
    result = circuits.neuron(h=1e-4)
    assert result["f"] == pytest.approx(0.8807970779778823)
    assert result["largest_disagreement"] < 1e-6
    ds = result["f"] * (1 - result["f"])  # the sigmoid's local gradient, 0.105
    expected = {"a": -1.0 * ds, "b": 3.0 * ds, "c": ds, "x": 1.0 * ds, "y": 2.0 * ds}
    for method in result["grad"].values():
        for name, value in expected.items():
            assert method[name] == pytest.approx(value, abs=1e-6)


def test_gradient_check_passes_a_correct_gradient():
    def loss(p):
        return jnp.sum(jnp.tanh(p["w"] @ p["x"]) ** 2) + jnp.sum(p["b"] ** 3)

    params = {
        "w": 0.3 * jnp.arange(12.0).reshape(3, 4) / 12,
        "x": jnp.arange(4.0),
        "b": jnp.ones(2),
    }
    assert gates.gradient_check(loss, params) < 1e-7


def test_gradient_check_detects_a_wrong_gradient():
    @jax.custom_vjp
    def square(x):
        return x**2

    def square_fwd(x):
        return square(x), x

    def square_bwd(x, g):
        return (x * g,)  # the bug: d(x^2)/dx is 2x, not x

    square.defvjp(square_fwd, square_bwd)

    params = {"x": jnp.array([0.5, -1.0, 2.0]), "y": jnp.array([1.5])}

    def loss(p):
        return jnp.sum(square(p["x"])) + jnp.sum(p["y"] ** 2)

    assert gates.gradient_check(loss, params) > 0.3


def _offset_loss(factor: float = 1.0):
    """A loss of about 10 whose "w" gradients are ~1 and backpropagate times `factor`, and
    whose "b" gradients are ~1e-8, as small as the central differences' roundoff there
    (eps * 10 / h = 2e-9), like a softmax bias's at confident predictions."""

    @jax.custom_vjp
    def scaled(x):
        return x

    scaled.defvjp(lambda x: (x, None), lambda _, g: (factor * g,))

    def loss(p):
        return 10.0 + jnp.sum(jnp.tanh(scaled(p["w"]))) + 1e-8 * jnp.sum(p["b"] ** 2)

    params = {"w": jnp.array([0.3, -0.5, 1.2]), "b": jnp.array([1.0, -0.7, 0.4])}
    return loss, params


def test_gradient_check_passes_gradients_as_small_as_the_roundoff():
    loss, params = _offset_loss()
    assert gates.gradient_check(loss, params) < 1e-7


@pytest.mark.parametrize("factor", [1.1, -1.0])
def test_gradient_check_detects_a_wrong_gradient_beside_tiny_ones(factor):
    loss, params = _offset_loss(factor)
    # |factor * g - g| / (|factor * g| + |g|) on "w"
    expected = abs(factor - 1) / (abs(factor) + 1)
    assert gates.gradient_check(loss, params) == pytest.approx(expected, rel=1e-6)


def test_check_mode_passes_a_net_with_tiny_sampled_gradients():
    """fc2's softmax bias at 3 coordinates: gradients of 1e-8 to 2e-5, at a loss of 10."""
    result = circuits.check_model("fc2", seed=0, batch=2, coords=3, h=1e-6)
    assert result["relative_error"] < circuits.get_config().check_tolerance, result


def test_gradient_check_refuses_a_function_that_rounds_to_float32():
    with pytest.raises(gates.PrecisionError, match="float32"):
        gates.gradient_check(lambda p: jnp.sum(p**2).astype(jnp.float32), jnp.ones(3))


@pytest.mark.parametrize("name", circuits.resolve_check_names(["all"]))
def test_check_mode_passes_the_lib_models(name):
    """Every model --check=all covers, as the command checks it by default (10 coordinates
    per array, a batch of 2, h = 1e-6), within its default tolerance."""
    config = circuits.get_config()
    assert (config.check_batch, config.check_coords, config.check_h) == (2, 10, 1e-6)
    tolerance = config.check_tolerance
    result = circuits.check_model(name, seed=0, batch=2, coords=10, h=1e-6)
    assert result["relative_error"] < tolerance, result


# The command, with the neuron's loss given a backward pass that doubles its gradient.
WRONG_NEURON = """
import sys

import jax
from absl import app

from experiments import circuits, common

right = circuits.check_target


@jax.custom_vjp
def doubled(x):
    return x


doubled.defvjp(lambda x: (x, None), lambda _, g: (2 * g,))


def check_target(name, key, batch):
    fn, params = right(name, key, batch)
    return (lambda p: doubled(fn(p))) if name == "neuron" else fn, params


circuits.check_target = check_target
app.run(circuits.main, argv=sys.argv, flags_parser=common.parse_flags)
"""


def test_check_mode_fails_the_command_on_a_wrong_gradient(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", WRONG_NEURON, "--check=neuron,svm", f"--workdir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert rows["neuron"].endswith("FAILED") and rows["svm"].endswith("ok"), proc.stdout
    assert "FAILED: neuron (relative error > 1e-06)" in proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passed"] is False
    assert summary["checks"]["neuron"]["relative_error"] == pytest.approx(1 / 3)  # |2g-g|/3|g|
    assert not summary["checks"]["neuron"]["passed"] and summary["checks"]["svm"]["passed"]


def test_check_mode_names_an_unknown_model_before_any_file(tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(circuits.UserError, match=r"unknown model 'nope'.*conv2"):
        circuits.run({"workdir": str(workdir), "check": ["nope"]}, verbose=False)
    assert not workdir.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tweak": 0.0}, r"--tweak=0\.0 must be > 0"),
        ({"tries": 0}, r"--tries=0 must be >= 1"),
        ({"check_coords": -1}, r"--check_coords=-1 must be >= 0"),
        ({"check_h": -1e-6, "check_batch": 0}, r"--check_batch=0 must be >= 1; --check_h="),
    ],
)
def test_bad_values_get_a_clear_message_before_any_file(tmp_path, change, message):
    workdir = tmp_path / "run"
    with pytest.raises(circuits.UserError, match=message):
        circuits.run({"workdir": str(workdir), **change}, verbose=False)
    assert not workdir.exists()


def test_chapter_writes_config_and_summary(tmp_path):
    # The workdir argument (a sweep's) wins over the settings' workdir.
    summary = circuits.run({"workdir": "runs/not_here"}, str(tmp_path), verbose=False)
    assert summary["neuron"]["largest_disagreement"] < 1e-6
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["add_multiply"]["f"] == -12.0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {**circuits.get_config().to_dict(), "workdir": str(tmp_path), "check": []}


def test_check_mode_takes_a_whole_config(tmp_path):
    config = circuits.get_config()
    config.update(workdir=str(tmp_path), check=("neuron", "svm"), check_coords=3)
    summary = circuits.run(config.to_dict(), verbose=False)
    assert summary["passed"] and list(summary["checks"]) == ["neuron", "svm"]
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["check"] == ["neuron", "svm"] and written["check_coords"] == 3


def test_unwritable_workdir_gets_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.circuits", f"--workdir={blocker}/sub"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "cannot write to workdir" in proc.stderr.strip().splitlines()[-1]
