"""The nets of Sabour, Frosst and Hinton, "Dynamic Routing Between Capsules" (NIPS 2017):
the three-layer CapsNet with its reconstruction decoder, and the paper's baseline CNN.

CapsNet (section 4): Conv1, 256 9x9 ReLU filters (28x28 -> 20x20); PrimaryCaps, 32
channels of 8-D capsules by a 9x9 convolution of stride 2 (6x6x32 = 1,152 capsules);
DigitCaps, ten 16-D capsules, each primary capsule's prediction for each digit capsule
made by its own 8x16 matrix and routed by agreement. The decoder (section 4.1) rebuilds
the image from the digit capsules masked to one class (the true one in training, the
longest at test) through FC 512 ReLU, FC 1024 ReLU, FC 784 sigmoid. With no biases in
DigitCaps (the paper names none), the parameters are exactly

    Conv1       9*9*1*256 + 256         =    20,992
    PrimaryCaps 9*9*256*256 + 256       = 5,308,672
    DigitCaps   1,152 * 10 * 8*16       = 1,474,560   (6,804,224 without the decoder: "6.8M")
    decoder     160*512 + 512 + 512*1024 + 1024 + 1024*784 + 784
                                        = 1,411,344   (8,215,568 in all: "8.2M")

The baseline (section 5): three 5x5 convolutions of stride 1 with 256, 256 and 128
channels, FC 328, FC 192, then dropout into a 10-way softmax. Its "35.4M" parameters
pin down what the paper leaves open: 'same' padding and no pooling, so the first FC
layer sees all 28*28*128 = 100,352 features (35,445,522 in all; pooling, or 'valid'
padding, would give far fewer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from lib.capsules import layers

CAPSNET_PARAMS = 8_215_568  # the paper's "8.2M"
CAPSNET_PARAMS_WITHOUT_DECODER = 6_804_224  # "6.8M"
BASELINE_PARAMS = 35_445_522  # "35.4M"


class CapsOutput(NamedTuple):
    lengths: jax.Array  # (B, classes): each digit capsule's length, the class probabilities
    capsules: jax.Array  # (B, classes, dim): the digit capsules
    coupling: jax.Array  # (B, primary capsules, classes): the last routing iteration's c
    reconstruction: jax.Array | None  # (B, pixels) in (0, 1), or None without a decoder


class Decoder(nn.Module):
    """FC ReLU layers of `hidden` widths, then `pixels` sigmoid units (section 4.1)."""

    hidden: Sequence[int] = (512, 1024)
    pixels: int = 784

    @nn.compact
    def __call__(self, masked: jax.Array) -> jax.Array:
        h = masked
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.Dense(width, name=f"fc{i}")(h))
        return nn.sigmoid(nn.Dense(self.pixels, name="out")(h))


class CapsNet(nn.Module):
    """The paper's CapsNet; every size is an argument, so small versions can be built."""

    conv_filters: int = 256
    conv_kernel: int = 9
    primary_channels: int = 32
    primary_dim: int = 8
    primary_kernel: int = 9
    primary_stride: int = 2
    num_classes: int = 10
    digit_dim: int = 16
    routing_iterations: int = 3
    decoder: Sequence[int] | None = (512, 1024)  # None: no decoder, no reconstruction
    pixels: int = 784
    conv: str = "auto"  # how the convolutions run: layers.conv's impl

    def setup(self):
        self.conv1 = layers.Conv(self.conv_filters, self.conv_kernel, impl=self.conv)
        self.primary = layers.PrimaryCaps(
            self.primary_channels,
            self.primary_dim,
            self.primary_kernel,
            self.primary_stride,
            impl=self.conv,
        )
        self.digits = layers.DigitCaps(self.num_classes, self.digit_dim, self.routing_iterations)
        if self.decoder is not None:
            self.reconstruct = Decoder(tuple(self.decoder), self.pixels)

    def __call__(
        self, images: jax.Array, labels: jax.Array | None = None, decode: bool = True
    ) -> CapsOutput:
        """The digit capsules of `images` (B, H, W, C) and, with a decoder and `decode`,
        the reconstruction from the capsule of `labels` (the longest capsule's class when
        None). The stages are sown as intermediates (conv1_relu, primary_capsules, u_hat)."""
        h = nn.relu(self.conv1(images))
        self.sow("intermediates", "conv1_relu", h)
        u = self.primary(h)
        self.sow("intermediates", "primary_capsules", u)
        v, c = self.digits(u)
        probabilities = layers.lengths(v)
        reconstruction = None
        if self.decoder is not None and (decode or self.is_initializing()):
            chosen = jnp.argmax(probabilities, -1) if labels is None else labels
            reconstruction = self.reconstruct(layers.mask(v, chosen))
        return CapsOutput(probabilities, v, c, reconstruction)

    def decode(self, masked: jax.Array) -> jax.Array:
        """The decoder alone, on masked capsules (B, classes * dim): Figure 4's pictures."""
        return self.reconstruct(masked)


class BaselineCNN(nn.Module):
    """The paper's baseline: 5x5 'same' convolutions of stride 1 (ReLU), FC layers (ReLU),
    dropout, a softmax over the classes (returned as logits)."""

    channels: Sequence[int] = (256, 256, 128)
    kernel: int = 5
    hidden: Sequence[int] = (328, 192)
    dropout: float = 0.5
    num_classes: int = 10
    conv: str = "auto"  # as CapsNet's

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        h = images
        for i, channels in enumerate(self.channels):
            conv = layers.Conv(
                channels, self.kernel, padding="SAME", impl=self.conv, name=f"conv{i}"
            )
            h = nn.relu(conv(h))
            self.sow("intermediates", f"conv{i}_relu", h)
        h = h.reshape(h.shape[0], -1)
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.Dense(width, name=f"fc{i}")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.num_classes, name="softmax")(h)


def perturbation_images(
    model: CapsNet, params: Any, capsules: jax.Array, label: int, deltas: tuple[float, ...]
) -> jax.Array:
    """Figure 4 (section 5.1): the decoder's images (dim, steps, pixels) of one example's
    digit capsules (classes, dim) masked to `label`, that class's capsule with each of its
    dimensions moved by each of `deltas` in turn (`layers.perturbed`)."""
    moved = layers.perturbed(capsules[label], jnp.asarray(deltas, capsules.dtype))
    dim, steps = moved.shape[:2]
    chosen = jnp.zeros((dim * steps, *capsules.shape), capsules.dtype)
    chosen = chosen.at[:, label].set(moved.reshape(dim * steps, -1))
    masked = layers.mask(chosen, jnp.full(dim * steps, label))
    decoded = model.apply({"params": params}, masked, method="decode")
    return decoded.reshape(dim, steps, -1)
