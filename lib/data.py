"""Datasets as in-memory arrays: TFDS image datasets read without TensorFlow.

MNIST follows Nielsen's split ("Neural Networks and Deep Learning", chapter 1):
the first 50,000 training images train, the last 10,000 validate, and the 10,000
test images are kept apart for the final score.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lib.errors import UserError


class DataError(UserError):
    """A dataset that cannot be found, prepared or read; the message says what to do."""


class Split(NamedTuple):
    images: np.ndarray  # float32, (N, H, W, C), values in [0, 1]
    labels: np.ndarray  # int32, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int) -> Split:
        return Split(self.images[:n], self.labels[:n])


class Splits(NamedTuple):
    train: Split
    validation: Split
    test: Split


def default_cache_dir() -> Path:
    """Where decoded datasets are cached: $CLASSIC_NETS_CACHE or ~/.cache/classic_nets."""
    env = os.environ.get("CLASSIC_NETS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "classic_nets"


def _data_source(name: str, split: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as missing:  # TFDS raises several types for "not prepared here"
        where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        try:
            return tfds.data_source(name, split=split, data_dir=data_dir, download=True)
        except ModuleNotFoundError as failed:
            raise DataError(
                f"dataset '{name}' is not prepared in {where}, and preparing it from its "
                f"download needs a package that is not installed ({failed.name}): install "
                "the download extra (pip install -e '.[download]'), or set TFDS_DATA_DIR to a "
                "folder that holds a prepared copy"
            ) from missing
        except Exception as failed:
            raise DataError(
                f"dataset '{name}' is not prepared in {where} and could not be downloaded "
                f"({type(failed).__name__}: {str(failed).splitlines()[0] if str(failed) else ''})."
                " Set TFDS_DATA_DIR to a folder that holds a prepared copy "
                "(for example TFDS_DATA_DIR=../shared/tensorflow_datasets), "
                "or run once with a network so TFDS can download it."
            ) from missing


def load_tfds_arrays(
    name: str, split: str, data_dir: str | None = None, cache_dir: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All of a TFDS image-classification split as (uint8 images NHWC, int32 labels).

    Decoding tens of thousands of PNGs takes seconds, so the arrays are cached as .npz.
    """
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    cache = cache_dir / f"{name}-{split}.npz"
    if cache.exists():
        with np.load(cache) as f:
            return f["images"], f["labels"]
    source = _data_source(name, split, data_dir)
    examples = source.__getitems__(list(range(len(source))))
    images = np.stack([e["image"] for e in examples]).astype(np.uint8)
    labels = np.asarray([e["label"] for e in examples], dtype=np.int32)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, cache)  # atomic: a concurrent reader never sees half a file
    except OSError:
        pass  # an unwritable cache only costs time
    return images, labels


def mnist(
    validation_size: int = 10_000,
    train_size: int | None = None,
    data_dir: str | None = None,
) -> Splits:
    """MNIST with the validation images held out of the end of the training split.

    `train_size` keeps only the first images of the training part, for quick runs;
    the validation and test sets are unchanged by it.
    """
    train_x, train_y = load_tfds_arrays("mnist", "train", data_dir)
    test_x, test_y = load_tfds_arrays("mnist", "test", data_dir)
    if not 0 < validation_size < len(train_y):
        raise DataError(f"validation_size must be in (0, {len(train_y)}), got {validation_size}")
    n_train = len(train_y) - validation_size
    if train_size is not None:
        if not 0 < train_size <= n_train:
            raise DataError(f"train_size must be in [1, {n_train}], got {train_size}")
        n_keep = train_size
    else:
        n_keep = n_train

    def to_split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split((x.astype(np.float32) / 255.0), y.astype(np.int32))

    return Splits(
        train=to_split(train_x[:n_keep], train_y[:n_keep]),
        validation=to_split(train_x[n_train:], train_y[n_train:]),
        test=to_split(test_x, test_y),
    )
