"""The ladder of MNIST networks in chapter 6 of Nielsen's "Neural Networks and Deep Learning".

`BookNet` is the one general network (ConvPool layers, fully connected layers,
softmax); every rung of the ladder is a setting of it, and `RUNGS` holds the
hyperparameters the book trained each rung with and the test accuracy it reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from lib.nielsen.layers import ConvPool, FullyConnected, Softmax


class BookNet(nn.Module):
    """ConvPool layers, then fully connected layers, then a softmax layer (as logits)."""

    conv_features: Sequence[int] = ()
    hidden: Sequence[int] = (100,)
    activation: str = "sigmoid"
    dropout: float = 0.0
    weight_init: str = "book"
    num_classes: int = 10
    pool: str = "auto"  # lib.nielsen.layers.resolve_pool: the computation, not the result
    conv: str = "auto"  # lib.nielsen.layers.resolve_conv: the same
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for features in self.conv_features:
            x = ConvPool(
                features,
                activation=self.activation,
                weight_init=self.weight_init,
                pool=self.pool,
                conv=self.conv,
                dtype=self.dtype,
            )(x)
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = FullyConnected(
                width,
                activation=self.activation,
                dropout=self.dropout,
                weight_init=self.weight_init,
                dtype=self.dtype,
            )(x, train)
        return Softmax(self.num_classes, dropout=self.dropout, dtype=self.dtype)(x, train)


@dataclasses.dataclass(frozen=True)
class Rung:
    """One rung of the ladder: the network and how the book trained it."""

    conv_features: tuple[int, ...]
    hidden: tuple[int, ...]
    activation: str
    epochs: int
    learning_rate: float
    l2: float = 0.0
    dropout: float = 0.0
    expanded: bool = False
    batch_size: int = 10
    book_accuracy: float = 0.0  # the test accuracy the book reports, in percent
    ensemble: int = 1


RUNGS: dict[str, Rung] = {
    "shallow": Rung((), (100,), "sigmoid", 60, 0.1, book_accuracy=97.80),
    "conv1": Rung((20,), (100,), "sigmoid", 60, 0.1, book_accuracy=98.78),
    "conv2": Rung((20, 40), (100,), "sigmoid", 60, 0.1, book_accuracy=99.06),
    "relu": Rung((20, 40), (100,), "relu", 60, 0.03, l2=0.1, book_accuracy=99.23),
    "expanded": Rung(
        (20, 40), (100,), "relu", 60, 0.03, l2=0.1, expanded=True, book_accuracy=99.37
    ),
    "fc2": Rung((20, 40), (100, 100), "relu", 60, 0.03, l2=0.1, expanded=True, book_accuracy=99.43),
    "dropout": Rung(
        (20, 40), (1000, 1000), "relu", 40, 0.03, dropout=0.5, expanded=True, book_accuracy=99.60
    ),
    "ensemble": Rung(
        (20, 40),
        (1000, 1000),
        "relu",
        40,
        0.03,
        dropout=0.5,
        expanded=True,
        book_accuracy=99.67,
        ensemble=5,
    ),
}

NETS: tuple[str, ...] = tuple(RUNGS)


def create(name: str, **overrides) -> BookNet:
    """The network of rung `name`; keyword overrides change BookNet's fields."""
    if name not in RUNGS:
        raise ValueError(f"unknown net '{name}'; choose from {', '.join(NETS)}")
    rung = RUNGS[name]
    fields = dict(
        conv_features=rung.conv_features,
        hidden=rung.hidden,
        activation=rung.activation,
        dropout=rung.dropout,
    )
    fields.update(overrides)
    return BookNet(**fields)


def forward_macs(model: BookNet, image_shape: tuple[int, int, int] = (28, 28, 1)) -> int:
    """Multiply-adds of one image's forward pass: every valid convolution at every output
    position (pooling and activations are not counted) and every fully connected layer.

    The relu rung: 24*24*25*20 + 8*8*500*40 + 640*100 + 100*10 = 1,633,000.
    """
    h, w, c = image_shape
    macs = 0
    for features in model.conv_features:
        h, w = h - 4, w - 4  # ConvPool's 5x5 valid convolution
        macs += h * w * 25 * c * features
        h, w, c = h // 2, w // 2, features  # its 2x2 max-pool
    width = h * w * c
    for out in (*model.hidden, model.num_classes):
        macs += width * out
        width = out
    return macs
