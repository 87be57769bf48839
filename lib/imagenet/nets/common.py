"""Pieces the ImageNet-scale model families share: conv + batch norm, pooling helpers.

Conventions of every model in `lib.imagenet.nets`:

- Images are NHWC; `__call__(x, train)` returns float32 logits (compute may run in
  `dtype`, e.g. bfloat16, with float32 parameters kept in `param_dtype`).
- Batch norm normalises with the batch's statistics when `train` is true and with
  the running averages otherwise (`use_running_average=not train`); the running
  averages live in the `batch_stats` collection.
- Data parallelism is `jax.jit` with the batch sharded over a mesh axis: XLA then
  computes the batch-norm mean and variance over the *global* batch (it inserts the
  cross-device reduction itself), so `bn_axis_name` stays None. Set it only when
  the model runs inside `shard_map` (or `pmap`), where each device sees its own
  shard and the statistics must be averaged explicitly over that named axis.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

ModuleDef = Any
Dtype = Any

# He et al. 2015, "Delving deep into rectifiers": variance 2 / fan_out for ReLU nets.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def batch_norm(
    train: bool,
    *,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    axis_name: str | None = None,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> Callable[..., nn.Module]:
    """A BatchNorm constructor for one forward pass (see the module docstring).

    The defaults follow PyTorch's (running-average momentum 0.1, i.e. 0.9 here,
    epsilon 1e-5); families with other published settings pass theirs.
    """
    return functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=momentum,
        epsilon=epsilon,
        axis_name=axis_name,
        dtype=dtype,
        param_dtype=param_dtype,
    )


class ConvBN(nn.Module):
    """Convolution without bias, batch norm, then an activation (None for none).

    The unit Inception (Ioffe & Szegedy 2015) and ResNet stems are built from.
    `padding` is an int for symmetric padding on both axes (PyTorch's convention,
    so spatial sizes and weights line up with the reference models), a pair of
    ints per axis, or a Flax padding string.
    """

    features: int
    kernel_size: tuple[int, int]
    norm: ModuleDef
    strides: tuple[int, int] = (1, 1)
    padding: int | tuple[int, int] | str = 0
    activation: Callable[[jnp.ndarray], jnp.ndarray] | None = nn.relu
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=torch_padding(self.padding),
            use_bias=False,
            kernel_init=he_normal,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
        x = self.norm(name="bn")(x)
        return x if self.activation is None else self.activation(x)


def torch_padding(padding: int | tuple[int, int] | str) -> str | Sequence[tuple[int, int]]:
    """PyTorch-style padding (int or (h, w), applied on both sides) as Flax padding."""
    if isinstance(padding, str):
        return padding
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return ((ph, ph), (pw, pw))


def _adaptive_pool_matrix(size: int, out: int) -> np.ndarray:
    """(out, size) averaging weights of PyTorch's adaptive average pooling.

    Output cell i averages input cells floor(i*size/out) .. ceil((i+1)*size/out) - 1,
    which also repeats cells when `out > size` (small inputs upsample).
    """
    matrix = np.zeros((out, size), np.float32)
    for i in range(out):
        start = (i * size) // out
        end = -((-(i + 1) * size) // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jnp.ndarray, output_size: tuple[int, int]) -> jnp.ndarray:
    """Average-pool NHWC `x` to exactly `output_size` spatial cells, at any input size.

    Lets the classifiers of AlexNet and VGG keep their published input width
    (256*6*6 and 512*7*7) at any image resolution, as torchvision does.
    """
    _, h, w, _ = x.shape
    oh, ow = output_size
    if (h, w) == (oh, ow):
        return x
    rows = jnp.asarray(_adaptive_pool_matrix(h, oh), x.dtype)
    cols = jnp.asarray(_adaptive_pool_matrix(w, ow), x.dtype)
    return jnp.einsum("oh,pw,nhwc->nopc", rows, cols, x)


def max_pool_ceil(x: jnp.ndarray, window: int, stride: int) -> jnp.ndarray:
    """Max pooling that rounds the output size up (PyTorch's `ceil_mode=True`).

    GoogLeNet's reference implementation pools this way (112 -> 56 -> 28 -> 14 -> 7).
    The last window may overhang the bottom/right edge; the overhang counts as -inf.
    As in PyTorch, a window that would start outside the input is dropped.
    """

    def out_size(size: int) -> int:
        n = math.ceil((size - window) / stride) + 1
        return n - 1 if (n - 1) * stride >= size else n

    pads = [(0, max((out_size(s) - 1) * stride + window - s, 0)) for s in x.shape[1:3]]
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


def local_response_norm(
    x: jnp.ndarray,
    size: int = 5,
    k: float = 2.0,
    alpha: float = 1e-4,
    beta: float = 0.75,
    groups: int = 1,
) -> jnp.ndarray:
    """Local response normalisation across channels (Krizhevsky et al. 2012, section 3.3).

    b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2) ** beta, with the paper's
    constants as defaults. Note alpha multiplies the plain sum (PyTorch and Caffe
    divide it by n). With `groups` > 1 the window never crosses a group boundary:
    in the two-GPU network each GPU normalised only its own kernel maps.
    """
    n, h, w, c = x.shape
    grouped = x.reshape(n, h, w, groups, c // groups)
    squares = jnp.square(grouped.astype(jnp.float32))
    window_sum = lax.reduce_window(
        squares,
        0.0,
        lax.add,
        window_dimensions=(1, 1, 1, 1, size),
        window_strides=(1, 1, 1, 1, 1),
        padding=((0, 0), (0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2)),
    )
    scale = (k + alpha * window_sum) ** -beta
    return (grouped * scale.astype(x.dtype)).reshape(n, h, w, c)


def as_logits(x: jnp.ndarray) -> jnp.ndarray:
    """Logits in float32, whatever the compute dtype, so the loss is computed stably."""
    return jnp.asarray(x, jnp.float32)
