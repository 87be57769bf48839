"""The CPU paths of lib.core.xla_cpu: the flags they set, and that the fast path trains the
book's nets to the same parameters as the reference formulation."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from commands import ROOT
from cpu_path_worker import train_params

from lib.core import xla_cpu
from lib.nielsen import layers


def test_configure_adds_the_fast_flags_and_keeps_the_users():
    env = {"XLA_FLAGS": "--xla_foo=1"}
    xla_cpu.configure(env)
    flags = env["XLA_FLAGS"].split()
    assert flags[0] == "--xla_foo=1" and xla_cpu.YNN_OFF in flags
    assert f"{xla_cpu.DEVICE_COUNT}={xla_cpu.cores()}" in flags
    mine = {"XLA_FLAGS": f"{xla_cpu.DEVICE_COUNT}=8"}
    xla_cpu.configure(mine)
    assert mine["XLA_FLAGS"].split() == [f"{xla_cpu.DEVICE_COUNT}=8", xla_cpu.YNN_OFF]
    reference = {xla_cpu.ENV: "reference"}
    xla_cpu.configure(reference)
    assert reference["XLA_FLAGS"] == ""
    with pytest.raises(ValueError, match="choose from fast, reference"):
        xla_cpu.configure({xla_cpu.ENV: "fastest"})


def test_a_child_process_gets_the_users_flags_and_configures_its_own_path():
    """What this process's `configure` added is not handed on: a reference child runs
    XLA's defaults, a fast child adds the same flags again itself."""
    reference = xla_cpu.child_environment("reference")
    assert reference[xla_cpu.ENV] == "reference"
    assert xla_cpu.YNN_OFF in os.environ["XLA_FLAGS"].split()
    assert xla_cpu.YNN_OFF not in reference["XLA_FLAGS"].split()
    fast = xla_cpu.child_environment("fast")
    xla_cpu.configure(fast)
    assert fast["XLA_FLAGS"] == os.environ["XLA_FLAGS"]
    with pytest.raises(ValueError, match="choose from fast, reference"):
        xla_cpu.child_environment("fastest")


@pytest.mark.parametrize("shape", [(3, 24, 24, 5), (2, 9, 7, 3)])
def test_mask_pool_matches_window_pool_and_its_gradient(shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    # Ties, as over MNIST's blank background: whole windows of equal values.
    x = x.at[:, :4, :4, :].set(0.5).at[0, 4:6, 4:6, 0].set(-1.0)
    g = jax.random.normal(jax.random.PRNGKey(1), layers.max_pool(x, 2, "window").shape)

    def grad(impl):
        return jax.grad(lambda x: jnp.sum(layers.max_pool(x, 2, impl) * g))(x)

    np.testing.assert_array_equal(layers.max_pool(x, 2, "mask"), layers.max_pool(x, 2, "window"))
    np.testing.assert_array_equal(grad("mask"), grad("window"))


@functools.cache
def fast_path(rung: str) -> dict:
    """`train_params` of the rung on this process's path (300 steps at most, the
    parameters after step 40 kept too), once for both tests that need them."""
    return train_params(rung, 300, snapshots=(40,))


@pytest.mark.parametrize("rung", ["relu", "dropout"])
def test_mask_pooling_trains_exactly_as_window_pooling(rung):
    """The project's own change of formulation, in one process: bit for bit, 300 steps
    of the dropout rung, the relu rung's epoch of 200."""
    assert layers.resolve_pool("auto") == "mask"
    mask = fast_path(rung)
    window = train_params(rung, 300, pool="window")
    for name, value in window.items():
        np.testing.assert_array_equal(mask[name], value, err_msg=name)


def test_fast_path_trains_as_the_reference_path(tmp_path):
    """The sigmoid conv2 rung and the ReLU rung for an epoch of 2,000 images (200 steps),
    the dropout rung for 300 (expanded set, dropout masks): this process runs the fast
    path, a second process the reference path (XLA's default CPU kernels and window
    max-pooling).

    The two paths' convolution kernels sum in different orders, so parameters first
    differ in the last bit (about 3e-8 after 10 steps). The sigmoid net keeps it there.
    The ReLU nets are piecewise linear: once a last-bit difference moves a value across
    a kink (a ReLU's zero, the larger of two nearly equal values in a max-pool window)
    the gradient takes another route and the difference jumps (measured for relu: 1e-7
    at step 40, 8e-6 at 60, 3e-3 at 100). So for them the test asks for float32
    agreement through step 40, and at the end the two paths no further apart than the
    fast path is from itself with every initial weight moved by one unit in the last
    place (times 3, for the spread of such distances): what float32 rounding alone does.
    """
    assert xla_cpu.path() == "fast" and layers.resolve_pool("auto") == "mask"
    assert layers.resolve_conv("auto") == "patches"
    out = tmp_path / "reference.npz"
    env = xla_cpu.child_environment("reference")
    worker = str(ROOT / "tests" / "cpu_path_worker.py")
    done = subprocess.run(
        [sys.executable, worker, str(out), "conv2,relu,dropout", "300", "40"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    reference = np.load(out)
    fast = {rung: fast_path(rung) for rung in ("conv2", "relu", "dropout")}

    def kept(params: dict, prefix: str = "") -> dict:  # final parameters: paths start "["
        return {n[len(prefix) :]: v for n, v in params.items() if n.startswith(prefix + "[")}

    for rung, prefix in (("conv2", ""), ("relu", "at40/"), ("dropout", "at40/")):
        assert len(kept(fast[rung], prefix)) >= 4, list(fast[rung])
        for name, value in kept(fast[rung], prefix).items():
            np.testing.assert_allclose(
                value, reference[rung + prefix + name], rtol=2e-4, atol=2e-5, err_msg=rung + name
            )
    for rung in ("relu", "dropout"):
        final, names = kept(fast[rung]), list(kept(fast[rung]))
        moved = np.sqrt(sum(np.sum((final[n] - fast[rung]["init/" + n]) ** 2) for n in names))
        apart = np.sqrt(sum(np.sum((final[n] - reference[rung + n]) ** 2) for n in names))
        nudged = train_params(rung, 300, nudge=True)
        rounding = np.sqrt(sum(np.sum((final[n] - nudged[n]) ** 2) for n in names))
        assert moved > 1.0, f"{rung} hardly trained"
        assert 0 < rounding < moved
        assert apart < 3 * rounding, f"{rung}: paths {apart:.3g} apart, rounding {rounding:.3g}"


@pytest.mark.parametrize("shape", [(3, 28, 28, 1, 20), (4, 12, 12, 20, 40), (2, 9, 7, 3, 2)])
def test_patches_convolution_matches_xla_and_its_gradients(shape):
    """The patches formulation is XLA's forward convolution with its two gradients written
    as matrix products: both gradients agree with XLA's to float32 rounding, for the
    one-channel first layer (its own kernel gradient), the second layer and a ragged shape."""
    b, h, w, c, f = shape
    x = jax.random.normal(jax.random.PRNGKey(0), (b, h, w, c))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (5, 5, c, f))
    g = jax.random.normal(jax.random.PRNGKey(2), (b, h - 4, w - 4, f))

    def grads(impl):
        y, vjp = jax.vjp(lambda x, k: layers.conv_valid(x, k, impl), x, kernel)
        return (y, *vjp(g))

    for ours, xla in zip(grads("patches"), grads("xla"), strict=True):
        scale = float(jnp.abs(xla).max())
        np.testing.assert_allclose(ours, xla, rtol=0, atol=2e-6 * scale)
    with pytest.raises(ValueError, match="choose from auto, xla, patches"):
        layers.resolve_conv("im2col")


@pytest.mark.parametrize("cpu_path", ["fast", "reference"])
def test_every_auto_convolution_follows_the_cpu_path(monkeypatch, cpu_path):
    """The book's nets and CapsNet pick their convolution gradients the same way: the
    project's own (a custom VJP) on the fast path, XLA's on the reference path."""
    from lib.capsules import layers as capsule_layers
    from lib.nielsen import layers as book_layers

    monkeypatch.setenv(xla_cpu.ENV, cpu_path)
    x, k = jnp.ones((1, 12, 12, 2)), jnp.ones((5, 5, 2, 3))
    for conv in (book_layers.conv_valid, capsule_layers.conv):
        traced = jax.make_jaxpr(lambda a, b, conv=conv: conv(a, b))(x, k)  # a new trace
        custom = "custom_vjp" in str(traced)
        assert custom == (cpu_path == "fast"), conv.__module__
