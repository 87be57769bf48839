"""ResNet v1.5: He, Zhang, Ren & Sun 2015, "Deep Residual Learning for Image
Recognition" (CVPR 2016), with the downsampling stride on the 3x3 convolution of the
bottleneck block instead of the first 1x1 (the "v1.5" of torchvision and NVIDIA's
reference; the 1x1 with stride 2 in the paper discards three quarters of its input).

ResNet-18/34 use the basic block (two 3x3 convolutions), ResNet-50/101/152 the
bottleneck block (1x1 reduce, 3x3, 1x1 expand by 4). Shortcuts are identities, or
1x1 convolutions with batch norm where the shape changes (option B of section 3.3).
Parameter counts equal torchvision's `resnet*`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from lib.imagenet.nets.common import ConvBN, Dtype, ModuleDef, as_logits, batch_norm, he_normal


class BasicBlock(nn.Module):
    """Two 3x3 convolutions around an identity or projection shortcut (figure 5, left)."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        y = self.conv(
            self.features, (3, 3), (self.strides, self.strides), padding=((1, 1), (1, 1))
        )(x)
        y = nn.relu(self.norm()(y))
        y = self.conv(self.features, (3, 3), padding=((1, 1), (1, 1)))(y)
        # The block starts as the identity (Goyal et al. 2017): last scale zero.
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        return nn.relu(y + _shortcut(x, self.features, self.strides, self.conv, self.norm))


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride: v1.5), 1x1 expand by 4 (figure 5, right)."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        y = nn.relu(self.norm()(self.conv(self.features, (1, 1))(x)))
        y = self.conv(
            self.features, (3, 3), (self.strides, self.strides), padding=((1, 1), (1, 1))
        )(y)
        y = nn.relu(self.norm()(y))
        y = self.conv(self.features * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        return nn.relu(y + _shortcut(x, self.features * 4, self.strides, self.conv, self.norm))


def _shortcut(
    x: jnp.ndarray, features: int, strides: int, conv: ModuleDef, norm: ModuleDef
) -> jnp.ndarray:
    if x.shape[-1] == features and strides == 1:
        return x
    return norm(name="proj_bn")(conv(features, (1, 1), (strides, strides), name="proj")(x))


class ResNet(nn.Module):
    """ResNet with `stage_sizes` blocks per stage (64, 128, 256, 512 base widths).

    `bn_axis_name`: see `lib.imagenet.nets.common` (None under jit with a sharded batch).
    """

    stage_sizes: Sequence[int]
    block_cls: Callable[..., nn.Module]
    num_classes: int = 1000
    width: int = 64
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        conv = functools.partial(
            nn.Conv,
            use_bias=False,
            padding="VALID",
            kernel_init=he_normal,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        norm = batch_norm(
            train, axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype
        )

        x = jnp.asarray(x, self.dtype)
        x = ConvBN(
            self.width,
            (7, 7),
            norm,
            strides=(2, 2),
            padding=3,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="stem",
        )(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, blocks in enumerate(self.stage_sizes):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = self.block_cls(
                    self.width * 2**stage,
                    conv=conv,
                    norm=norm,
                    strides=strides,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
        return as_logits(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock)
