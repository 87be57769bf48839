"""Training-data expansion: exact one-pixel shifts, bounded random shifts, identities at
zero strength, the elastic field's scale, and the shared contract (shape, dtype,
range, determinism, jit) on real MNIST digits."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from commands import assert_refused, run_module

from lib.core import data
from lib.nielsen import augment

KEY = jax.random.key(0)
OTHER_KEY = jax.random.key(1)


@pytest.fixture(scope="module")
def digits() -> jax.Array:
    try:
        return jnp.asarray(data.mnist(train_size=16).train.images)
    except data.DataError as missing:
        pytest.skip(f"MNIST is not available: {missing}")


def shifted_reference(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Pixel by pixel: content at (r, c) lands at (r + dy, c + dx); the rest is zero."""
    out = np.zeros_like(image)
    height, width = image.shape[:2]
    for r in range(height):
        for c in range(width):
            if 0 <= r + dy < height and 0 <= c + dx < width:
                out[r + dy, c + dx] = image[r, c]
    return out


def pattern(height: int = 5, width: int = 6) -> np.ndarray:
    """Distinct values everywhere, border included, so a wrong move or fill shows."""
    return (np.arange(1, height * width + 1, dtype=np.float32) / (height * width)).reshape(
        height, width, 1
    )


# Each expansion at a visible strength, as key -> images -> images, with the config
# that enables only it in augment_batch. Compiling dominates the time of these tests,
# so each is jitted once for the whole module.
COMBINED = augment.AugmentConfig(2, 15.0, 0.3, 34.0, 4.0)
AUGMENT = jax.jit(augment.augment_batch, static_argnames="config")
EAGER = {
    "shift": lambda key, x: augment.random_shift(key, x, 3),
    "rotation": lambda key, x: augment.random_rotation(key, x, 20.0),
    "skew": lambda key, x: augment.random_skew(key, x, 0.4),
    "elastic": lambda key, x: augment.elastic_distortion(key, x, 34.0, 4.0),
    "combined": lambda key, x: augment.augment_batch(key, x, COMBINED),
}
EXPANSIONS = {name: jax.jit(expand) for name, expand in EAGER.items()}
EXPANSIONS["combined"] = functools.partial(AUGMENT, config=COMBINED)
ALONE = {
    "shift": augment.AugmentConfig(max_shift=3),
    "rotation": augment.AugmentConfig(max_degrees=20.0),
    "skew": augment.AugmentConfig(max_skew=0.4),
    "elastic": augment.AugmentConfig(elastic_alpha=34.0, elastic_sigma=4.0),
}
DISPLACEMENT = jax.jit(augment.elastic_displacement, static_argnums=(1, 3))


# --- the book's expanded set ----------------------------------------------------


def test_shift_table_is_none_up_down_left_right():
    assert augment.SHIFTS == ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


@pytest.mark.parametrize("shift_id", range(5))
def test_one_pixel_shift_moves_content_exactly_one_pixel(shift_id):
    image = pattern()
    moved = augment.one_pixel_shift(jnp.asarray(image[None]), jnp.array([shift_id]))
    dy, dx = augment.SHIFTS[shift_id]
    np.testing.assert_array_equal(np.asarray(moved[0]), shifted_reference(image, dy, dx))


def test_one_pixel_shift_directions_on_a_single_pixel():
    image = np.zeros((1, 5, 5, 1), np.float32)
    image[0, 2, 2, 0] = 1.0
    moved = augment.one_pixel_shift(jnp.asarray(np.repeat(image, 5, 0)), jnp.arange(5))
    where = [tuple(np.argwhere(np.asarray(m[..., 0]))[0]) for m in moved]
    assert where == [(2, 2), (1, 2), (3, 2), (2, 1), (2, 3)]  # none, up, down, left, right


def test_one_pixel_shift_applies_each_images_own_shift(digits):
    ids = jnp.arange(len(digits)) % 5
    moved = jax.jit(augment.one_pixel_shift)(digits, ids)
    for image, out, i in zip(np.asarray(digits), np.asarray(moved), np.asarray(ids), strict=True):
        np.testing.assert_array_equal(out, shifted_reference(image, *augment.SHIFTS[i]))


def test_expanded_size_is_five_times():
    assert augment.expanded_size(50_000) == 250_000
    assert augment.expanded_size(3) == 15


def test_fixed_shift_batch_covers_every_image_in_every_shift_with_its_label():
    n = 3
    images = jnp.asarray(np.stack([pattern() * (k + 1) / n for k in range(n)]))
    labels = jnp.array([7, 1, 4], jnp.int32)
    virtual = jnp.arange(augment.expanded_size(n))
    out_images, out_labels = jax.jit(augment.fixed_shift_batch)(images, labels, virtual)
    assert out_images.shape == (5 * n, *images.shape[1:])
    for i in range(5 * n):
        source, shift = i % n, i // n
        assert out_labels[i] == labels[source]
        expected = shifted_reference(np.asarray(images[source]), *augment.SHIFTS[shift])
        np.testing.assert_array_equal(np.asarray(out_images[i]), expected)


def test_fixed_shift_batch_keeps_labels_of_a_shuffled_batch(digits):
    labels = jnp.arange(len(digits), dtype=jnp.int32)
    virtual = jax.random.permutation(KEY, augment.expanded_size(len(digits)))[:8]
    out_images, out_labels = augment.fixed_shift_batch(digits, labels, virtual)
    np.testing.assert_array_equal(out_labels, virtual % len(digits))
    assert out_images.shape == (8, 28, 28, 1)


# --- random integer shifts --------------------------------------------------------


def test_random_shift_stays_within_k_and_reaches_k():
    k = 2
    image = np.zeros((200, 9, 9, 1), np.float32)
    image[:, 4, 4, 0] = 1.0
    moved = np.asarray(jax.jit(augment.random_shift, static_argnums=2)(KEY, image, k))
    np.testing.assert_array_equal(moved.sum(axis=(1, 2, 3)), 1.0)  # moved whole, not blurred
    where = np.argwhere(moved[..., 0])[:, 1:] - 4  # (dy, dx) of each image
    assert np.abs(where).max() == k
    assert {-k, k} <= set(where[:, 0]) and {-k, k} <= set(where[:, 1])


def test_random_shift_zero_is_identity(digits):
    assert augment.random_shift(KEY, digits, 0) is digits


# --- resampled expansions: identities and conventions ---------------------------


def test_zero_strength_is_identity(digits):
    # Traced strengths: zero is no special case in Python, the resampling itself is exact.
    close = functools.partial(np.testing.assert_allclose, atol=1e-6)
    close(jax.jit(augment.random_rotation)(KEY, digits, 0.0), digits)
    close(jax.jit(augment.random_skew)(KEY, digits, 0.0), digits)
    close(jax.jit(augment.elastic_distortion)(KEY, digits, alpha=0.0), digits)


def test_rotation_by_90_degrees_is_counter_clockwise(digits):
    turned = augment.rotate(digits[:2], 90.0)
    np.testing.assert_allclose(turned, np.rot90(np.asarray(digits[:2]), axes=(1, 2)), atol=1e-5)


def test_positive_skew_slants_forward():
    image = np.zeros((1, 9, 9, 1), np.float32)
    image[0, :, 4, 0] = 1.0  # an upright stroke through the centre
    slanted = np.asarray(augment.skew(jnp.asarray(image), 1.0))[0, ..., 0]
    # Row r sits 4 - r above the centre, so its stroke moves right by that much.
    expected = np.zeros((9, 9), np.float32)
    for r in range(9):
        expected[r, 8 - r] = 1.0
    np.testing.assert_allclose(slanted, expected, atol=1e-6)


# --- the elastic field -------------------------------------------------------------


def _gaussian_kernel(sigma: float) -> np.ndarray:
    taps = np.arange(-int(np.ceil(4 * sigma)), int(np.ceil(4 * sigma)) + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    return kernel / kernel.sum()


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_elastic_displacement_has_the_expected_scale_and_smoothness(sigma):
    alpha = 34.0
    field = np.asarray(DISPLACEMENT(KEY, (64, 28, 28), alpha, sigma))
    assert field.shape == (64, 28, 28, 2)
    # Uniform [-1, 1] noise has variance 1/3; a separable filter k multiplies it by
    # (sum k^2)^2, the same at the border as in the middle.
    expected_std = alpha * np.sqrt(1 / 3) * np.sum(_gaussian_kernel(sigma) ** 2)
    assert abs(field.std() / expected_std - 1) < 0.1
    assert abs(field.mean()) < 0.1 * expected_std
    assert abs(field[:, [0, -1]].std() / expected_std - 1) < 0.15
    # Gaussian-smoothed white noise correlates with its neighbour as exp(-1 / (4 sigma^2)).
    neighbour = np.corrcoef(field[:, :, :-1].ravel(), field[:, :, 1:].ravel())[0, 1]
    assert abs(neighbour - np.exp(-1 / (4 * sigma**2))) < 0.03


def test_elastic_displacement_components_are_independent():
    field = np.asarray(DISPLACEMENT(KEY, (64, 28, 28), 34.0, 4.0))
    assert abs(np.corrcoef(field[..., 0].ravel(), field[..., 1].ravel())[0, 1]) < 0.1


# --- the shared contract, on real digits ----------------------------------------


@pytest.mark.parametrize("name", EXPANSIONS)
def test_expansion_keeps_shape_dtype_and_range(digits, name):
    out = EXPANSIONS[name](KEY, digits)
    assert out.shape == digits.shape and out.dtype == digits.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(jnp.abs(out - digits).mean()) > 0.01  # it did something


@pytest.mark.parametrize("name", EXPANSIONS)
def test_expansion_is_deterministic_for_a_key_and_differs_across_keys(digits, name):
    expand = EXPANSIONS[name]
    first = expand(KEY, digits)
    np.testing.assert_array_equal(expand(KEY, digits), first)
    assert float(jnp.abs(expand(OTHER_KEY, digits) - first).max()) > 0.1


@pytest.mark.parametrize("name", EXPANSIONS)
def test_expansion_gives_the_same_images_eager_and_jitted(digits, name):
    np.testing.assert_allclose(EAGER[name](KEY, digits), EXPANSIONS[name](KEY, digits), atol=1e-5)


@pytest.mark.parametrize("name", EXPANSIONS)
def test_each_image_draws_its_own_distortion(digits, name):
    same = jnp.repeat(digits[:1], len(digits), axis=0)
    out = np.asarray(EXPANSIONS[name](KEY, same))
    assert len({o.tobytes() for o in out}) > 1


# --- augment_batch -----------------------------------------------------------------


def test_augment_batch_with_nothing_enabled_returns_the_images(digits):
    config = augment.AugmentConfig()
    assert not config.enabled
    assert augment.augment_batch(KEY, digits, config) is digits


@pytest.mark.parametrize("name", ALONE)
def test_augment_batch_with_one_enabled_matches_that_expansion(digits, name):
    # augment_batch splits its key into sub-keys for shift, rotation, skew, elastic.
    sub_key = jax.random.split(KEY, 4)[list(ALONE).index(name)]
    np.testing.assert_allclose(
        AUGMENT(KEY, digits, config=ALONE[name]), EXPANSIONS[name](sub_key, digits), atol=1e-5
    )


def test_augment_config_is_hashable_by_value():
    assert hash(COMBINED) == hash(augment.AugmentConfig(2, 15.0, 0.3, 34.0, 4.0))
    assert COMBINED == augment.AugmentConfig(2, 15.0, 0.3, 34.0, 4.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_shift": -1}, {"max_shift": 1.5}, {"max_degrees": -5.0}, {"elastic_sigma": 0.0}],
)
def test_augment_config_rejects_bad_values(kwargs):
    with pytest.raises((ValueError, TypeError), match=next(iter(kwargs))):
        augment.AugmentConfig(**kwargs)


def test_resampling_rejects_integer_images():
    with pytest.raises(TypeError, match="floating-point"):
        augment.rotate(jnp.zeros((1, 4, 4, 1), jnp.uint8), 10.0)


def test_show_augment_draws_the_expansions_and_refuses_bad_input_in_one_line(tmp_path):
    out = tmp_path / "augment.png"
    done = run_module("launch.show_augment", "--num_digits=2", f"--out={out}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out) and out.read_bytes().startswith(b"\x89PNG")
    assert_refused(run_module("launch.show_augment", "--num_digits=0"), "--num_digits must be")
    assert_refused(
        run_module("launch.show_augment", "--num_digits=1", f"--out={out}/x.png"),
        "cannot write",
        "choose another --out",
    )
    assert_refused(run_module("launch.show_augment", f"--out={tmp_path}"), "is a folder")
    (tmp_path / "file").write_text("")
    assert_refused(
        run_module("launch.show_augment", "--num_digits=1", f"--workdir={tmp_path}/file"),
        "choose another --workdir",
    )
