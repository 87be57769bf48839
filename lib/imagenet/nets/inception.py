"""Inception networks: GoogLeNet (Inception v1) and Inception v3.

- GoogLeNet: Szegedy et al. 2014, "Going Deeper with Convolutions" (CVPR 2015).
  Nine Inception modules of parallel 1x1, 3x3, "5x5" and pooled branches (table 1),
  with optional auxiliary classifiers on modules 4a and 4d (section 5). As in
  torchvision's `googlenet`, every convolution is followed by batch norm
  (which postdates the paper), max pools round their output size up, the
  auxiliary heads pool adaptively to 4x4, dropout before the classifier is 0.2 (the
  paper's is 0.4), and the "5x5" branch uses a 3x3 kernel:
  torchvision's implementation has that kernel size, its published parameter counts
  (6,624,904 without the auxiliary heads, 13,004,888 with them) are for it, and so
  it is the default here; `wide_kernel=5` gives the paper's 5x5 convolutions.
- Inception v3: Szegedy, Vanhoucke, Ioffe, Shlens & Wojna 2015, "Rethinking the
  Inception Architecture for Computer Vision" (CVPR 2016): factorised 5x5 -> two 3x3
  (module A), n x n -> 1xn + nx1 (module C, n=7), expanded 3x1/1x3 outputs
  (module E), grid reductions (B, D), and one auxiliary classifier on the 17x17 grid,
  which a 299x299 input gives; the classifier refuses a smaller grid, so training with it
  needs inputs of at least 299x299 (without it, 75x75).
  Layer widths as torchvision's `inception_v3`: 27,161,264 parameters with the
  auxiliary classifier (torchvision's default, and the count it publishes),
  23,834,568 without.

Auxiliary heads run only in training. `__call__(x, train)` returns the logits when
`train` is false or the heads are off, and the tuple `(logits, *aux_logits)` (GoogLeNet:
`(logits, aux_4a, aux_4d)`; Inception v3: `(logits, aux)`) when training with them.
`init` creates the heads' parameters in either mode, so `init(train=False)` and
`init(train=True)` give the same tree and a trained checkpoint restores into a model
initialised for evaluation; evaluation ignores the heads.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from lib.imagenet.nets.common import (
    ConvBN,
    Dtype,
    ModuleDef,
    adaptive_avg_pool,
    as_logits,
    batch_norm,
    max_pool_ceil,
)


def _aux_input(x: jnp.ndarray, train: bool, grid: int) -> jnp.ndarray:
    """What an auxiliary head reads: the feature map in training. Outside training a head
    runs only inside `init`, on a blank map of the `grid` x `grid` size it was designed for
    (its parameters' shapes depend on the channels alone), so its parameters exist however
    the model was initialised, even at inputs too small for the head."""
    return x if train else jnp.zeros((1, grid, grid, x.shape[-1]), x.dtype)


# ---------------------------------------------------------------------------------------
# GoogLeNet


class InceptionV1Block(nn.Module):
    """The Inception module of figure 2(b): four branches concatenated on channels.

    `widths` = (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), table 1's columns.
    """

    widths: tuple[int, int, int, int, int, int]
    conv: ModuleDef
    wide_kernel: int = 3

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c1, r3, c3, r5, c5, pool_proj = self.widths
        k, p = self.wide_kernel, self.wide_kernel // 2
        b1 = self.conv(c1, (1, 1), name="b1x1")(x)
        b3 = self.conv(r3, (1, 1), name="b3x3_reduce")(x)
        b3 = self.conv(c3, (3, 3), padding=1, name="b3x3")(b3)
        b5 = self.conv(r5, (1, 1), name="b5x5_reduce")(x)
        b5 = self.conv(c5, (k, k), padding=p, name="b5x5")(b5)
        bp = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        bp = self.conv(pool_proj, (1, 1), name="pool_proj")(bp)
        return jnp.concatenate([b1, b3, b5, bp], axis=-1)


class GoogLeNetAux(nn.Module):
    """Auxiliary classifier: pool to 4x4, 1x1 conv (128), FC 1024, dropout 0.7, FC."""

    num_classes: int
    conv: ModuleDef
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = adaptive_avg_pool(x, (4, 4))
        x = self.conv(128, (1, 1), name="conv")(x)
        x = x.reshape((x.shape[0], -1))
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.relu(dense(1024, name="fc1")(x))
        x = nn.Dropout(0.7, deterministic=not train)(x)
        return as_logits(dense(self.num_classes, name="fc2")(x))


GOOGLENET_BLOCKS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    """GoogLeNet (table 1 of Szegedy et al. 2014), batch-normalised as torchvision's.

    `bn_axis_name`: see `lib.imagenet.nets.common` (None under jit with a sharded batch).
    """

    num_classes: int = 1000
    aux_logits: bool = False
    wide_kernel: int = 3
    dropout_rate: float = 0.2
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, train: bool = False
    ) -> jnp.ndarray | tuple[jnp.ndarray, ...]:
        norm = batch_norm(
            train,
            epsilon=1e-3,
            axis_name=self.bn_axis_name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        conv = functools.partial(ConvBN, norm=norm, dtype=self.dtype, param_dtype=self.param_dtype)
        block = functools.partial(InceptionV1Block, conv=conv, wide_kernel=self.wide_kernel)

        x = jnp.asarray(x, self.dtype)
        x = conv(64, (7, 7), strides=(2, 2), padding=3, name="conv1")(x)
        x = max_pool_ceil(x, 3, 2)
        x = conv(64, (1, 1), name="conv2_reduce")(x)
        x = conv(192, (3, 3), padding=1, name="conv2")(x)
        x = max_pool_ceil(x, 3, 2)
        aux = []
        for name, widths in GOOGLENET_BLOCKS.items():
            if name in ("4a", "5a"):
                x = max_pool_ceil(x, 3, 2) if name == "4a" else max_pool_ceil(x, 2, 2)
            x = block(widths, name=f"inception{name}")(x)
            if self.aux_logits and (train or self.is_initializing()) and name in ("4a", "4d"):
                head = GoogLeNetAux(
                    self.num_classes, conv, self.dtype, self.param_dtype, name=f"aux_{name}"
                )
                logits = head(_aux_input(x, train, grid=14), train)  # 14x14 at 224x224
                if train:
                    aux.append(logits)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
        return (as_logits(x), *aux) if aux else as_logits(x)


# ---------------------------------------------------------------------------------------
# Inception v3


def _avg_pool_3x3(x: jnp.ndarray) -> jnp.ndarray:
    # Zero padding counts in the average, as in torchvision's reference.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_reduce(x: jnp.ndarray) -> jnp.ndarray:
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    """35x35 module: the 5x5 factorised into 3x3 + 3x3 (figure 5)."""

    pool_features: int
    conv: ModuleDef

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = self.conv
        b1 = conv(64, (1, 1), name="b1x1")(x)
        b5 = conv(48, (1, 1), name="b5x5_1")(x)
        b5 = conv(64, (5, 5), padding=2, name="b5x5_2")(b5)
        b3 = conv(64, (1, 1), name="b3x3dbl_1")(x)
        b3 = conv(96, (3, 3), padding=1, name="b3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), padding=1, name="b3x3dbl_3")(b3)
        bp = conv(self.pool_features, (1, 1), name="pool_proj")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Grid reduction 35x35 -> 17x17: strided convolutions beside a max pool (figure 10)."""

    conv: ModuleDef

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = self.conv
        b3 = conv(384, (3, 3), strides=(2, 2), name="b3x3")(x)
        bd = conv(64, (1, 1), name="b3x3dbl_1")(x)
        bd = conv(96, (3, 3), padding=1, name="b3x3dbl_2")(bd)
        bd = conv(96, (3, 3), strides=(2, 2), name="b3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_reduce(x)], axis=-1)


class InceptionC(nn.Module):
    """17x17 module: 7x7 factorised into 1x7 and 7x1 (figure 6), `channels_7x7` wide."""

    channels_7x7: int
    conv: ModuleDef

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv, c7 = self.conv, self.channels_7x7
        b1 = conv(192, (1, 1), name="b1x1")(x)
        b7 = conv(c7, (1, 1), name="b7x7_1")(x)
        b7 = conv(c7, (1, 7), padding=(0, 3), name="b7x7_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="b7x7_3")(b7)
        bd = conv(c7, (1, 1), name="b7x7dbl_1")(x)
        bd = conv(c7, (7, 1), padding=(3, 0), name="b7x7dbl_2")(bd)
        bd = conv(c7, (1, 7), padding=(0, 3), name="b7x7dbl_3")(bd)
        bd = conv(c7, (7, 1), padding=(3, 0), name="b7x7dbl_4")(bd)
        bd = conv(192, (1, 7), padding=(0, 3), name="b7x7dbl_5")(bd)
        bp = conv(192, (1, 1), name="pool_proj")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Grid reduction 17x17 -> 8x8."""

    conv: ModuleDef

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = self.conv
        b3 = conv(192, (1, 1), name="b3x3_1")(x)
        b3 = conv(320, (3, 3), strides=(2, 2), name="b3x3_2")(b3)
        b7 = conv(192, (1, 1), name="b7x7x3_1")(x)
        b7 = conv(192, (1, 7), padding=(0, 3), name="b7x7x3_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="b7x7x3_3")(b7)
        b7 = conv(192, (3, 3), strides=(2, 2), name="b7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_reduce(x)], axis=-1)


class InceptionE(nn.Module):
    """8x8 module with expanded outputs: parallel 1x3 and 3x1 (figure 7)."""

    conv: ModuleDef

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = self.conv
        b1 = conv(320, (1, 1), name="b1x1")(x)
        b3 = conv(384, (1, 1), name="b3x3_1")(x)
        b3 = jnp.concatenate(
            [
                conv(384, (1, 3), padding=(0, 1), name="b3x3_2a")(b3),
                conv(384, (3, 1), padding=(1, 0), name="b3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = conv(448, (1, 1), name="b3x3dbl_1")(x)
        bd = conv(384, (3, 3), padding=1, name="b3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                conv(384, (1, 3), padding=(0, 1), name="b3x3dbl_3a")(bd),
                conv(384, (3, 1), padding=(1, 0), name="b3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        bp = conv(192, (1, 1), name="pool_proj")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


# The smallest grid Inception v3's auxiliary classifier takes: its 5x5/3 average pool
# leaves 5x5 of 17x17, all its unpadded 5x5 convolution needs; a smaller grid would leave
# an empty map, whose mean is NaN.
AUX_GRID = 17


class InceptionV3Aux(nn.Module):
    """Auxiliary classifier on the 17x17 grid: 5x5/3 average pool, 1x1 (128), 5x5 (768), FC.

    Raises ValueError for a grid under AUX_GRID (an input under 299x299).
    """

    num_classes: int
    conv: ModuleDef
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if min(x.shape[1:3]) < AUX_GRID:
            raise ValueError(
                f"Inception v3's auxiliary classifier needs a {AUX_GRID}x{AUX_GRID} grid, "
                f"got {x.shape[1]}x{x.shape[2]}: train at 299x299 or more, or without it "
                "(inception_v3_noaux)"
            )
        x = nn.avg_pool(x, (5, 5), strides=(3, 3))
        x = self.conv(128, (1, 1), name="conv0")(x)
        x = self.conv(768, (5, 5), name="conv1")(x)
        x = jnp.mean(x, axis=(1, 2))
        dense = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)
        return as_logits(dense(x))


class InceptionV3(nn.Module):
    """Inception v3 (table 1 of Szegedy et al. 2015) at torchvision's layer widths.

    Smallest input: 75x75, and 299x299 to train with the auxiliary head (AUX_GRID).
    `bn_axis_name`: see `lib.imagenet.nets.common` (None under jit with a sharded batch).
    """

    num_classes: int = 1000
    aux_logits: bool = True
    dropout_rate: float = 0.5
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    channels_7x7: Sequence[int] = (128, 160, 160, 192)

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, train: bool = False
    ) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray]:
        norm = batch_norm(
            train,
            epsilon=1e-3,
            axis_name=self.bn_axis_name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        conv = functools.partial(ConvBN, norm=norm, dtype=self.dtype, param_dtype=self.param_dtype)

        x = jnp.asarray(x, self.dtype)
        x = conv(32, (3, 3), strides=(2, 2), name="conv1a_3x3")(x)
        x = conv(32, (3, 3), name="conv2a_3x3")(x)
        x = conv(64, (3, 3), padding=1, name="conv2b_3x3")(x)
        x = _max_pool_reduce(x)
        x = conv(80, (1, 1), name="conv3b_1x1")(x)
        x = conv(192, (3, 3), name="conv4a_3x3")(x)
        x = _max_pool_reduce(x)
        for i, pool_features in enumerate((32, 64, 64)):
            x = InceptionA(pool_features, conv, name=f"mixed5{'bcd'[i]}")(x)
        x = InceptionB(conv, name="mixed6a")(x)
        for i, c7 in enumerate(self.channels_7x7):
            x = InceptionC(c7, conv, name=f"mixed6{'bcde'[i]}")(x)
        aux = None
        if self.aux_logits and (train or self.is_initializing()):
            head = InceptionV3Aux(self.num_classes, conv, self.dtype, self.param_dtype, name="aux")
            logits = head(_aux_input(x, train, grid=AUX_GRID))  # 17x17 at 299x299
            aux = logits if train else None
        x = InceptionD(conv, name="mixed7a")(x)
        x = InceptionE(conv, name="mixed7b")(x)
        x = InceptionE(conv, name="mixed7c")(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
        return as_logits(x) if aux is None else (as_logits(x), aux)


GoogLeNetWithAux = functools.partial(GoogLeNet, aux_logits=True)
InceptionV3NoAux = functools.partial(InceptionV3, aux_logits=False)
