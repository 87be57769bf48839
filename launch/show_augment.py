"""A picture of the training-data expansions of lib/nielsen/augment.py applied to MNIST digits.

    python -m launch.show_augment --workdir runs/show_augment --seed 0

writes runs/show_augment/augment.png (or the file named by --out): one row per digit,
one column per expansion: the original, its four one-pixel shifts (Nielsen,
chapter 6), then a random shift, rotation, skew and elastic distortion (Simard,
Steinkraus & Platt 2003) and all four together. A thin red cross marks the image centre,
so the one-pixel moves can be seen against it.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import common
from lib.core import data
from lib.core.errors import UserError
from lib.nielsen import augment

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/show_augment", "Folder for augment.png.")
flags.DEFINE_string("out", None, "PNG to write; defaults to <workdir>/augment.png.")
flags.DEFINE_integer("seed", 0, "Seed of the random expansions.")
flags.DEFINE_integer("num_digits", 6, "How many training digits to show, one per row.")
flags.DEFINE_string("data_dir", None, "TFDS data folder; defaults to $TFDS_DATA_DIR.")

COMBINED = augment.AugmentConfig(
    max_shift=2, max_degrees=15.0, max_skew=0.3, elastic_alpha=34.0, elastic_sigma=4.0
)


def expansions(key: jax.Array, images: jax.Array) -> list[tuple[str, jax.Array]]:
    """(column title, images) for every expansion, in the order of the figure's columns."""
    batch = images.shape[0]
    names = ("none", "up", "down", "left", "right")
    shifted = [
        (f"shift {name}" if i else "original", augment.one_pixel_shift(images, jnp.full(batch, i)))
        for i, name in enumerate(names)
    ]
    k_shift, k_rotation, k_skew, k_elastic, k_all = jax.random.split(key, 5)
    return [
        *shifted,
        ("random shift\n|d| <= 3", augment.random_shift(k_shift, images, 3)),
        ("rotation\n<= 20 deg", augment.random_rotation(k_rotation, images, 20.0)),
        ("skew\n|s| <= 0.4", augment.random_skew(k_skew, images, 0.4)),
        ("elastic\nalpha 34, sigma 4", augment.elastic_distortion(k_elastic, images, 34.0, 4.0)),
        ("all four\n(augment_batch)", augment.augment_batch(k_all, images, COMBINED)),
    ]


def plot(columns: list[tuple[str, jax.Array]], path: Path) -> None:
    from lib.core.plots import subplots

    rows = columns[0][1].shape[0]
    fig, axes = subplots(
        rows, len(columns), figsize=(1.15 * len(columns), 1.15 * rows + 0.5), squeeze=False
    )
    for col, (title, images) in enumerate(columns):
        images = np.asarray(images)
        height, width = images.shape[1:3]
        for row in range(rows):
            ax = axes[row, col]
            ax.imshow(images[row, ..., 0], cmap="gray_r", vmin=0.0, vmax=1.0)
            ax.axhline((height - 1) / 2, color="tab:red", lw=0.4, alpha=0.6)
            ax.axvline((width - 1) / 2, color="tab:red", lw=0.4, alpha=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, col].set_title(title, fontsize=7)
    fig.suptitle("Training-data expansions (lib/nielsen/augment.py)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    if not 1 <= FLAGS.num_digits <= 50:
        raise UserError(f"--num_digits must be in [1, 50], got {FLAGS.num_digits}")
    out = Path(FLAGS.out) if FLAGS.out else Path(FLAGS.workdir) / "augment.png"
    flag = "--out" if FLAGS.out else "--workdir"
    if out.is_dir():
        raise UserError(f"{out} is a folder; name a PNG file with --out")
    digits = data.mnist(train_size=FLAGS.num_digits, data_dir=FLAGS.data_dir).train.images
    columns = expansions(jax.random.key(FLAGS.seed), jnp.asarray(digits))
    try:
        plot(columns, out)
    except OSError as error:
        raise UserError(f"cannot write {out} ({error.strerror}); choose another {flag}") from None
    print(out)


if __name__ == "__main__":
    common.run_command(main)
