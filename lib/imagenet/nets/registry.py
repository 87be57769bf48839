"""The ImageNet-scale model zoo by name, with each model's input size and the
published numbers it should reproduce.

`MODELS[name](num_classes=..., dtype=...)` builds a `flax.linen` module. Parameter
counts are taken from a `jax.eval_shape` of `init`, so nothing is materialised, and
compared with `REFERENCE_PARAMS` (1000 classes). Multiply-adds per image are counted two ways:

- `forward_macs`: XLA's cost analysis of the compiled inference pass, flops / 2. XLA
  counts a convolution's multiply-adds only where the kernel overlaps the image, not
  over its zero padding, and adds the element-wise work (batch norm, ReLU, pooling).
  For most nets the first effect is larger, so these figures come out 0.5% (ResNet-152)
  to 7% (AlexNet) below the layer count, most for nets with many padded convolutions on
  small maps. Xception does 93% of its multiply-adds in 1x1 convolutions, which have no
  padding to skip, so there the element-wise work wins: XLA's figure is slightly above
  the layer count (and equal to the published 8.4).
- `layer_macs`: the convention of the published figures, read off the forward pass's
  jaxpr: every output value of a convolution or matrix product costs one multiply-add
  per kernel weight feeding it, padding included, and nothing else is counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lib.core.errors import UserError
from lib.imagenet.nets.alexnet import AlexNet, AlexNetKSH
from lib.imagenet.nets.inception import GoogLeNet, GoogLeNetWithAux, InceptionV3, InceptionV3NoAux
from lib.imagenet.nets.resnet import ResNet18, ResNet34, ResNet50, ResNet101, ResNet152
from lib.imagenet.nets.vgg import VGG11, VGG11BN, VGG13, VGG13BN, VGG16, VGG16BN, VGG19, VGG19BN
from lib.imagenet.nets.xception import Xception

MODELS: dict[str, Callable[..., nn.Module]] = {
    "alexnet": AlexNet,
    "alexnet_ksh": AlexNetKSH,
    "vgg11": VGG11,
    "vgg11_bn": VGG11BN,
    "vgg13": VGG13,
    "vgg13_bn": VGG13BN,
    "vgg16": VGG16,
    "vgg16_bn": VGG16BN,
    "vgg19": VGG19,
    "vgg19_bn": VGG19BN,
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet152": ResNet152,
    "googlenet": GoogLeNet,
    "googlenet_aux": GoogLeNetWithAux,
    "inception_v3": InceptionV3,
    "inception_v3_noaux": InceptionV3NoAux,
    "xception": Xception,
}

# Input resolution the model was designed for (square images).
RESOLUTION: dict[str, int] = {
    name: 299 if name.startswith(("inception_v3", "xception")) else 224 for name in MODELS
}

# Smallest square input supported in evaluation (every model is tested there):
# AlexNet needs three poolings' worth, Inception v3 and Xception have unpadded
# early convolutions. Training may need more: see MIN_TRAIN_RESOLUTION.
MIN_RESOLUTION: dict[str, int] = {
    name: 75
    if name.startswith("inception_v3")
    else 71
    if name == "xception"
    else 63
    if name.startswith("alexnet")
    else 32
    for name in MODELS
}

# Smallest square input to train at. Inception v3's auxiliary classifier, which runs in
# training only, needs the 17x17 grid (inception.AUX_GRID) that a 299x299 input gives;
# inception_v3_noaux trains from its evaluation minimum.
MIN_TRAIN_RESOLUTION: dict[str, int] = MIN_RESOLUTION | {"inception_v3": 299}
# Why, for the models whose MIN_TRAIN_RESOLUTION exceeds MIN_RESOLUTION.
TRAIN_SIZE_NOTE: dict[str, str] = {
    "inception_v3": "its auxiliary classifier, run in training, needs a 17x17 grid; "
    f"inception_v3_noaux trains from {MIN_TRAIN_RESOLUTION['inception_v3_noaux']}",
}

# The variable collections a reference counts. torchvision counts parameters only
# (batch norm's scale and bias, not its running statistics); Keras also counts the
# moving mean and variance (as "non-trainable params").
COUNTED_COLLECTIONS: dict[str, tuple[str, ...]] = {
    name: ("params", "batch_stats") if name == "xception" else ("params",) for name in MODELS
}

# The paper's two-tower AlexNet, from its layer sizes (no library publishes it):
# conv1 11*11*3*96, conv2 5*5*48*256 (2 groups), conv3 3*3*256*384, conv4 3*3*192*384
# (2 groups), conv5 3*3*192*256 (2 groups), fc 9216*4096, 4096*4096, 4096*1000, + biases.
KSH_PARAMS = (
    (11 * 11 * 3 * 96 + 96)
    + (5 * 5 * 48 * 256 + 256)
    + (3 * 3 * 256 * 384 + 384)
    + (3 * 3 * 192 * 384 + 384)
    + (3 * 3 * 192 * 256 + 256)
    + (9216 * 4096 + 4096)
    + (4096 * 4096 + 4096)
    + (4096 * 1000 + 1000)
)  # 60,965,224
# Multiply-adds of the same layers on 55x55, 27x27 and 13x13 maps.
KSH_MACS = (
    55 * 55 * 96 * (11 * 11 * 3)
    + 27 * 27 * 256 * (5 * 5 * 48)
    + 13 * 13 * 384 * (3 * 3 * 256)
    + 13 * 13 * 384 * (3 * 3 * 192)
    + 13 * 13 * 256 * (3 * 3 * 192)
    + 9216 * 4096
    + 4096 * 4096
    + 4096 * 1000
)  # 724,406,816

_TORCHVISION = "torchvision.models (docs: num_params, GFLOPS)"
_TORCHVISION_WITH_AUX = "torchvision.models, aux_logits=True (the GoogLeNet class's default)"
_TORCHVISION_NO_AUX = "torchvision.models, aux_logits=False (count computed from its layers)"

REFERENCE_PARAMS: dict[str, int] = {
    "alexnet": 61_100_840,
    "alexnet_ksh": KSH_PARAMS,
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "googlenet": 6_624_904,
    "googlenet_aux": 13_004_888,
    "inception_v3": 27_161_264,
    "inception_v3_noaux": 23_834_568,
    "xception": 22_910_480,
}

# Published multiply-adds per image at RESOLUTION, in units of 10^9. torchvision's
# "GFLOPS" column counts multiply-adds. Auxiliary heads run only in training, so the
# inference cost is the same with or without them.
REFERENCE_GMACS: dict[str, float] = {
    "alexnet": 0.71,
    "alexnet_ksh": KSH_MACS / 1e9,
    "vgg11": 7.61,
    "vgg11_bn": 7.61,
    "vgg13": 11.31,
    "vgg13_bn": 11.31,
    "vgg16": 15.47,
    "vgg16_bn": 15.47,
    "vgg19": 19.63,
    "vgg19_bn": 19.63,
    "resnet18": 1.81,
    "resnet34": 3.66,
    "resnet50": 4.09,
    "resnet101": 7.80,
    "resnet152": 11.51,
    "googlenet": 1.50,
    "googlenet_aux": 1.50,
    "inception_v3": 5.71,
    "inception_v3_noaux": 5.71,
    "xception": 8.4,
}

REFERENCE_SOURCE: dict[str, str] = {
    **{name: _TORCHVISION for name in MODELS},
    "alexnet_ksh": "hand count from Krizhevsky et al. 2012's layer sizes (KSH_PARAMS, KSH_MACS)",
    "googlenet_aux": _TORCHVISION_WITH_AUX,
    "inception_v3_noaux": _TORCHVISION_NO_AUX,
    "xception": "Keras Applications Xception (total params incl. BN moving stats); "
    "GMACs: the commonly quoted estimate",
}


class UnknownModelError(UserError, ValueError):
    """A model name that is not in the registry; the message lists the known ones."""


def check_name(name: str, extra: Iterable[str] = ()) -> str:
    """`name` if registered or among `extra` (names a caller builds itself), else an
    UnknownModelError that lists them all."""
    known = [*MODELS, *extra]
    if name not in known:
        raise UnknownModelError(f"unknown model '{name}'; choose one of: {', '.join(known)}")
    return name


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """The registered model `name`, built with `kwargs` (num_classes, dtype, ...)."""
    return MODELS[check_name(name)](**kwargs)


def variable_shapes(
    model: nn.Module, resolution: int, batch: int = 1, seed: int = 0
) -> Mapping[str, Any]:
    """Shapes and dtypes of all of `model`'s variables, without materialising them.

    Initialises in training mode so that auxiliary heads (built only then) exist.
    """

    def init() -> Mapping[str, Any]:
        key = jax.random.key(seed)
        x = jnp.zeros((batch, resolution, resolution, 3), jnp.float32)
        return model.init({"params": key, "dropout": key}, x, train=True)

    return jax.eval_shape(init)


def count_variables(variables: Mapping[str, Any], collections: Sequence[str] = ("params",)) -> int:
    """Total number of scalars in the given collections of a variables tree."""
    return sum(
        int(np.prod(leaf.shape))
        for collection in collections
        for leaf in jax.tree.leaves(variables.get(collection, {}))
    )


def parameter_count(name: str, resolution: int | None = None, **kwargs: Any) -> int:
    """`name`'s size, counted the way its reference counts (COUNTED_COLLECTIONS)."""
    model = get_model(name, **kwargs)
    shapes = variable_shapes(model, resolution or RESOLUTION[name])
    return count_variables(shapes, COUNTED_COLLECTIONS[name])


def forward_macs(model: nn.Module, variables: Mapping[str, Any], resolution: int) -> float:
    """Multiply-adds of one image's inference forward pass: XLA's flop count / 2.

    `variables` may be abstract (from `variable_shapes`); only compilation happens.
    """
    x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    cost = forward.lower(variables, x).compile().cost_analysis()
    if isinstance(cost, Sequence):  # older JAX returns one dict per device
        cost = cost[0]
    return float(cost["flops"]) / 2


def layer_macs(model: nn.Module, variables: Mapping[str, Any], resolution: int) -> int:
    """Multiply-adds of the convolutions and matrix products of one image's inference pass.

    Counts as published tables do (padding included, element-wise work left out), by
    walking the jaxpr of the forward pass, so no compilation is needed.
    """
    x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    return _jaxpr_macs(jaxpr.jaxpr)


def _jaxpr_macs(jaxpr: Any) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        out_size = int(np.prod(eqn.outvars[0].aval.shape))
        if eqn.primitive.name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape
            out_features = kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += out_size * int(np.prod(kernel)) // out_features
        elif eqn.primitive.name == "dot_general":
            (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += out_size * int(np.prod([lhs[d] for d in lhs_contracting]))
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if hasattr(sub, "eqns"):
                    total += _jaxpr_macs(sub)
                elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    total += _jaxpr_macs(sub.jaxpr)
    return total
