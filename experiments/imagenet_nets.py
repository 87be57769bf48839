"""The ImageNet model zoo trained data-parallel on any TFDS image classification dataset.

ResNet-50 on ImageNet, 90 epochs on one GPU; it should reach about 76% top-1 and 93% top-5
on the validation set (Goyal et al. 2017 report 76.3% top-1 for 90 epochs of their
recipe, with a stepped rate and no label smoothing, which this one adds to; not yet
measured with this code, which has only run on CPUs so far):

    python -m experiments.imagenet_nets --model=resnet50 --dataset=imagenet2012 \\
        --epochs=90 --batch_size=256 --workdir=runs/resnet50

The same command on several hosts: start it on every host (srun, mpirun, or with
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set; on a Cloud TPU pod under
launch.join_cluster), with --batch_size the global batch and --workdir on a shared
filesystem. A CPU smoke run on
MNIST at 32x32 (half a minute on two cores; 83.4% top-1 on the 1,000 test images):

    TFDS_DATA_DIR=../shared/tensorflow_datasets python -m experiments.imagenet_nets \\
        --model=resnet_tiny --dataset=mnist --train_split='train[:4096]' \\
        --eval_split='test[:1000]' --image_size=32 --batch_size=32 --steps=300 \\
        --learning_rate=0.1 --warmup_epochs=0.25 --workers=0 --workdir=runs/smoke

Training throughput without an input pipeline: --synthetic (random images, no evaluation).

Images go through `lib.imagenet.input_pipeline` (Grain: Inception crop and flip for training, resize
and centre crop for evaluation, grayscale made three channels) as uint8 and are normalised
on the devices. The run is `lib.imagenet.loop.train_and_evaluate`, whose SETTINGS are this
command's flags (the library checks their values): it writes config.json, metrics.jsonl (one
line per evaluation), summary.json, TensorBoard events and checkpoints/ to --workdir;
running again there resumes from the last checkpoint, data position included, and ends as
an uninterrupted run would. Only process 0 writes files and prints.
"""

from __future__ import annotations

import json
from typing import Any

import jax
from absl import app, flags

from experiments import common
from lib.core import parallel
from lib.imagenet import loop

common.define_setting_flags(loop.SETTINGS)
flags.DEFINE_string("workdir", None, "Where the run writes; default runs/imagenet/<model>.")


def _print(line: str) -> None:
    print(line, flush=True)


def run(config: dict[str, Any], workdir: str | None = None, verbose: bool = True) -> dict:
    """Train one configuration (setting names to values, optionally with its "workdir");
    returns the run's summary. Process 0 prints the progress lines when `verbose`."""
    config = dict(config)
    given = config.pop("workdir", None)
    model = config.get("model", loop.get_config().model)
    workdir = workdir or given or f"runs/imagenet/{model}"
    speak = verbose and jax.process_index() == 0
    return loop.train_and_evaluate(config, workdir, report=_print if speak else lambda line: None)


def main(argv):
    parallel.join_cluster()
    names = [*(s.name for s in loop.SETTINGS), "workdir"]
    summary = common.run_from_flags(argv, run, names)
    if jax.process_index() == 0:
        keys = ("final_top1", "final_top5", "images_per_s")
        print(json.dumps({k: summary[k] for k in keys}))


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
