"""Datasets as in-memory arrays: TFDS image datasets read without TensorFlow.

MNIST follows Nielsen's split ("Neural Networks and Deep Learning", chapter 1):
the first 50,000 training images train, the last 10,000 validate, and the 10,000
test images are kept apart for the final score. Any other TFDS image classification
dataset of small images (`load("fashion_mnist")`, "kmnist", "emnist/digits",
"cifar10", ...) is split the same way: the end of its training split validates (10,000
images, or a sixth of a training split under 50,000).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lib.core.errors import DataError


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


def tfds_dir(data_dir: str | None = None) -> str:
    """The TFDS data folder: `data_dir`, else $TFDS_DATA_DIR as it is now (TFDS itself
    keeps the one it saw first), else TFDS's default."""
    return os.path.expanduser(
        data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    )


def _prepared_source(name: str, split: str, data_dir: str | None):
    """The split read from a prepared TFDS copy, or None where there is none."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=tfds_dir(data_dir), download=False)
    except Exception:  # TFDS raises several types for "not prepared here"
        return None


def _downloaded_source(name: str, split: str, data_dir: str | None):
    """The split after TFDS downloads and prepares it (its builders need TensorFlow)."""
    import tensorflow_datasets as tfds

    where = tfds_dir(data_dir)
    try:
        return tfds.data_source(name, split=split, data_dir=where, download=True)
    except ModuleNotFoundError as failed:
        raise DataError(
            f"dataset '{name}' is not prepared in {where}, and preparing it from its "
            f"download needs a package that is not installed ({failed.name}): install "
            "the download extra (pip install -e '.[download]'), or set TFDS_DATA_DIR to a "
            "folder that holds a prepared copy"
        ) from None
    except Exception as failed:
        raise DataError(
            f"dataset '{name}' is not prepared in {where} and could not be downloaded "
            f"({type(failed).__name__}: {str(failed).splitlines()[0] if str(failed) else ''})."
            " Set TFDS_DATA_DIR to a folder that holds a prepared copy "
            "(for example TFDS_DATA_DIR=../shared/tensorflow_datasets), "
            "or run once with a network so TFDS can download it."
        ) from None


def _decode_all(source, name: str, split: str, data_dir: str | None):
    """Every example of a TFDS data source as arrays; a damaged file is named as such."""
    try:
        examples = source.__getitems__(list(range(len(source))))
        images = np.stack([e["image"] for e in examples]).astype(np.uint8)
        labels = np.asarray([e["label"] for e in examples], dtype=np.int32)
    except Exception as failed:  # array_record and the image decoder raise many types
        where = Path(tfds_dir(data_dir)).expanduser() / name
        raise DataError(
            f"the '{split}' split of {name} in {where} cannot be read "
            f"({type(failed).__name__}: {_first_line(failed)}): its files are damaged; "
            f"prepare the dataset again (remove {where} and copy a prepared one there, "
            "or run once with a network)"
        ) from None
    return images, labels


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else "no message"


def _read_cache(cache: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The arrays cached in `cache`, or None if it is missing or damaged (then removed,
    to be rebuilt). A zip member's CRC-32 is checked as it is read, so changed bytes are
    caught as well as a truncated file."""
    if not cache.exists():
        return None
    try:
        with np.load(cache) as f:
            images, labels = f["images"], f["labels"]
        if images.ndim == 4 and labels.ndim == 1 and len(images) == len(labels):
            return images, labels
    except Exception:  # zipfile, numpy's format reader and the OS raise many types
        pass
    try:
        cache.unlink()
    except OSError:
        pass
    return None


def load_tfds_arrays(
    name: str, split: str, data_dir: str | None = None, cache_dir: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All of a TFDS image-classification split as (uint8 images NHWC, int32 labels).

    Decoding tens of thousands of PNGs takes seconds, so the arrays are cached as .npz;
    a damaged cache is rebuilt, and a damaged dataset file raises a DataError that
    names the dataset's folder and how to prepare it again.
    MNIST that is not prepared for TFDS is downloaded from the files TFDS's own builder
    uses and put into TFDS's stored order (see `mnist_from_download`), so both sources
    give the same arrays and no TensorFlow is needed.
    """
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    cache = cache_dir / f"{name.replace('/', '_')}-{split}.npz"
    cached = _read_cache(cache)
    if cached is not None:
        return cached
    source = _prepared_source(name, split, data_dir)
    if source is not None:
        images, labels = _decode_all(source, name, split, data_dir)
    elif name == "mnist":
        images, labels = mnist_from_download(split, data_dir)
    else:
        images, labels = _decode_all(
            _downloaded_source(name, split, data_dir), name, split, data_dir
        )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, cache)  # atomic: a concurrent reader never sees half a file
    except OSError:
        pass  # an unwritable cache only costs time
    return images, labels


# ---------------------------------------------------------------------------------------
# MNIST from its download, without TensorFlow.

MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
# The files TFDS's MNIST builder downloads, with the SHA-256 sums TFDS records for them.
MNIST_FILES = {
    "train": (
        ("train-images-idx3-ubyte.gz",
         "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        ("train-labels-idx1-ubyte.gz",
         "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    ),
    "test": (
        ("t10k-images-idx3-ubyte.gz",
         "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        ("t10k-labels-idx1-ubyte.gz",
         "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    ),
}  # fmt: skip


def tfds_order(n: int, split: str) -> np.ndarray:
    """The original index of the example TFDS stores at each position of a split.

    TFDS writes a split sorted by the MD5 of (split name + the example's key); MNIST's
    keys are the indices in the original files. So `original[tfds_order(n, split)]`
    is the split as a prepared TFDS copy holds it.
    """
    salt = hashlib.md5(split.encode())

    def key_hash(i: int) -> int:
        h = salt.copy()
        h.update(str(i).encode())
        return int(h.hexdigest(), 16)

    return np.asarray(sorted(range(n), key=key_hash), dtype=np.int64)


def parse_idx(raw: bytes, what: str) -> np.ndarray:
    """An IDX file's uint8 array (LeCun's format: magic 0x0801 labels, 0x0803 images)."""
    if len(raw) < 8 or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise DataError(f"{what} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * d : 8 + 4 * d], "big") for d in range(ndim))
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise DataError(f"{what} holds {len(body)} bytes, its header says {shape}")
    return np.frombuffer(body, np.uint8).reshape(shape)


def _fetch(url: str, sha256: str, folder: Path) -> bytes:
    """The file at `url`, checked against its SHA-256 and kept in `folder`."""
    path = folder / url.rsplit("/", 1)[-1]
    if path.exists():
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() == sha256:
            return raw
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            raw = response.read()
    except (urllib.error.URLError, OSError) as failed:
        reason = getattr(failed, "reason", failed)
        raise DataError(
            f"MNIST is not prepared in {folder.parent.parent} and could not be downloaded from "
            f"{url} ({reason}). Set TFDS_DATA_DIR to a folder that holds a prepared copy "
            "(for example TFDS_DATA_DIR=../shared/tensorflow_datasets), or run once with "
            "a network."
        ) from None
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise DataError(f"{url} did not download intact (its SHA-256 differs); run again")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
    except OSError:
        pass
    return raw


def mnist_from_download(
    split: str, data_dir: str | None = None, url: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An MNIST split from the IDX files TFDS's builder downloads, in TFDS's order.

    The files land in `<TFDS data dir>/downloads/mnist_idx`; `url` (default: the
    environment's CLASSIC_NETS_MNIST_URL, else TFDS's source) names a mirror.
    """
    if split not in MNIST_FILES:
        raise DataError(f"MNIST has splits {sorted(MNIST_FILES)}, not '{split}'")
    base = url or os.environ.get("CLASSIC_NETS_MNIST_URL") or MNIST_URL
    folder = Path(tfds_dir(data_dir)).expanduser() / "downloads" / "mnist_idx"
    (images_file, images_sha), (labels_file, labels_sha) = MNIST_FILES[split]
    images = parse_idx(
        gzip.decompress(_fetch(base.rstrip("/") + "/" + images_file, images_sha, folder)),
        images_file,
    )
    labels = parse_idx(
        gzip.decompress(_fetch(base.rstrip("/") + "/" + labels_file, labels_sha, folder)),
        labels_file,
    )
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{images_file} and {labels_file} do not hold one image per label")
    order = tfds_order(len(labels), split)
    return images[order][..., None], labels[order].astype(np.int32)


ORDERS = ("book", "tfds")

# Datasets known to work with the book's nets (any other TFDS image classification
# dataset of small images may be named as well).
DATASETS = ("mnist", "fashion_mnist", "kmnist", "emnist/digits", "cifar10")


def _held_out(n: int) -> int:
    """Images held out of a training split of `n` for validation: MNIST's 10,000 for a
    split of 50,000 or more, a sixth of a smaller one."""
    return 10_000 if n >= 50_000 else n // 6


def _train_split_size(dataset: str, data_dir: str | None) -> int | None:
    """Images in the dataset's training split, read from its prepared copy's metadata or
    its cache (nothing is decoded); None when neither is here yet."""
    cache = default_cache_dir() / f"{dataset.replace('/', '_')}-train.npz"
    source = _prepared_source(dataset, "train", data_dir)
    if source is not None:
        return len(source)
    cached = _read_cache(cache)
    if cached is not None:
        return len(cached[1])
    return 60_000 if dataset == "mnist" else None  # MNIST's download has 60,000


def training_size(dataset: str = "mnist", data_dir: str | None = None) -> int | None:
    """Images that train in `load(dataset)` (before any train_size), without decoding
    them: for a run to check its settings before it starts; None when the dataset is not
    prepared here yet (loading it will say how to)."""
    n = _train_split_size(dataset, data_dir)
    return None if n is None else n - _held_out(n)


def load(
    dataset: str = "mnist",
    train_size: int | None = None,
    data_dir: str | None = None,
    order: str = "book",
    validation_size: int | None = None,
) -> Splits:
    """`dataset`'s images and labels, with `validation_size` images held out of the end of
    its training split (default: 10,000 from a split of 50,000 or more, as MNIST's, a sixth
    of a smaller one).

    For MNIST, `order="book"` puts both splits back in the original files' order
    (`tfds_order`), so the validation images are the last 10,000 of the original 60,000,
    the book's (`mnist.pkl.gz` of `network3.py`); "tfds" keeps the order TFDS stores
    them in, as every other dataset is kept (they have no book's split).
    `train_size` keeps only the first images of the training part, for quick runs;
    the validation and test sets are unchanged by it.
    """
    if order not in ORDERS:
        raise DataError(f"unknown order '{order}'; choose from {', '.join(ORDERS)}")
    train_x, train_y = load_tfds_arrays(dataset, "train", data_dir)
    test_x, test_y = load_tfds_arrays(dataset, "test", data_dir)
    if dataset == "mnist" and order == "book":
        back = np.argsort(tfds_order(len(train_y), "train"))
        train_x, train_y = train_x[back], train_y[back]
        back = np.argsort(tfds_order(len(test_y), "test"))
        test_x, test_y = test_x[back], test_y[back]
    if dataset.startswith("emnist"):
        # TFDS stores EMNIST's images transposed (as the original files do); put them
        # upright, as MNIST's are, so that pictures and shape-aware augmentations agree.
        train_x, test_x = train_x.transpose(0, 2, 1, 3), test_x.transpose(0, 2, 1, 3)
    held_out = _held_out(len(train_y)) if validation_size is None else validation_size
    if not 0 < held_out < len(train_y):
        raise DataError(f"validation_size must be in (0, {len(train_y)}), got {held_out}")
    n_train = len(train_y) - held_out
    if train_size is not None:
        if not 0 < train_size <= n_train:
            raise DataError(f"train_size must be in [1, {n_train}] for {dataset}, got {train_size}")
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


def num_classes(splits: Iterable[Split]) -> int:
    """Classes of a dataset, as the labels of its `splits` (a Splits, or any of its parts)
    show: one more than the largest."""
    return int(max(s.labels.max(initial=0) for s in splits)) + 1


def mnist(
    validation_size: int = 10_000,
    train_size: int | None = None,
    data_dir: str | None = None,
    order: str = "tfds",
) -> Splits:
    """MNIST (`load("mnist", ...)`), in TFDS's stored order unless `order="book"` (so by
    default its validation images are the last 10,000 in TFDS's order, not the book's)."""
    return load("mnist", train_size, data_dir, order, validation_size)
