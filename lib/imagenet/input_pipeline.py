"""ImageNet-style input pipeline: Grain over random-access sources (TFDS array_record).

Training images get the Inception crop (Szegedy et al. 2014, "Going Deeper with
Convolutions", section 6: a random patch of 8%-100% of the area with aspect ratio
3/4-4/3, resized to the model's input) and a random horizontal flip; evaluation
images are resized so the shorter side is `image_size / 0.875` (256 for 224) and
centre-cropped. Grayscale images become three channels; pixel values are then
normalised with the ImageNet mean and standard deviation.

Decoding and augmentation run on the host, in `worker_count` processes, each
reading ahead `worker_buffer_size` batches. The sampler shards the records over JAX
processes (each host reads a disjoint share and batches `batch_size` images of it)
and fixes the order and every random draw from `seed`: a record's augmentation
depends only on the seed and its position in the sampled stream, so any worker count
yields the same images; each worker batches its own records (worker w of W takes
positions w, w+W, ...), so the grouping into batches depends on `worker_count`
(keep it fixed across a resume). The loader's iterator is resumable:
`get_state()` / `set_state()` (bytes), which `DevicePrefetch` keeps in step with
the batches actually handed out.

    source = open_tfds_source("imagenet2012", "train", data_dir)
    loader = make_loader(source, train=True, image_size=224, batch_size=256, seed=0,
                         worker_count=8)
    for batch in DevicePrefetch(iter(loader), sharding):   # {"image", "label"}
        ...
"""

from __future__ import annotations

import collections
import io
import math
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import numpy as np
from PIL import Image

from lib.core.data import tfds_dir
from lib.core.errors import DataError

# ImageNet channel statistics of pixel values in [0, 1] (RGB), the usual constants.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Evaluation crops this fraction of the resized image (224 of 256).
EVAL_CROP_FRACTION = 0.875


def open_tfds_source(
    name: str, split: str, data_dir: str | None = None, image_key: str = "image"
) -> Any:
    """A TFDS dataset split as a random-access source, read offline.

    Images stay encoded (`SkipDecoding`) so that `DecodeImage` decodes them in the
    workers and can shrink large JPEGs while decoding. `split` takes TFDS slicing,
    e.g. "train[:64]".
    """
    import tensorflow_datasets as tfds

    where = tfds_dir(data_dir)  # TFDS alone would keep the first $TFDS_DATA_DIR it saw
    try:
        return tfds.data_source(
            name,
            split=split,
            data_dir=where,
            download=False,
            decoders={image_key: tfds.decode.SkipDecoding()},
        )
    except Exception as err:  # TFDS raises several types for "not prepared here"
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"cannot read split '{split}' of TFDS dataset '{name}' from {where} "
            f"({first_line}). Prepare it there in array_record format, or point "
            "--data_dir / TFDS_DATA_DIR at a folder that holds it."
        ) from err


# ---------------------------------------------------------------------------------------
# Per-image transformations (they run in the worker processes).


class DecodeImage(grain.transforms.Map):
    """Encoded bytes or a uint8 array -> an RGB PIL image; the label -> int32.

    `min_size`: for JPEGs, let the decoder scale by 1/2, 1/4 or 1/8 as long as both
    sides stay at least this large (much cheaper than decoding full size and shrinking
    afterwards). Only for evaluation, where the final resize is known in advance.
    """

    def __init__(self, image_key: str = "image", label_key: str = "label", min_size: int = 0):
        self.image_key, self.label_key, self.min_size = image_key, label_key, min_size

    def map(self, element: Mapping[str, Any]) -> dict[str, Any]:
        data = element[self.image_key]
        if isinstance(data, bytes | bytearray):
            image = Image.open(io.BytesIO(data))
            if self.min_size and image.format == "JPEG":
                image.draft("RGB", _draft_request(image.size, self.min_size))
        else:
            array = np.asarray(data, np.uint8)
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]  # PIL reads (H, W) as grayscale
            image = Image.fromarray(array)
        if image.mode != "RGB":  # grayscale (and CMYK, palette) -> three channels
            image = image.convert("RGB")
        return {"image": image, "label": np.int32(element[self.label_key])}


def _draft_request(size: tuple[int, int], min_short_side: int) -> tuple[int, int]:
    # draft() keeps both sides >= the request; ask for the aspect-preserving size
    # whose shorter side is min_short_side.
    w, h = size
    scale = min_short_side / min(w, h)
    return (math.ceil(w * scale), math.ceil(h * scale))


def inception_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """A random crop box (left, top, right, bottom) as in Szegedy et al. 2014, section 6.

    Area uniform in `area_range` of the image, aspect ratio log-uniform in
    `aspect_range`; after `attempts` misses, the largest centred box whose aspect
    ratio lies in the range.
    """
    area = width * height
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    for _ in range(attempts):
        target = area * rng.uniform(*area_range)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < aspect_range[0]:
        w, h = width, round(width / aspect_range[0])
    elif aspect > aspect_range[1]:
        w, h = round(height * aspect_range[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


class RandomResizedCrop(grain.transforms.RandomMap):
    """The Inception crop, resized (bilinear) to `size` x `size` in one resampling."""

    def __init__(self, size: int, area_range: tuple[float, float] = (0.08, 1.0)):
        self.size, self.area_range = size, area_range

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = element["image"]
        box = inception_crop_box(*image.size, rng, area_range=self.area_range)
        resized = image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        return {**element, "image": resized}


class RandomHorizontalFlip(grain.transforms.RandomMap):
    """Mirror left-right with probability 1/2 (Krizhevsky et al. 2012, section 4.1)."""

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        if rng.random() < 0.5:
            return {**element, "image": element["image"].transpose(Image.Transpose.FLIP_LEFT_RIGHT)}
        return element


class ResizeCenterCrop(grain.transforms.Map):
    """Shorter side to `size / crop_fraction`, then the central `size` x `size`.

    Done as one resampling of the corresponding box of the original image.
    """

    def __init__(self, size: int, crop_fraction: float = EVAL_CROP_FRACTION):
        self.size, self.crop_fraction = size, crop_fraction

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        image = element["image"]
        width, height = image.size
        side = min(width, height) * self.crop_fraction  # the crop, in original pixels
        left, top = (width - side) / 2, (height - side) / 2
        box = (left, top, left + side, top + side)
        resized = image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        return {**element, "image": resized}


class ToArray(grain.transforms.Map):
    """PIL image -> uint8 HWC array (stacking uint8 is a quarter of the copying)."""

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        return {**element, "image": np.asarray(element["image"], np.uint8)}


_SCALE = 1 / (np.asarray(IMAGENET_STD, np.float32) * 255)
_SHIFT = -np.asarray(IMAGENET_MEAN, np.float32) / np.asarray(IMAGENET_STD, np.float32)


def normalize(images: Any) -> Any:
    """uint8 NHWC images -> float32 (pixel / 255 - mean) / std, per channel.

    The pipeline applies it to whole batches on the host; with `normalize=False` it
    emits uint8 so this can run on the device instead (a quarter of the bytes to
    transfer). Works on NumPy and JAX arrays.
    """
    if isinstance(images, np.ndarray):  # in place: two passes, no temporaries
        out = images.astype(np.float32)
        np.multiply(out, _SCALE, out=out)
        np.add(out, _SHIFT, out=out)
        return out
    return images.astype(np.float32) * _SCALE + _SHIFT


class NormalizeBatch(grain.transforms.Map):
    """`normalize` on a batch's images."""

    def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**batch, "image": normalize(batch["image"])}


class PadBatch(grain.transforms.Map):
    """Pads a short final batch to `batch_size` and adds `mask` (True for real images).

    Evaluation keeps every image, and a fixed batch shape avoids recompiling the step.
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["label"])
        padded = {key: _pad(value, self.batch_size) for key, value in batch.items()}
        padded["mask"] = np.arange(self.batch_size) < n
        return padded


def _pad(array: np.ndarray, length: int) -> np.ndarray:
    missing = length - len(array)
    if missing == 0:
        return array
    return np.concatenate([array, np.zeros((missing, *array.shape[1:]), array.dtype)])


# ---------------------------------------------------------------------------------------
# The loader.


def make_loader(
    source: Any,
    *,
    train: bool,
    image_size: int,
    batch_size: int,
    seed: int = 0,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    num_epochs: int | None = None,
    shard_options: grain.sharding.ShardOptions | None = None,
    normalize: bool = True,
    image_key: str = "image",
    label_key: str = "label",
) -> grain.DataLoader:
    """A Grain DataLoader over a random-access `source` of {image, label} records.

    Args:
      source: anything with `__len__` and `__getitem__` (a TFDS data source,
        `SyntheticImages`, a list); images encoded (bytes) or uint8 arrays.
      train: Inception crop + flip, reshuffled every epoch, endless by default, short
        final batch dropped; otherwise resize + centre crop, in order, one pass, with
        short batches (the last of each worker) padded and a `mask` added to every
        evaluation batch (see `eval_steps` for equal step counts across hosts).
      batch_size: images per batch on this host (the global batch over the number of
        processes).
      seed: fixes the order and every augmentation draw (see the module docstring
        for how `worker_count` groups the images into batches).
      worker_count: processes decoding and augmenting; 0 runs in this process.
      worker_buffer_size: batches each worker prepares ahead.
      num_epochs: passes over the data (default: endless for training, 1 for eval).
      shard_options: which share of the records this host reads; default: split over
        JAX processes (`jax.process_index()` of `jax.process_count()`), dropping the
        remainder in training so every host runs the same number of steps.
      normalize: float32 with ImageNet mean/std; False keeps uint8 (see `normalize`).

    Batches are dicts: "image" (B, S, S, 3) float32 (or uint8), "label" (B,) int32,
    and in evaluation "mask" (B,) bool.
    """
    if batch_size < 1 or image_size < 1:
        raise ValueError(
            f"batch_size and image_size must be positive, got {batch_size}, {image_size}"
        )
    if shard_options is None:
        shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=train)
    if not train:
        # Grain's DataLoader gives every shard floor(records / shards) records even
        # without drop_remainder, so evaluation would lose up to shards - 1 images;
        # hand each host its own slice of the source instead.
        source = ShardSlice(source, shard_options.shard_index, shard_options.shard_count)
        shard_options = grain.sharding.NoSharding()
    if worker_count > 0:
        _let_grain_read_its_flags()
    sampler = grain.samplers.IndexSampler(
        num_records=len(source),
        shard_options=shard_options,
        shuffle=train,
        num_epochs=num_epochs if num_epochs is not None else (None if train else 1),
        seed=seed,
    )
    if train:
        operations = [
            DecodeImage(image_key, label_key),
            RandomResizedCrop(image_size),
            RandomHorizontalFlip(),
            ToArray(),
            grain.transforms.Batch(batch_size, drop_remainder=True),
        ]
    else:
        short_side = math.ceil(image_size / EVAL_CROP_FRACTION)
        operations = [
            DecodeImage(image_key, label_key, min_size=short_side),
            ResizeCenterCrop(image_size),
            ToArray(),
            grain.transforms.Batch(batch_size, drop_remainder=False),
            PadBatch(batch_size),
        ]
    if normalize:
        operations.append(NormalizeBatch())
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=operations,
        worker_count=worker_count,
        worker_buffer_size=worker_buffer_size,
        shard_options=shard_options,
    )


class ShardSlice:
    """Shard `index` of `count` contiguous, near-equal slices of `source` (sizes differ
    by at most one; the first `len(source) % count` shards get the extra record)."""

    def __init__(self, source: Any, index: int, count: int):
        self.source = source
        per_shard, extra = divmod(len(source), count)
        self.start = index * per_shard + min(index, extra)
        self.stop = self.start + per_shard + (1 if index < extra else 0)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of a shard of {len(self)}")
        return self.source[self.start + index]


def _let_grain_read_its_flags() -> None:
    # Grain's worker processes read absl flags (of their own). Outside absl.app.run
    # (pytest, a notebook) nothing parsed them, which Grain treats as an error;
    # their defaults are what is wanted then.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def eval_steps(
    num_records: int, batch_size: int, process_count: int = 1, worker_count: int = 0
) -> int:
    """Evaluation batches per host so that every host runs the same number of steps.

    The most any host yields: its share of the records is dealt round-robin to its
    workers and each worker batches (and pads) its own, so every worker may end on a
    short batch. Hosts that finish sooner continue with `pad_epoch`'s masked batches.
    """
    workers = max(worker_count, 1)

    def host_steps(host: int) -> int:
        records = len(ShardSlice(range(num_records), host, process_count))
        per_worker = [len(range(w, records, workers)) for w in range(workers)]
        return sum(math.ceil(n / batch_size) for n in per_worker)

    return max(host_steps(host) for host in range(process_count))


def pad_epoch(batches: Iterator[dict[str, np.ndarray]], steps: int) -> Iterator[dict[str, Any]]:
    """Exactly `steps` evaluation batches: `batches`, then all-masked copies of the last."""
    last = None
    for step, batch in enumerate(batches):
        if step == steps:
            raise ValueError(f"more than {steps} evaluation batches")
        last = batch
        yield batch
    if last is None:
        raise ValueError("no evaluation batches: is this host's share of the data empty?")
    for _ in range(steps - step - 1):
        yield {**last, "mask": np.zeros_like(last["mask"])}


# ---------------------------------------------------------------------------------------
# Moving batches onto the devices.


class DevicePrefetch:
    """Keeps `size` batches on the devices ahead of the consumer, resumably.

    Each host's batch becomes its part of one global array laid out by `sharding`
    (`jax.make_array_from_process_local_data`; with one process, a `device_put`).
    `get_state()` returns the state of `iterator` as of the last batch handed out,
    not of the batches still waiting in the buffer, so a checkpoint resumes exactly.
    """

    def __init__(self, iterator: Any, sharding: Any, size: int = 2):
        self.iterator, self.sharding, self.size = iterator, sharding, size
        self.buffer: collections.deque = collections.deque()
        self.state = iterator.get_state()

    def _put(self, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
        import jax

        return {
            key: jax.make_array_from_process_local_data(self.sharding, value)
            for key, value in batch.items()
        }

    def _fill(self) -> None:
        while len(self.buffer) < self.size:
            try:
                batch = next(self.iterator)
            except StopIteration:
                return
            self.buffer.append((self._put(batch), self.iterator.get_state()))

    def __iter__(self) -> DevicePrefetch:
        return self

    def __next__(self) -> dict[str, Any]:
        self._fill()
        if not self.buffer:
            raise StopIteration
        batch, self.state = self.buffer.popleft()
        self._fill()
        return batch

    def get_state(self) -> bytes:
        return self.state

    def set_state(self, state: bytes) -> None:
        self.buffer.clear()
        self.iterator.set_state(state)
        self.state = state


# ---------------------------------------------------------------------------------------
# Synthetic data for benchmarks and tests.


class SyntheticImages:
    """A random-access source of `num_records` JPEG-encoded images, ImageNet-like.

    `pool` distinct images (smooth colour fields with noise, `size` = (width, height),
    default 500x375, about ImageNet's average) are encoded once and reused; labels
    are the record index mod `num_classes`. Picklable, for worker processes.
    """

    def __init__(
        self,
        num_records: int = 10_000,
        size: tuple[int, int] = (500, 375),
        num_classes: int = 1000,
        pool: int = 16,
        seed: int = 0,
    ):
        self.num_records, self.num_classes = num_records, num_classes
        rng = np.random.default_rng(seed)
        width, height = size
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        self.encoded = []
        for _ in range(pool):
            phase = rng.uniform(0, 2 * np.pi, size=3)
            freq = rng.uniform(0.005, 0.05, size=(3, 2))
            channels = [
                127 + 100 * np.sin(freq[c, 0] * x + freq[c, 1] * y + phase[c]) for c in range(3)
            ]
            pixels = np.stack(channels, -1) + rng.normal(0, 12, (height, width, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            self.encoded.append(buffer.getvalue())

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image": self.encoded[index % len(self.encoded)],
            "label": index % self.num_classes,
        }
