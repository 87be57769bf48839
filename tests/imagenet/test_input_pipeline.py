"""The Grain input pipeline: shapes and ranges, determinism, resuming, per-host shards."""

from __future__ import annotations

import itertools
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest
from commands import ROOT
from PIL import Image

from lib.core.errors import DataError
from lib.imagenet import input_pipeline as ip

SIZE = 32
BATCH = 16


@pytest.fixture(scope="module")
def mnist64():
    return ip.open_tfds_source("mnist", "train[:64]")


def indexed_source(n):
    """Tiny images whose label is their record index, to see which records a host read."""
    return ip.SyntheticImages(n, size=(12, 10), num_classes=10**6, pool=1)


def batches(source, n, **kwargs):
    kwargs = {"train": True, "image_size": SIZE, "batch_size": BATCH, "seed": 0, **kwargs}
    return list(itertools.islice(iter(ip.make_loader(source, **kwargs)), n))


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_training_batches_of_grayscale_mnist(mnist64):
    batch = batches(mnist64, 1)[0]
    assert batch["image"].shape == (BATCH, SIZE, SIZE, 3)
    assert batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and set(batch["label"]) <= set(range(10))
    low = (0 - np.asarray(ip.IMAGENET_MEAN)) / ip.IMAGENET_STD
    high = (1 - np.asarray(ip.IMAGENET_MEAN)) / ip.IMAGENET_STD
    per_channel = batch["image"].reshape(-1, 3)
    assert np.all(per_channel >= low - 1e-5) and np.all(per_channel <= high + 1e-5)
    assert per_channel.min(axis=0) == pytest.approx(low, abs=1e-5)  # MNIST has black pixels

    raw = batches(mnist64, 1, normalize=False)[0]["image"]
    assert raw.dtype == np.uint8
    # Gray became three equal channels; normalising on the device gives the same numbers.
    np.testing.assert_array_equal(raw[..., 0], raw[..., 1])
    np.testing.assert_array_equal(raw[..., 0], raw[..., 2])
    np.testing.assert_allclose(ip.normalize(raw), batch["image"], atol=1e-5)


def test_evaluation_covers_every_image_once_and_masks_the_padding(mnist64):
    evaluated = list(ip.make_loader(mnist64, train=False, image_size=SIZE, batch_size=24))
    assert [int(b["mask"].sum()) for b in evaluated] == [24, 24, 16]
    assert all(b["image"].shape == (24, SIZE, SIZE, 3) for b in evaluated)
    labels = np.concatenate([b["label"][b["mask"]] for b in evaluated])
    np.testing.assert_array_equal(labels, [mnist64[i]["label"] for i in range(64)])
    # Evaluation is not random: the same images come out every time.
    again = list(ip.make_loader(mnist64, train=False, image_size=SIZE, batch_size=24, seed=7))
    assert_same(evaluated, again)


def test_same_seed_same_batches_other_seed_other_batches(mnist64):
    first = batches(mnist64, 3, seed=1)
    assert_same(first, batches(mnist64, 3, seed=1))
    other = batches(mnist64, 3, seed=2)
    assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_worker_processes_give_the_same_images_grouped_per_worker(mnist64):
    # Each worker batches its own records (worker w takes stream positions w, w+2, ...),
    # but every record's augmentation depends only on the seed and its position.
    def images(worker_count):
        got = batches(mnist64, 2, worker_count=worker_count)
        flat = np.concatenate([b["image"] for b in got]).reshape(2 * BATCH, -1)
        return flat, np.concatenate([b["label"] for b in got])

    (with_workers, labels_w), (in_process, labels_p) = images(2), images(0)
    np.testing.assert_array_equal(with_workers[:BATCH], in_process[0::2][:BATCH])
    np.testing.assert_array_equal(labels_w[:BATCH], labels_p[0::2])


def test_resuming_from_iterator_state_continues_exactly(mnist64):
    loader = ip.make_loader(mnist64, train=True, image_size=SIZE, batch_size=BATCH, seed=3)
    iterator = iter(loader)
    for _ in range(3):  # past the end of the first epoch (64 images = 4 batches)
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]

    resumed = iter(ip.make_loader(mnist64, train=True, image_size=SIZE, batch_size=BATCH, seed=3))
    resumed.set_state(state)
    assert_same([next(resumed) for _ in range(3)], expected)


@pytest.mark.parametrize("train", [True, False])
def test_hosts_read_disjoint_shares(train):
    source = indexed_source(50)
    seen = []
    for host in range(2):
        shard = grain.sharding.ShardOptions(host, 2, drop_remainder=train)
        loader = ip.make_loader(
            source, train=train, image_size=8, batch_size=5, num_epochs=1, shard_options=shard
        )
        labels = [b["label"][b["mask"]] if "mask" in b else b["label"] for b in loader]
        seen.append(set(np.concatenate(labels).tolist()))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(50))
    assert len(seen[0]) == len(seen[1]) == 25


def test_default_sharding_follows_the_jax_process():
    loader = ip.make_loader(indexed_source(10), train=True, image_size=8, batch_size=2)
    options = loader._sampler._shard_options
    assert (options.shard_index, options.shard_count) == (jax.process_index(), jax.process_count())


def test_pad_epoch_gives_every_host_the_same_number_of_steps():
    source = indexed_source(11)
    steps = ip.eval_steps(11, batch_size=2, process_count=2)
    assert steps == 3
    # With workers, each one's share ends in its own short batch:
    # 11 records over 3 workers is 4 + 4 + 3 records, 2 + 2 + 2 batches of 2.
    assert ip.eval_steps(11, batch_size=2, worker_count=3) == 6
    assert ip.eval_steps(12, batch_size=4, worker_count=2) == 4
    for host, real in ((0, 6), (1, 5)):
        loader = ip.make_loader(
            source, train=False, image_size=8, batch_size=2,
            shard_options=grain.sharding.ShardOptions(host, 2),
        )  # fmt: skip
        padded = list(ip.pad_epoch(iter(loader), steps))
        assert len(padded) == steps
        assert sum(int(b["mask"].sum()) for b in padded) == real


def test_inception_crop_box_stays_inside_with_the_published_ranges():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = ip.inception_crop_box(500, 375, rng)
        assert 0 <= left < right <= 500 and 0 <= top < bottom <= 375
        w, h = right - left, bottom - top
        assert 0.07 <= w * h / (500 * 375) <= 1.0
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    # A strip no crop can satisfy falls back to its centre, at the nearest ratio.
    box = ip.inception_crop_box(400, 10, rng, area_range=(0.9, 1.0))
    assert box == (193, 0, 206, 10)  # 13 x 10 = 4:3


def test_eval_crop_is_the_centre_and_flip_mirrors():
    pixels = np.zeros((40, 80), np.uint8)
    pixels[:, :40] = 255  # left half white
    element = ip.DecodeImage().map({"image": pixels, "label": 3})
    assert element["image"].mode == "RGB" and element["label"] == 3
    cropped = np.asarray(ip.ResizeCenterCrop(8).map(element)["image"])
    # The centre 35x35 box straddles the edge: left of it white, right black.
    assert cropped[:, 0].min() == 255 and cropped[:, -1].max() == 0

    flip = ip.RandomHorizontalFlip()
    outcomes = {
        np.asarray(flip.random_map(element, np.random.default_rng(s))["image"])[0, 0, 0]
        for s in range(20)
    }
    assert outcomes == {0, 255}


def test_device_prefetch_state_is_that_of_the_batches_handed_out(mnist64):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def loader():
        return ip.make_loader(mnist64, train=True, image_size=SIZE, batch_size=BATCH, seed=5)

    prefetch = ip.DevicePrefetch(iter(loader()), sharding, size=3)
    first = [next(prefetch) for _ in range(2)]
    assert isinstance(first[0]["image"], jax.Array)
    state = prefetch.get_state()
    third = next(prefetch)

    resumed = ip.DevicePrefetch(iter(loader()), sharding, size=3)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["image"], third["image"])


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="TFDS_DATA_DIR"):
        ip.open_tfds_source("mnist", "train", data_dir=str(tmp_path))


def test_synthetic_images_decode_like_imagenet_jpegs():
    source = ip.SyntheticImages(4, pool=2)
    image = Image.open(__import__("io").BytesIO(source[1]["image"]))
    assert image.format == "JPEG" and image.size == (500, 375)
    batch = batches(source, 1, batch_size=4, image_size=64)[0]
    assert batch["image"].shape == (4, 64, 64, 3)


def test_the_data_folder_is_read_when_the_split_is_opened(tmp_path):
    """TFDS keeps the $TFDS_DATA_DIR it saw when first imported; the pipeline reads it
    anew, so a process that imported TFDS under another folder still finds the data."""
    script = (
        "import os, sys\n"
        "real = os.environ['TFDS_DATA_DIR']\n"
        f"os.environ['TFDS_DATA_DIR'] = {str(tmp_path)!r}\n"
        "import tensorflow_datasets\n"
        "os.environ['TFDS_DATA_DIR'] = real\n"
        "from lib.imagenet import input_pipeline\n"
        "print(len(input_pipeline.open_tfds_source('mnist', 'train[:8]')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "8", done.stderr[-2000:]
