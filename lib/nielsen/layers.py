"""The layers of Nielsen's `network3.py` as Flax linen modules.

"Neural Networks and Deep Learning", chapter 6: `ConvPoolLayer`,
`FullyConnectedLayer` and `SoftmaxLayer`, with the book's initialisation and its
form of dropout (inputs dropped in training, weights scaled by 1 - p at test time).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from lib.core import xla_cpu

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "linear": lambda z: z,
    # Rescalings of the sigmoid, for the chapter-6 question whether sigmoid can train as fast
    # as tanh: since tanh(z) = 2 sigmoid(2z) - 1, these take it there one step at a time.
    "sigmoid_2z": lambda z: jax.nn.sigmoid(2 * z),  # steeper, still in (0, 1)
    "sigmoid_sym": lambda z: 2 * jax.nn.sigmoid(z) - 1,  # centred on 0, in (-1, 1); tanh(z/2)
    "sigmoid_rescaled": lambda z: 2 * jax.nn.sigmoid(2 * z) - 1,  # both: tanh(z) itself
}

INITS = ("book", "sqrt_n_in")
POOLS = ("auto", "window", "mask")
CONVS = ("auto", "xla", "patches")


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _normal(std: float) -> nn.initializers.Initializer:
    return nn.initializers.normal(stddev=std)


def weight_std(init: str, n_in: int, n_out: float) -> float:
    """The book's N(0, 1/n_out) weights, or N(0, 1/n_in) (its later suggestion)."""
    if init == "book":
        return float(np.sqrt(1.0 / n_out))
    if init == "sqrt_n_in":
        return float(np.sqrt(1.0 / n_in))
    raise ValueError(f"unknown init '{init}'; choose from {INITS}")


def book_dropout(module: nn.Module, x: jax.Array, rate: float, train: bool) -> jax.Array:
    """Dropout as `network3.py` does it: no rescaling while training, x (1 - p) at test."""
    if rate == 0.0:
        return x
    if not train:
        return x * (1.0 - rate)
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
    return jnp.where(keep, x, 0.0)


def resolve_pool(impl: str) -> str:
    """ "window" is XLA's `reduce_window` max and its `select_and_scatter` gradient;
    "mask" is a reshape max whose gradient is an element-wise mask, the same numbers
    computed about four times faster by XLA's CPU backend. "auto": mask on CPU (unless
    `lib.core.xla_cpu` runs the reference path), window on accelerators."""
    if impl not in POOLS:
        raise ValueError(f"unknown pooling '{impl}'; choose from {', '.join(POOLS)}")
    if impl == "auto":
        return "mask" if xla_cpu.fast_path() else "window"
    return impl


def resolve_conv(impl: str) -> str:
    """ "xla" is XLA's convolution and the convolutions its autodiff makes of the
    gradients; "patches" is the same forward convolution with its gradients written as
    matrix products over shifted copies of the input (`conv_valid`): on XLA's CPU
    backend the kernel gradient of a one-channel input runs about 6 times faster that
    way, and the input gradient of the book's second layer 1.3 to 2.5 times. "auto":
    patches on CPU (unless `lib.core.xla_cpu` runs the reference path), xla on
    accelerators."""
    if impl not in CONVS:
        raise ValueError(f"unknown convolution '{impl}'; choose from {', '.join(CONVS)}")
    if impl == "auto":
        return "patches" if xla_cpu.fast_path() else "xla"
    return impl


def _xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv_valid(x: jax.Array, kernel: jax.Array, impl: str = "auto") -> jax.Array:
    """Valid, stride-1 convolution (cross-correlation, as Theano's `conv2d` with flipped
    filters and as every framework's `conv`) of NHWC `x` with an HWIO `kernel`."""
    if resolve_conv(impl) == "xla":
        return _xla_conv(x, kernel)
    return _patches_conv(x, kernel)


@jax.custom_vjp
def _patches_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _xla_conv(x, kernel)


def _patches_conv_fwd(x, kernel):
    return _xla_conv(x, kernel), (x, kernel)


def _patches_conv_bwd(residuals, g):
    """With y[b,h,w,f] = sum_{i,j,c} x[b,h+i,w+j,c] k[i,j,c,f]:
    dk[i,j,c,f] = sum_{b,h,w} x[b,h+i,w+j,c] g[b,h,w,f], one matrix product of the k*k
    shifted inputs (stacked as rows) with g, where x has one channel (a wide, short
    product XLA's CPU backend does well, unlike its convolution for it); otherwise XLA's own.
    dx[b,y,x,c] = sum_{i,j} z[b,y-i,x-j,i,j,c] with z = g k^T, one matrix product, its k*k
    slices added back at their shifts, a row of the kernel at a time."""
    x, kernel = residuals
    k, _, c, f = kernel.shape
    b, h_out, w_out, _ = g.shape
    if c == 1:
        shifted = jnp.stack(
            [x[:, i : i + h_out, j : j + w_out, 0] for i in range(k) for j in range(k)]
        )
        dk = (shifted.reshape(k * k, -1) @ g.reshape(-1, f)).reshape(k, k, 1, f)
    else:
        dk = jax.vjp(lambda w: _xla_conv(x, w), kernel)[1](g)[0]
    z = (g.reshape(-1, f) @ kernel.reshape(k * k * c, f).T).reshape(b, h_out, w_out, k, k, c)
    dx = 0
    for i in range(k):
        row = 0
        for j in range(k):
            row = row + jnp.pad(z[:, :, :, i, j, :], ((0, 0), (0, 0), (j, k - 1 - j), (0, 0)))
        dx = dx + jnp.pad(row, ((0, 0), (i, k - 1 - i), (0, 0), (0, 0)))
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_patches_conv.defvjp(_patches_conv_fwd, _patches_conv_bwd)


def max_pool(x: jax.Array, size: int, impl: str = "auto") -> jax.Array:
    """Non-overlapping size x size max-pooling of NHWC `x` (a remainder row or column is
    dropped, as `reduce_window` with VALID padding does)."""
    if resolve_pool(impl) == "window":
        return nn.max_pool(x, (size, size), strides=(size, size))
    return _mask_pool(x, size)


def _windows(x: jax.Array, size: int) -> jax.Array:
    b, h, w, c = x.shape
    x = x[:, : h - h % size, : w - w % size]
    return x.reshape(b, h // size, size, w // size, size, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _mask_pool(x: jax.Array, size: int) -> jax.Array:
    return _windows(x, size).max(axis=(2, 4))


def _mask_pool_fwd(x, size):
    pooled = _mask_pool(x, size)
    return pooled, (x, pooled)


def _mask_pool_bwd(size, residuals, g):
    """The gradient goes to the first maximum of each window in row-major order, the
    element `select_and_scatter` picks: ties (common over MNIST's blank background)
    are broken exactly as by the window formulation."""
    x, pooled = residuals
    windows = _windows(x, size)
    taken = jnp.zeros(pooled.shape, bool)
    parts = []
    for i in range(size):
        for j in range(size):
            hit = windows[:, :, i, :, j, :] == pooled
            parts.append(jnp.where(hit & ~taken, g, 0).astype(g.dtype))
            taken = taken | hit
    b, hp, wp, c = pooled.shape
    grad = jnp.stack(parts).reshape(size, size, b, hp, wp, c).transpose(2, 3, 0, 4, 1, 5)
    grad = grad.reshape(b, hp * size, wp * size, c)
    pad = ((0, 0), (0, x.shape[1] - hp * size), (0, x.shape[2] - wp * size), (0, 0))
    return (jnp.pad(grad, pad),)


_mask_pool.defvjp(_mask_pool_fwd, _mask_pool_bwd)


class ConvPool(nn.Module):
    """`ConvPoolLayer`: valid convolution, max-pooling, then activation(pooled + bias).

    The bias is added after pooling, as in the book, so pooling commutes with it.
    """

    features: int
    filter_size: int = 5
    pool_size: int = 2
    activation: str = "sigmoid"
    weight_init: str = "book"
    pool: str = "auto"  # how max-pooling is computed (`resolve_pool`); the result is the same
    conv: str = "auto"  # how the convolution's gradients are computed (`resolve_conv`)
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, p = self.filter_size, self.pool_size
        n_in = x.shape[-1] * k * k
        n_out = self.features * k * k / (p * p)
        std = weight_std(self.weight_init, n_in, n_out)
        kernel = self.param("kernel", _normal(std), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", _normal(1.0), (self.features,))
        dtype = self.dtype or x.dtype
        y = conv_valid(x.astype(dtype), kernel.astype(dtype), self.conv)
        y = max_pool(y, p, self.pool)
        return activation_fn(self.activation)(y + bias.astype(dtype))


class FullyConnected(nn.Module):
    """`FullyConnectedLayer`: activation((1 - p) x . w + b), with the input dropped in training."""

    features: int
    activation: str = "sigmoid"
    dropout: float = 0.0
    weight_init: str = "book"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        std = weight_std(self.weight_init, x.shape[-1], self.features)
        kernel = self.param("kernel", _normal(std), (x.shape[-1], self.features))
        bias = self.param("bias", _normal(1.0), (self.features,))
        dtype = self.dtype or x.dtype
        x = book_dropout(self, x.astype(dtype), self.dropout, train)
        return activation_fn(self.activation)(x @ kernel.astype(dtype) + bias.astype(dtype))


class Softmax(nn.Module):
    """`SoftmaxLayer`, returning the logits (the softmax is applied by the cost).

    Weights and biases start at zero, as in the book.
    """

    features: int = 10
    dropout: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.zeros, (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        dtype = self.dtype or x.dtype
        x = book_dropout(self, x.astype(dtype), self.dropout, train)
        logits = x @ kernel.astype(dtype) + bias.astype(dtype)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))  # bf16 -> f32
