"""AlexNet: Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with Deep
Convolutional Neural Networks" (NIPS).

Two variants of one module:

- `AlexNetKSH`, the network of the 2012 paper (figure 2): 96-256-384-384-256 kernels,
  trained split over two GPUs. Each GPU ("tower") held half of every layer's kernels;
  layers 2, 4 and 5 saw only the kernel maps of their own GPU, which is exactly a
  grouped convolution with two groups. Layers 1 and 2 are followed by local response
  normalisation (section 3.3), itself confined to each GPU's maps. Parameter count
  from the paper's layer sizes: 60,965,224 (the paper rounds it to "60 million").
- `AlexNet`, the common single-tower form: torchvision's `alexnet` layers,
  64-192-384-256-256 kernels, no grouping, no response normalisation (61,100,840
  parameters). Krizhevsky 2014, "One weird trick for parallelizing convolutional neural
  networks", gives 64-192-384-384-256 in a footnote; torchvision's 256 kernels in conv 4
  come from cuda-convnet2's one-GPU configuration.

Both pool the last feature map to 6x6 adaptively so the 9216-wide classifier input
holds at any resolution; at 224x224 the map is already 6x6 and the pooling is the
identity. Dropout (p=0.5) acts on the outputs of the two hidden fully connected
layers, as in the paper (section 4.2); torchvision's `alexnet` applies it to their
inputs instead (before fc6 and fc7), which changes no parameter.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from lib.imagenet.nets.common import (
    Dtype,
    adaptive_avg_pool,
    as_logits,
    he_normal,
    local_response_norm,
)


class AlexNet(nn.Module):
    """Five convolutions (three max-pooled) and three fully connected layers.

    `features` gives each convolution's kernel count. With `towers` > 1 the kernels are
    split into that many towers that exchange activations only at conv 3 and at the
    dense layers, as the two GPUs of the paper did (section 3.2): conv 2, 4 and 5 are
    grouped convolutions. `response_norm` adds LRN after the first two convolutions.
    `paper_init` uses the paper's initialisation (weights N(0, 0.01); biases 1 in
    conv 2, 4, 5 and the hidden dense layers so ReLUs start with positive input, 0
    elsewhere) instead of He initialisation.
    """

    num_classes: int = 1000
    features: Sequence[int] = (64, 192, 384, 256, 256)
    towers: int = 1
    response_norm: bool = False
    paper_init: bool = False
    hidden: int = 4096
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        kernel_sizes = (11, 5, 3, 3, 3)
        strides = (4, 1, 1, 1, 1)
        paddings = (2, 2, 1, 1, 1)
        pooled_after = (0, 1, 4)
        within_tower = (1, 3, 4)  # conv 2, 4, 5 see only their own tower's maps
        paper_one_biases = within_tower

        if self.paper_init:
            conv_init, dense_init = nn.initializers.normal(0.01), nn.initializers.normal(0.01)
            hidden_bias_init = nn.initializers.ones
        else:
            conv_init, dense_init = he_normal, nn.linear.default_kernel_init
            hidden_bias_init = nn.initializers.zeros
        dense = functools.partial(
            nn.Dense, kernel_init=dense_init, dtype=self.dtype, param_dtype=self.param_dtype
        )

        x = jnp.asarray(x, self.dtype)
        for i, (width, k, s, p) in enumerate(
            zip(self.features, kernel_sizes, strides, paddings, strict=True)
        ):
            one_bias = self.paper_init and i in paper_one_biases
            x = nn.Conv(
                width,
                (k, k),
                strides=(s, s),
                padding=((p, p), (p, p)),
                feature_group_count=self.towers if i in within_tower else 1,
                kernel_init=conv_init,
                bias_init=nn.initializers.ones if one_bias else nn.initializers.zeros,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"conv{i + 1}",
            )(x)
            x = nn.relu(x)
            if self.response_norm and i < 2:
                x = local_response_norm(x, groups=self.towers)
            if i in pooled_after:
                # Overlapping pooling, z=3, s=2 (section 3.4).
                x = nn.max_pool(x, (3, 3), strides=(2, 2))

        x = adaptive_avg_pool(x, (6, 6))
        x = x.reshape((x.shape[0], -1))
        for i in range(2):
            x = nn.relu(dense(self.hidden, bias_init=hidden_bias_init, name=f"fc{i + 6}")(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = dense(self.num_classes, name="fc8")(x)
        return as_logits(x)


AlexNetKSH = functools.partial(
    AlexNet,
    features=(96, 256, 384, 384, 256),
    towers=2,
    response_norm=True,
    paper_init=True,
)
