"""Images per second of the input pipeline alone, on this host (no model, no devices).

    TFDS_DATA_DIR=../shared/tensorflow_datasets python -m launch.bench_input \\
        --dataset=mnist --resolution=224 --workers=0,2
    python -m launch.bench_input --dataset=synthetic   # 500x375 JPEGs, ImageNet-like

Times `--batches` batches of `--batch_size`, after one warm-up batch per worker (so
every worker process has started), for each worker count and mode (train: decode,
Inception crop, flip, normalise; eval: decode, resize, centre crop, normalise), and
prints a markdown table.
"""

from __future__ import annotations

import time

from absl import flags

from experiments import common
from lib.core.errors import UserError
from lib.imagenet import input_pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "mnist", "TFDS dataset name, or 'synthetic' for JPEGs in memory.")
flags.DEFINE_string("split", "train", "TFDS split (slicing allowed, e.g. train[:10000]).")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: $TFDS_DATA_DIR).")
flags.DEFINE_integer("resolution", 224, "Output image side.")
flags.DEFINE_integer("batch_size", 128, "Images per batch.")
flags.DEFINE_list("workers", ["0", "2"], "Worker process counts to compare.")
flags.DEFINE_list("modes", ["train", "eval"], "Pipelines to time: train, eval.")
flags.DEFINE_integer("batches", 8, "Timed batches per configuration.")
flags.DEFINE_boolean("normalize", True, "Normalise to float32 on the host (else uint8 out).")


def images_per_second(
    source: object,
    *,
    train: bool,
    resolution: int,
    batch_size: int,
    workers: int,
    batches: int,
    normalize: bool,
) -> float:
    """Throughput of `batches` batches after one untimed warm-up batch per worker."""
    loader = input_pipeline.make_loader(
        source,
        train=train,
        image_size=resolution,
        batch_size=batch_size,
        worker_count=workers,
        normalize=normalize,
    )
    iterator = iter(loader)
    for _ in range(max(workers, 1)):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    try:
        workers = [int(w) for w in FLAGS.workers]
    except ValueError:
        raise UserError(f"--workers must be integers, got {','.join(FLAGS.workers)}") from None
    if min(workers) < 0 or FLAGS.batch_size < 1 or FLAGS.resolution < 1 or FLAGS.batches < 1:
        raise UserError("--workers must be >= 0 and --batch_size, --resolution, --batches positive")
    if not set(FLAGS.modes) <= {"train", "eval"}:
        raise UserError(f"--modes takes train and/or eval, got {','.join(FLAGS.modes)}")
    if FLAGS.dataset == "synthetic":
        source = input_pipeline.SyntheticImages()
    else:  # a DataError if it cannot be read
        source = input_pipeline.open_tfds_source(FLAGS.dataset, FLAGS.split, FLAGS.data_dir)

    print("| dataset | mode | resolution | workers | batch | images/s |")
    print("|---|---|---:|---:|---:|---:|", flush=True)
    for mode in FLAGS.modes:
        for count in workers:
            rate = images_per_second(
                source,
                train=mode == "train",
                resolution=FLAGS.resolution,
                batch_size=FLAGS.batch_size,
                workers=count,
                batches=FLAGS.batches,
                normalize=FLAGS.normalize,
            )
            print(
                f"| {FLAGS.dataset} | {mode} | {FLAGS.resolution} | {count} "
                f"| {FLAGS.batch_size} | {rate:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    common.run_command(main)
