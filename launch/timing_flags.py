"""The flags `launch.benchmark` and `launch.bench_ops` share, defined once, and their
checks: the batch sizes to time, how many steps (calls) and timings, JSON-lines output.
"""

from __future__ import annotations

import jax
from absl import flags

from experiments import common
from lib.core.errors import UserError
from lib.nielsen.timing import IMAGES

FLAGS = flags.FLAGS
flags.DEFINE_list("batch_sizes", ["10", "100"], "Mini-batch sizes.")
flags.DEFINE_integer(
    "steps", None, "Steps (calls of each op) to time; default 2,000 on accelerators, 200 on CPU."
)
flags.DEFINE_integer("repeats", 3, "Time the steps this many times and keep the fastest.")
flags.DEFINE_bool("jsonl", False, "Print one JSON line per row instead of the table.")


def batch_sizes() -> list[int]:
    """--batch_sizes as whole numbers, each at most an epoch's images."""
    values = common.positive_ints("batch_sizes")
    if max(values) > IMAGES:
        raise UserError(f"--batch_sizes must be at most {IMAGES:,}, the images of an epoch")
    return values


def check() -> None:
    """A UserError naming the first of the shared flags that is out of range."""
    if FLAGS.steps is not None and FLAGS.steps < 1:
        raise UserError(f"--steps must be at least 1, got {FLAGS.steps}")
    if FLAGS.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {FLAGS.repeats}")
    batch_sizes()


def steps() -> int:
    """--steps, or its default for this backend."""
    return FLAGS.steps or (200 if jax.default_backend() == "cpu" else 2000)
