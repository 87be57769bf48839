"""The pieces of a capsule network, after Sabour, Frosst and Hinton, "Dynamic Routing
Between Capsules" (NIPS 2017).

A capsule is a group of neurons whose activity vector stands for an entity: its length
is the probability that the entity is present, its direction the entity's pose. `squash`
(the paper's equation 1) maps a capsule's total input to such a vector, `routing` is
Procedure 1 (routing by agreement), `margin_loss` equation 4, `reconstruction_error` the
decoder's sum of squared differences. `PrimaryCaps` is the convolutional capsule layer,
`DigitCaps` the fully connected one with a transformation matrix per pair of capsules.

Shapes: a batch of capsules is (B, N, D): N capsules of D dimensions each. Prediction
vectors u_hat are (B, N_in, N_out, D_out): what each input capsule i predicts for each
output capsule j.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from lib.core import xla_cpu

# Equation 4's constants.
M_PLUS, M_MINUS, DOWN_WEIGHT = 0.9, 0.1, 0.5
# The decoder's sum of squared errors is scaled down so the margin loss dominates.
RECONSTRUCTION_WEIGHT = 0.0005

_TINY = 1e-12  # keeps the norm's gradient finite at the zero vector


def squash(s: jax.Array, axis: int = -1) -> jax.Array:
    """Equation 1: v = |s|^2 / (1 + |s|^2) * s / |s|, along `axis`.

    The direction of s is kept and its length |s| becomes |s|^2 / (1 + |s|^2), in [0, 1):
    short vectors shrink to almost nothing, long ones to just under 1.
    """
    squared = jnp.sum(jnp.square(s), axis=axis, keepdims=True)
    return s * (jnp.sqrt(squared + _TINY) / (1.0 + squared))


def lengths(v: jax.Array) -> jax.Array:
    """The capsules' lengths (their probabilities): the norm along the last axis."""
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=-1) + _TINY)


def routing(u_hat: jax.Array, iterations: int) -> tuple[jax.Array, jax.Array]:
    """Procedure 1, routing by agreement: the output capsules v (B, N_out, D) and the
    coupling coefficients c (B, N_in, N_out) of the last iteration, for prediction
    vectors `u_hat` (B, N_in, N_out, D).

    The logits b_ij start at zero; each iteration takes c_i = softmax over the output
    capsules of b_i, s_j = sum_i c_ij u_hat_j|i, v_j = squash(s_j), and adds the
    agreement u_hat_j|i . v_j to b_ij. With one iteration c is 1 / N_out everywhere and
    s_j is the plain sum of the predictions over i divided by N_out. `iterations` is a
    Python int (the number of iterations is static).
    """
    if iterations < 1:
        raise ValueError(f"routing needs at least one iteration, got {iterations}")
    n_out = u_hat.shape[2]
    # All logits zero: the softmax is uniform, written as such (a softmax of a constant
    # would be folded at compile time, slowly, for large batches).
    c = jnp.full(u_hat.shape[:3], 1.0 / n_out, u_hat.dtype)
    v = squash(jnp.sum(u_hat, axis=1) / n_out)
    logits = None
    for _ in range(iterations - 1):
        agreement = jnp.einsum("bijd,bjd->bij", u_hat, v)
        logits = agreement if logits is None else logits + agreement
        c = jax.nn.softmax(logits, axis=2)
        v = squash(jnp.einsum("bij,bijd->bjd", c, u_hat))
    return v, c


def margin_loss(
    v_lengths: jax.Array,
    labels: jax.Array,
    m_plus: float = M_PLUS,
    m_minus: float = M_MINUS,
    down_weight: float = DOWN_WEIGHT,
) -> jax.Array:
    """Equation 4, per example (B,): sum over classes k of
    T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2, where T_k is 1
    for the true class; `v_lengths` (B, K), `labels` (B,) ints."""
    present = jax.nn.one_hot(labels, v_lengths.shape[-1], dtype=v_lengths.dtype)
    missed = jnp.square(jnp.maximum(0.0, m_plus - v_lengths))
    spurious = jnp.square(jnp.maximum(0.0, v_lengths - m_minus))
    return jnp.sum(present * missed + down_weight * (1.0 - present) * spurious, axis=-1)


def reconstruction_error(reconstruction: jax.Array, images: jax.Array) -> jax.Array:
    """The decoder's sum of squared differences to the pixels, per example (B,)."""
    flat = images.reshape(images.shape[0], -1)
    return jnp.sum(jnp.square(reconstruction.reshape(flat.shape) - flat), axis=-1)


def mask(v: jax.Array, labels: jax.Array) -> jax.Array:
    """The capsules (B, K, D) with all but the one of class labels[b] set to zero, as the
    decoder sees them: (B, K * D)."""
    keep = jax.nn.one_hot(labels, v.shape[1], dtype=v.dtype)
    return (v * keep[:, :, None]).reshape(v.shape[0], -1)


CONVS = ("auto", "xla", "patches")


def conv(x: jax.Array, kernel: jax.Array, stride: int = 1, impl: str = "auto") -> jax.Array:
    """Valid convolution (cross-correlation) of NHWC `x` with an HWIO `kernel`, `stride` in
    both directions. "xla" is XLA's convolution and the ones its autodiff makes of the
    gradients; "patches" computes the same forward convolution, but its gradients as
    matrix products over the k*k strided slices of the input: on XLA's CPU backend the
    gradients of PrimaryCaps' 9x9 stride-2 convolution of 256 channels take about 20
    times longer as convolutions. "auto": patches on CPU (unless `lib.core.xla_cpu` runs
    the reference path), xla elsewhere."""
    if impl not in CONVS:
        raise ValueError(f"unknown convolution '{impl}'; choose from {', '.join(CONVS)}")
    if impl == "xla" or (impl == "auto" and not xla_cpu.fast_path()):
        return _xla_conv(x, kernel, stride)
    return _patches_conv(x, kernel, stride)


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _matmul_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The convolution as one matrix product: the k*k strided slices of x side by side,
    (B * H' * W', k*k*C), times the kernel as a (k*k*C, F) matrix."""
    kh, kw, c, f = kernel.shape
    h_out, w_out = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    span_h, span_w = stride * (h_out - 1) + 1, stride * (w_out - 1) + 1
    slices = [
        x[:, i : i + span_h : stride, j : j + span_w : stride, :]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.stack(slices, 3).reshape(x.shape[0], h_out, w_out, kh * kw * c)
    return patches @ kernel.reshape(kh * kw * c, f)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _patches_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return _xla_conv(x, kernel, stride)


def _patches_conv_fwd(x, kernel, stride):
    return _xla_conv(x, kernel, stride), (x, kernel)


def _patches_conv_bwd(stride, residuals, g):
    x, kernel = residuals
    return jax.vjp(lambda a, k: _matmul_conv(a, k, stride), x, kernel)[1](g)


_patches_conv.defvjp(_patches_conv_fwd, _patches_conv_bwd)


class Conv(nn.Module):
    """A square convolution with bias, as `flax.linen.Conv` (same parameter names and
    initialisation), through `conv`: 'VALID' padding, or 'SAME' (stride 1 only)."""

    features: int
    kernel: int
    stride: int = 1
    padding: str = "VALID"
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (self.kernel, self.kernel, x.shape[-1], self.features),
            x.dtype,
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), x.dtype)
        if self.padding == "SAME":
            if self.stride != 1:
                raise ValueError("'SAME' padding is for stride 1 only")
            low = (self.kernel - 1) // 2
            high = self.kernel - 1 - low
            x = jnp.pad(x, ((0, 0), (low, high), (low, high), (0, 0)))
        return conv(x, kernel, self.stride, self.impl) + bias


class PrimaryCaps(nn.Module):
    """Convolutional capsules: `channels` maps of `dim`-D capsules, made by one convolution
    with channels * dim filters (`kernel` square, `stride`, no padding) and squashed. The
    paper's: 32 channels of 8-D capsules, 9x9, stride 2, on Conv1's 20x20x256 (6x6x32 =
    1,152 capsules). Returns (B, H' * W' * channels, dim)."""

    channels: int = 32
    dim: int = 8
    kernel: int = 9
    stride: int = 2
    impl: str = "auto"  # of `conv`

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = Conv(self.channels * self.dim, self.kernel, self.stride, impl=self.impl, name="conv")(x)
        b, h, w, _ = y.shape
        return squash(y.reshape(b, h * w * self.channels, self.dim))


class DigitCaps(nn.Module):
    """Fully connected capsules: `num_capsules` of `dim` dimensions, each input capsule i
    predicting each output j as u_hat_j|i = W_ij u_i (a `dim` x D_in matrix per pair),
    routed by `routing`. Returns (v (B, num_capsules, dim), c (B, N_in, num_capsules))."""

    num_capsules: int = 10
    dim: int = 16
    routing_iterations: int = 3
    init_std: float = 0.01

    @nn.compact
    def __call__(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
        _, n_in, d_in = u.shape
        w = self.param(
            "w",
            nn.initializers.normal(self.init_std),
            (n_in, d_in, self.num_capsules * self.dim),
            u.dtype,
        )
        u_hat = predictions(u, w).reshape(-1, n_in, self.num_capsules, self.dim)
        self.sow("intermediates", "u_hat", u_hat)
        return routing(u_hat, self.routing_iterations)


def predictions(u: jax.Array, w: jax.Array) -> jax.Array:
    """u_hat[b, i] = u[b, i] @ w[i]: each input capsule's (B, N_in, D_in) predictions for
    all output capsules at once, `w` (N_in, D_in, N_out * D_out) -> (B, N_in, N_out * D_out).
    One batched matrix product over the input capsules: no (B, N_in, D_in, ...) copy of
    the weights is ever made."""
    return jnp.einsum("bid,ide->bie", u, w)


def perturbed(capsule: jax.Array, deltas: jax.Array) -> jax.Array:
    """Section 5.1, Figure 4: the capsule (D,) with one dimension at a time moved by each
    of `deltas` (M,): (D, M, D), entry [d, m] the capsule with deltas[m] added to
    dimension d."""
    dim = capsule.shape[-1]
    steps = jnp.eye(dim, dtype=capsule.dtype)[:, None, :] * deltas[None, :, None]
    return capsule + steps


FIGURE4_DELTAS = tuple(round(-0.25 + 0.05 * k, 2) for k in range(11))  # -0.25 .. 0.25
