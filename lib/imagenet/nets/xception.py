"""Xception: Chollet 2016, "Xception: Deep Learning with Depthwise Separable
Convolutions" (CVPR 2017).

Inception modules replaced by depthwise separable convolutions (a per-channel 3x3
followed by a 1x1 across channels, with no non-linearity between them): 36 convolutional
layers in 14 modules, the entry flow, the middle flow repeated eight times and the exit
flow (figure 5). All modules but the first (two plain convolutions) and the last (two
separable ones) have a residual connection: 12 residual blocks (`XceptionBlock`). Layer
sizes, "same" padding and batch-norm settings (momentum 0.99, epsilon 1e-3) as Keras
Applications' `Xception`.

Parameter count: Keras reports 22,910,480, which includes each batch norm's moving
mean and variance (54,528 non-trainable values). Here those are the `batch_stats`
collection, so the same total is `params` (22,855,952) + `batch_stats`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from lib.imagenet.nets.common import Dtype, ModuleDef, as_logits, batch_norm, he_normal


class SeparableConv(nn.Module):
    """Depthwise 3x3 (depth multiplier 1) then pointwise 1x1, both without bias."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = functools.partial(
            nn.Conv,
            use_bias=False,
            padding="SAME",
            kernel_init=he_normal,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = conv(x.shape[-1], (3, 3), feature_group_count=x.shape[-1], name="depthwise")(x)
        return conv(self.features, (1, 1), name="pointwise")(x)


class XceptionBlock(nn.Module):
    """Separable convolutions (each with batch norm) around a residual connection.

    `widths` are the separable convolutions' outputs. With `downsample`, a 3x3/2 max
    pool ends the block and the shortcut is a strided 1x1 convolution with batch norm.
    `relu_first`: the entry flow's first block starts without a ReLU (its input was
    just activated); every other block starts with one.
    """

    widths: tuple[int, ...]
    norm: ModuleDef
    downsample: bool
    relu_first: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        shortcut = x
        if self.downsample:
            shortcut = nn.Conv(
                self.widths[-1],
                (1, 1),
                strides=(2, 2),
                use_bias=False,
                kernel_init=he_normal,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="shortcut",
            )(x)
            shortcut = self.norm(name="shortcut_bn")(shortcut)
        y = x
        for i, width in enumerate(self.widths):
            if i > 0 or self.relu_first:
                y = nn.relu(y)
            y = SeparableConv(width, self.dtype, self.param_dtype, name=f"sepconv{i + 1}")(y)
            y = self.norm(name=f"sepconv{i + 1}_bn")(y)
        if self.downsample:
            y = nn.max_pool(y, (3, 3), strides=(2, 2), padding="SAME")
        return y + shortcut


class Xception(nn.Module):
    """Xception (figure 5 of Chollet 2016). Smallest input: 71x71.

    `bn_axis_name`: see `lib.imagenet.nets.common` (None under jit with a sharded batch).
    """

    num_classes: int = 1000
    middle_blocks: int = 8
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        norm = batch_norm(
            train,
            momentum=0.99,
            epsilon=1e-3,
            axis_name=self.bn_axis_name,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        block = functools.partial(
            XceptionBlock, norm=norm, dtype=self.dtype, param_dtype=self.param_dtype
        )
        conv = functools.partial(
            nn.Conv,
            use_bias=False,
            padding="VALID",
            kernel_init=he_normal,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

        x = jnp.asarray(x, self.dtype)
        # Entry flow.
        x = nn.relu(norm(name="conv1_bn")(conv(32, (3, 3), strides=(2, 2), name="conv1")(x)))
        x = nn.relu(norm(name="conv2_bn")(conv(64, (3, 3), name="conv2")(x)))
        x = block((128, 128), downsample=True, relu_first=False, name="entry1")(x)
        x = block((256, 256), downsample=True, name="entry2")(x)
        x = block((728, 728), downsample=True, name="entry3")(x)
        # Middle flow.
        for i in range(self.middle_blocks):
            x = block((728, 728, 728), downsample=False, name=f"middle{i + 1}")(x)
        # Exit flow.
        x = block((728, 1024), downsample=True, name="exit1")(x)
        for i, width in enumerate((1536, 2048)):
            name = f"exit_sepconv{i + 1}"
            x = SeparableConv(width, self.dtype, self.param_dtype, name=name)(x)
            x = nn.relu(norm(name=f"{name}_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
        return as_logits(x)
