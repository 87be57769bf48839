"""MNIST loading: the prepared TFDS copy, and the download path that needs no TensorFlow."""

import functools
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest

from lib.core import data


def idx_bytes(array: np.ndarray) -> bytes:
    """`array` (uint8) in LeCun's IDX format."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def test_tfds_order_recovers_the_original_mnist_order():
    # MNIST's original files begin with these labels (LeCun's train and t10k files).
    first = {"train": [5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 3, 5], "test": [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]}
    for split, expected in first.items():
        try:
            _, stored = data.load_tfds_arrays("mnist", split)  # the cache the other tests use
        except data.DataError as missing:
            pytest.skip(str(missing))
        order = data.tfds_order(len(stored), split)
        original = np.empty_like(stored)
        original[order] = stored
        assert original[: len(expected)].tolist() == expected
        assert sorted(order.tolist()) == list(range(len(stored)))


def test_the_books_order_holds_out_the_last_10000_original_images():
    try:
        book = data.mnist(order="book")
        stored = data.mnist()
    except data.DataError as missing:
        pytest.skip(str(missing))
    assert book.train.labels[:12].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 3, 5]
    assert book.test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    held_out = data.tfds_order(60_000, "train")[50_000:]  # original indices TFDS holds out
    assert not set(held_out.tolist()) >= set(range(50_000, 60_000))  # the splits differ
    positions = np.argsort(data.tfds_order(60_000, "train"))[50_000:]  # book's, stored
    _, stored_y = data.load_tfds_arrays("mnist", "train")
    assert book.validation.labels.tolist() == stored_y[positions].tolist()
    assert sorted(book.test.labels.tolist()) == sorted(stored.test.labels.tolist())
    with pytest.raises(data.DataError, match="choose from book, tfds"):
        data.mnist(order="lecun")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def pixels(images: np.ndarray) -> np.ndarray:
    return images[..., None].astype(np.float32) / 255.0


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local MNIST mirror of small made-up IDX files; yields (url, files by split)."""
    root = tmp_path / "mirror"
    root.mkdir()
    rng = np.random.default_rng(0)
    made, sums = {}, {}
    for split, n in (("train", 120), ("test", 30)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        made[split] = (images, labels)
        names = []
        for (name, _), array in zip(data.MNIST_FILES[split], (images, labels), strict=True):
            raw = gzip.compress(idx_bytes(array))
            (root / name).write_bytes(raw)
            names.append((name, hashlib.sha256(raw).hexdigest()))
        sums[split] = tuple(names)
    monkeypatch.setattr(data, "MNIST_FILES", sums)
    monkeypatch.setenv("CLASSIC_NETS_CACHE", str(tmp_path / "cache"))
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("CLASSIC_NETS_MNIST_URL", f"http://127.0.0.1:{server.server_port}/")
    yield root, made, server, str(tmp_path / "tfds")  # an empty TFDS data folder
    server.shutdown()


def test_mnist_downloads_into_tfds_order_without_tensorflow(mirror, tmp_path):
    root, made, server, empty = mirror
    splits = data.mnist(validation_size=20, data_dir=empty)
    train_x, train_y = made["train"]
    order = data.tfds_order(120, "train")
    np.testing.assert_array_equal(splits.train.labels, train_y[order][:100])
    np.testing.assert_array_equal(splits.validation.labels, train_y[order][100:])
    np.testing.assert_array_equal(splits.train.images, pixels(train_x[order][:100]))
    test_x, _ = made["test"]
    np.testing.assert_array_equal(splits.test.images, pixels(test_x[data.tfds_order(30, "test")]))
    assert splits.train.images.shape == (100, 28, 28, 1)
    # The downloads are kept: with the mirror gone and the array cache cleared, it loads.
    server.shutdown()
    for cached in (tmp_path / "cache").iterdir():
        cached.unlink()
    kept = tmp_path / "tfds" / "downloads" / "mnist_idx"
    assert sorted(p.name for p in kept.iterdir()) == sorted(p.name for p in root.iterdir())
    again = data.mnist(validation_size=20, data_dir=empty)
    np.testing.assert_array_equal(again.train.images, splits.train.images)


def test_a_corrupted_download_is_refused(mirror):
    root, _, _, empty = mirror
    name = data.MNIST_FILES["test"][1][0]
    (root / name).write_bytes(gzip.compress(b"not the labels"))
    with pytest.raises(data.DataError, match="did not download intact"):
        data.mnist_from_download("test", empty)


def test_an_unreachable_mirror_says_how_to_point_tfds(tmp_path):
    with pytest.raises(data.DataError, match="TFDS_DATA_DIR") as refused:
        data.mnist_from_download("test", str(tmp_path), url="http://127.0.0.1:9/")
    assert f"not prepared in {tmp_path} " in str(refused.value)  # the folder it looked in


def test_parse_idx_refuses_what_is_not_idx():
    with pytest.raises(data.DataError, match="not an IDX file"):
        data.parse_idx(b"PK\x03\x04 a zip file", "x")
    with pytest.raises(data.DataError, match="header says"):
        data.parse_idx(idx_bytes(np.zeros((2, 3, 4), np.uint8))[:-1], "x")


def test_any_prepared_tfds_dataset_loads_split_as_mnist_is(tmp_path, monkeypatch):
    from fake_tfds import prepared_copy

    mnist = data.mnist(order="tfds")
    monkeypatch.setenv("CLASSIC_NETS_CACHE", str(tmp_path / "cache"))
    prepared_copy(tmp_path / "tfds", "fashion_mnist", train=600, test=200)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    assert data.training_size("fashion_mnist") == 500  # from the metadata: nothing decoded
    splits = data.load("fashion_mnist")
    assert [len(s) for s in splits] == [500, 100, 200]  # a sixth of a small split validates
    np.testing.assert_array_equal(splits.train.images, mnist.train.images[:500])
    np.testing.assert_array_equal(splits.validation.labels, mnist.train.labels[500:600])
    assert data.num_classes(splits) == 10
    assert len(data.load("fashion_mnist", train_size=50).train) == 50
    with pytest.raises(data.DataError, match=r"train_size must be in \[1, 500\] for fashion"):
        data.load("fashion_mnist", train_size=501)


def test_emnist_is_put_upright_and_cached_under_a_flat_name(tmp_path, monkeypatch):
    from fake_tfds import prepared_copy

    mnist = data.mnist(order="tfds")
    monkeypatch.setenv("CLASSIC_NETS_CACHE", str(tmp_path / "cache"))
    prepared_copy(tmp_path / "tfds", "emnist/digits", train=120, test=30, version="3.1.0")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    splits = data.load("emnist/digits")
    np.testing.assert_array_equal(
        splits.train.images, mnist.train.images[:100].transpose(0, 2, 1, 3)
    )
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "emnist_digits-test.npz",
        "emnist_digits-train.npz",
    ]
