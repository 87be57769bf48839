"""VGG: Simonyan & Zisserman 2014, "Very Deep Convolutional Networks for Large-Scale
Image Recognition" (ICLR 2015).

Stacks of 3x3 convolutions (stride 1, padding 1) between 2x2 max pools, then three
fully connected layers. Configurations A, B, D and E of the paper's table 1 are
VGG-11, -13, -16 and -19. The `_bn` variants put batch norm (Ioffe & Szegedy 2015)
between each convolution and its ReLU; they keep the convolution biases, as
torchvision's `vgg*_bn` do, so the parameter counts equal those models
(the bias is redundant before batch norm but costs only a few thousand parameters).
As in torchvision, the last map is pooled adaptively to 7x7, so the 25088-wide
classifier input holds at any resolution (at 224x224 the pooling is the identity).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from lib.imagenet.nets.common import Dtype, adaptive_avg_pool, as_logits, batch_norm, he_normal

# Convolution widths per stage; every stage ends with a 2x2 max pool (table 1).
VGG11_STAGES = ((64,), (128,), (256, 256), (512, 512), (512, 512))
VGG13_STAGES = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))
VGG16_STAGES = ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3)
VGG19_STAGES = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)


class VGG(nn.Module):
    """VGG with the convolution widths `stages`, optionally with batch norm.

    `bn_axis_name`: see `lib.imagenet.nets.common` (None under jit with a sharded batch).
    """

    stages: Sequence[Sequence[int]]
    num_classes: int = 1000
    batch_norm: bool = False
    hidden: int = 4096
    dropout_rate: float = 0.5
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        conv = functools.partial(
            nn.Conv,
            kernel_size=(3, 3),
            padding=((1, 1), (1, 1)),
            kernel_init=he_normal,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        norm = batch_norm(
            train, axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype
        )
        dense = functools.partial(
            nn.Dense,
            kernel_init=nn.initializers.normal(0.01),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

        x = jnp.asarray(x, self.dtype)
        for s, widths in enumerate(self.stages):
            for i, width in enumerate(widths):
                name = f"conv{s + 1}_{i + 1}"
                x = conv(width, name=name)(x)
                if self.batch_norm:
                    x = norm(name=f"{name}_bn")(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))

        x = adaptive_avg_pool(x, (7, 7))
        x = x.reshape((x.shape[0], -1))
        for i in range(2):
            x = nn.relu(dense(self.hidden, name=f"fc{i + 6}")(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = dense(self.num_classes, name="fc8")(x)
        return as_logits(x)


VGG11 = functools.partial(VGG, stages=VGG11_STAGES)
VGG13 = functools.partial(VGG, stages=VGG13_STAGES)
VGG16 = functools.partial(VGG, stages=VGG16_STAGES)
VGG19 = functools.partial(VGG, stages=VGG19_STAGES)
VGG11BN = functools.partial(VGG, stages=VGG11_STAGES, batch_norm=True)
VGG13BN = functools.partial(VGG, stages=VGG13_STAGES, batch_norm=True)
VGG16BN = functools.partial(VGG, stages=VGG16_STAGES, batch_norm=True)
VGG19BN = functools.partial(VGG, stages=VGG19_STAGES, batch_norm=True)
