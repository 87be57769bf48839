"""Training-data expansion on the device, one mini-batch at a time.

Nielsen ("Neural Networks and Deep Learning", chapter 6, "Expanding the training
data") raises the three-layer convolutional net to 99.37% by displacing each of the
50,000 training images by one pixel up, down, left and right, an expanded set of
250,000 images. `one_pixel_shift` and `fixed_shift_batch` give that set without
storing it: virtual example i of the 5N expanded set is source image i % N moved by
`SHIFTS[i // N]`.

Simard, Steinkraus & Platt, "Best Practices for Convolutional Neural Networks
Applied to Visual Document Analysis" (ICDAR 2003), which the chapter cites, expand
MNIST with affine distortions (translation, rotation, skew) and with elastic
distortions: a random displacement field, uniform in [-1, 1], smoothed by a
Gaussian of standard deviation sigma and scaled by alpha (sigma = 4, alpha = 34 for
MNIST). `random_shift`, `random_rotation`, `random_skew` and `elastic_distortion`
draw a fresh distortion for every image of a batch; `augment_batch` combines the
ones an `AugmentConfig` enables.

Conventions. Images are (B, H, W, C); offsets and displacements are (dy, dx) in
pixels, rows first, and move the image content (dy = -1 is up). Rotation and skew
turn about the image centre ((H - 1) / 2, (W - 1) / 2). Whatever moves in from
outside the image is zero (background). Resampling is bilinear and only mixes pixel
values with that zero, so images in [0, 1] stay in [0, 1]. Every function is pure
and jittable; arguments that set array sizes (`max_shift`, `sigma`, the config of
`augment_batch`) must be static under `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
"""The one-pixel displacements (dy, dx) of the expanded set: none, up, down, left, right."""

_GAUSSIAN_TRUNCATE = 4.0  # kernel radius in standard deviations; the tail beyond is < 1e-3


def _check_images(images: jax.Array) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (batch, height, width, channels), got {images.shape}")


def _check_float(images: jax.Array) -> None:
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(
            f"resampling needs floating-point images, got {images.dtype}; "
            "convert them first, for example images.astype(jnp.float32) / 255"
        )


# ----------------------------------------------------------------------------------
# Integer translations: exact, no interpolation.


def _translate(images: jax.Array, offsets: jax.Array, pad: int) -> jax.Array:
    """Moves each image's content by its integer (dy, dx), |dy|, |dx| <= pad, zero fill."""
    _, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(image: jax.Array, offset: jax.Array) -> jax.Array:
        # Output row r shows input row r - dy, which sits at r - dy + pad in `padded`.
        start = (pad - offset[0], pad - offset[1], 0)
        return jax.lax.dynamic_slice(image, start, (height, width, channels))

    return jax.vmap(one)(padded, offsets.astype(jnp.int32))


def one_pixel_shift(images: jax.Array, shift_ids: jax.Array) -> jax.Array:
    """Moves image b by exactly one pixel in direction `SHIFTS[shift_ids[b]]`, zero fill.

    Nielsen, chapter 6: the four one-pixel displacements (plus the original, id 0)
    that expand 50,000 MNIST training images to 250,000. `shift_ids` is an int array
    (B,) with values in 0..4; ids outside that range are clamped to it.
    """
    _check_images(images)
    table = jnp.asarray(SHIFTS, dtype=jnp.int32)
    offsets = jnp.take(table, jnp.asarray(shift_ids, jnp.int32), axis=0, mode="clip")
    return _translate(images, offsets, pad=1)


def expanded_size(n: int) -> int:
    """Size of the expanded set of n images: the original plus four one-pixel shifts."""
    return len(SHIFTS) * n


def fixed_shift_batch(
    images_all: jax.Array, labels_all: jax.Array, virtual_idx: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """A mini-batch of the expanded set: (shifted images, labels) for virtual indices.

    Virtual index i in [0, 5N) names source image i % N moved by `SHIFTS[i // N]`
    (Nielsen, chapter 6), so an epoch over a permutation of `expanded_size(N)`
    indices visits every image in every shift exactly once. Labels are those of the
    source images; a shift does not change the digit.
    """
    _check_images(images_all)
    n = images_all.shape[0]
    source = virtual_idx % n
    return one_pixel_shift(images_all[source], virtual_idx // n), labels_all[source]


def _max_shift(max_shift: int) -> int:
    try:
        k = operator.index(max_shift)
    except TypeError:
        raise TypeError(
            f"max_shift must be a Python int (it sets the padding), got {max_shift!r}"
        ) from None
    if k < 0:
        raise ValueError(f"max_shift must be >= 0, got {k}")
    return k


def _sample_offsets(key: jax.Array, batch: int, max_shift: int) -> jax.Array:
    return jax.random.randint(key, (batch, 2), -max_shift, max_shift + 1)


def random_shift(key: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
    """Moves each image by its own integer (dy, dx), each uniform in [-k, k], zero fill.

    The translations of Simard, Steinkraus & Platt (2003), kept to whole pixels so no
    interpolation blurs the image; `max_shift` = k must be static.
    """
    _check_images(images)
    k = _max_shift(max_shift)
    if k == 0:
        return images
    return _translate(images, _sample_offsets(key, images.shape[0], k), pad=k)


# ----------------------------------------------------------------------------------
# Bilinear resampling: rotation, skew and elastic distortion.


def _resample(images: jax.Array, coords: jax.Array) -> jax.Array:
    """out[b, y, x, c] = images[b, coords[b, y, x, 0], coords[b, y, x, 1], c], bilinear.

    Points outside the image read zero. The clip only removes rounding error: a
    bilinear value is a convex combination of pixels and the zero fill.
    """
    _check_float(images)

    def one_channel(plane: jax.Array, grid: jax.Array) -> jax.Array:
        return map_coordinates(plane, (grid[..., 0], grid[..., 1]), order=1, mode="constant")

    planes = jnp.moveaxis(images, -1, 1)  # (B, C, H, W)
    per_image = jax.vmap(one_channel, in_axes=(0, None))  # the channels share a grid
    out = jnp.moveaxis(jax.vmap(per_image)(planes, coords), 1, -1)
    low = jnp.minimum(images.min(), 0)
    high = jnp.maximum(images.max(), 0)
    return jnp.clip(out, low, high).astype(images.dtype)


def _centred_grid(height: int, width: int) -> jax.Array:
    """(H, W, 2) pixel positions (y, x) measured from the image centre."""
    ys = jnp.arange(height, dtype=jnp.float32) - (height - 1) / 2
    xs = jnp.arange(width, dtype=jnp.float32) - (width - 1) / 2
    return jnp.stack(jnp.meshgrid(ys, xs, indexing="ij"), axis=-1)


def _inverse_rotation(degrees: jax.Array) -> jax.Array:
    """(B, 2, 2) maps from output to input (y, x) for a counter-clockwise turn on screen.

    y points down the screen, so turning the content counter-clockwise by theta
    reads each output pixel from the input turned clockwise by theta.
    """
    theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    return jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], -2)


def _inverse_skew(shear: jax.Array) -> jax.Array:
    """(B, 2, 2) maps from output to input (y, x) for a horizontal shear.

    Content at height -y above the centre moves right by shear * -y, so shear > 0
    slants upright strokes forward, like italics.
    """
    shear = jnp.asarray(shear, jnp.float32)
    one, zero = jnp.ones_like(shear), jnp.zeros_like(shear)
    return jnp.stack([jnp.stack([one, zero], -1), jnp.stack([shear, one], -1)], -2)


def _warp(
    images: jax.Array,
    inverse: jax.Array | None = None,
    offsets: jax.Array | None = None,
    displacement: jax.Array | None = None,
) -> jax.Array:
    """One bilinear resample of: a linear map about the centre, a shift, then a field.

    Content is first transformed by the linear map whose inverse is `inverse`
    (B, 2, 2), then moved by `offsets` (B, 2), then displaced elastically: output
    pixel p reads the shifted, transformed image at p + displacement(p) (B, H, W, 2).
    Composing the three into one sampling grid interpolates the image only once.
    """
    batch, height, width, _ = images.shape
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2], jnp.float32)
    points = jnp.broadcast_to(_centred_grid(height, width), (batch, height, width, 2))
    if displacement is not None:
        points = points + displacement
    if offsets is not None:
        points = points - offsets[:, None, None, :].astype(jnp.float32)
    if inverse is not None:
        points = jnp.einsum("bij,bhwj->bhwi", inverse, points)
    return _resample(images, points + centre)


def rotate(images: jax.Array, degrees: jax.Array) -> jax.Array:
    """Turns image b counter-clockwise (as displayed) by `degrees[b]` (or one for all).

    The turn is about the image centre. Bilinear resampling with zero fill; an affine
    distortion of Simard, Steinkraus & Platt (2003).
    """
    _check_images(images)
    degrees = jnp.broadcast_to(jnp.asarray(degrees, jnp.float32), images.shape[:1])
    return _warp(images, inverse=_inverse_rotation(degrees))


def skew(images: jax.Array, shear: jax.Array) -> jax.Array:
    """Shears image b horizontally about its centre by the factor `shear[b]` (or one for all).

    Each row moves right by shear times its height above the centre (shear > 0
    slants digits forward; 1.0 is 45 degrees). Bilinear resampling with zero fill;
    an affine distortion of Simard, Steinkraus & Platt (2003).
    """
    _check_images(images)
    shear = jnp.broadcast_to(jnp.asarray(shear, jnp.float32), images.shape[:1])
    return _warp(images, inverse=_inverse_skew(shear))


def _sample_symmetric(key: jax.Array, batch: int, limit: float) -> jax.Array:
    return jax.random.uniform(key, (batch,), jnp.float32, -limit, limit)


def random_rotation(key: jax.Array, images: jax.Array, max_degrees: float) -> jax.Array:
    """Turns each image by its own angle, uniform in [-max_degrees, max_degrees].

    Simard, Steinkraus & Platt (2003), affine distortions; Nielsen, chapter 6.
    """
    _check_images(images)
    return rotate(images, _sample_symmetric(key, images.shape[0], max_degrees))


def random_skew(key: jax.Array, images: jax.Array, max_skew: float) -> jax.Array:
    """Shears each image by its own factor, uniform in [-max_skew, max_skew] (see `skew`).

    Simard, Steinkraus & Platt (2003), affine distortions; Nielsen, chapter 6.
    """
    _check_images(images)
    return skew(images, _sample_symmetric(key, images.shape[0], max_skew))


# ----------------------------------------------------------------------------------
# Elastic distortion (Simard, Steinkraus & Platt 2003, section 2).


def _gaussian_smoothing_matrix(size: int, sigma: float) -> tuple[np.ndarray, int]:
    """A (size, size + 2r) banded matrix: a 'valid' 1-D convolution with a unit-sum Gaussian.

    Multiplying by it from both sides is the separable 2-D Gaussian filter; the
    field is drawn r pixels larger on each side so that the smoothed field has the
    same statistics at the border as in the middle.
    """
    radius = max(1, math.ceil(_GAUSSIAN_TRUNCATE * sigma))
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    matrix = np.zeros((size, size + 2 * radius), np.float32)
    for row in range(size):
        matrix[row, row : row + 2 * radius + 1] = kernel
    return matrix, radius


def elastic_displacement(
    key: jax.Array, shape: tuple[int, int, int], alpha: float, sigma: float
) -> jax.Array:
    """Smooth random displacement fields (B, H, W, 2), (dy, dx) in pixels.

    Simard, Steinkraus & Platt (2003): both components start uniform in [-1, 1] at
    every pixel, are convolved with a Gaussian of standard deviation `sigma` (pixels)
    and multiplied by `alpha`. Small sigma gives a rough, nearly independent field;
    large sigma a nearly constant one; around 4 on MNIST it bends strokes like an
    elastic sheet. `shape` is (B, H, W); `sigma` must be static.
    """
    batch, height, width = shape
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    rows, r = _gaussian_smoothing_matrix(height, float(sigma))
    cols, _ = _gaussian_smoothing_matrix(width, float(sigma))
    noise = jax.random.uniform(key, (batch, height + 2 * r, width + 2 * r, 2), minval=-1.0)
    smooth = jnp.einsum("ij,bjkc,lk->bilc", rows, noise, cols)
    return alpha * smooth


def elastic_distortion(
    key: jax.Array, images: jax.Array, alpha: float = 34.0, sigma: float = 4.0
) -> jax.Array:
    """Distorts each image with its own elastic displacement field, bilinear, zero fill.

    Output pixel p reads the input at p + d(p), d from `elastic_displacement`.
    Simard, Steinkraus & Platt (2003) use sigma = 4 and alpha = 34 on MNIST; alpha = 0
    leaves the images unchanged.
    """
    _check_images(images)
    field = elastic_displacement(key, images.shape[:3], alpha, sigma)
    return _warp(images, displacement=field)


# ----------------------------------------------------------------------------------
# All of them, as configured.


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Which expansions `augment_batch` applies, and how strongly; zero turns one off.

    Hashable, so it can be a static argument of `jax.jit`.
    """

    max_shift: int = 0  # pixels, each axis
    max_degrees: float = 0.0  # rotation
    max_skew: float = 0.0  # horizontal shear factor
    elastic_alpha: float = 0.0  # displacement scale, pixels
    elastic_sigma: float = 4.0  # displacement smoothness, pixels

    def __post_init__(self) -> None:
        _max_shift(self.max_shift)
        for name in ("max_degrees", "max_skew", "elastic_alpha"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"AugmentConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.elastic_sigma > 0:
            raise ValueError(f"AugmentConfig.elastic_sigma must be > 0, got {self.elastic_sigma}")

    @property
    def enabled(self) -> bool:
        return bool(self.max_shift or self.max_degrees or self.max_skew or self.elastic_alpha)


def augment_batch(key: jax.Array, images: jax.Array, config: AugmentConfig) -> jax.Array:
    """Applies every expansion `config` enables, each image drawing its own distortion.

    Order on the content: rotation, then skew, both about the centre; then the integer
    shift; then the elastic distortion (Simard, Steinkraus & Platt 2003). When any of
    rotation, skew or elastic is on, all enabled ones are composed into a single
    sampling grid and the image is interpolated once, which blurs less than one
    resample per step; a shift alone is an exact integer move. Returns `images`
    itself when nothing is enabled.

    `key` is split into four sub-keys, in order shift, rotation, skew, elastic; with
    only one expansion enabled the result equals that expansion's function called
    with its sub-key. `config` must be static under `jax.jit`.
    """
    _check_images(images)
    if not config.enabled:
        return images
    k_shift, k_rotation, k_skew, k_elastic = jax.random.split(key, 4)
    batch, height, width, _ = images.shape
    offsets = _sample_offsets(k_shift, batch, config.max_shift) if config.max_shift else None
    if not (config.max_degrees or config.max_skew or config.elastic_alpha):
        return _translate(images, offsets, pad=config.max_shift)

    inverse = None
    if config.max_degrees:
        inverse = _inverse_rotation(_sample_symmetric(k_rotation, batch, config.max_degrees))
    if config.max_skew:
        shear = _inverse_skew(_sample_symmetric(k_skew, batch, config.max_skew))
        # Skew after rotation on the content: undo the skew first, then the rotation.
        inverse = shear if inverse is None else jnp.einsum("bij,bjk->bik", inverse, shear)
    field = None
    if config.elastic_alpha:
        field = elastic_displacement(
            k_elastic, (batch, height, width), config.elastic_alpha, config.elastic_sigma
        )
    return _warp(images, inverse=inverse, offsets=offsets, displacement=field)
