"""Training speed of the MNIST ladder: examples/s and seconds per epoch, per rung and batch size.

    python -m launch.benchmark                                  # every rung, batch 10 and 100
    python -m launch.benchmark --nets=dropout --batch_sizes=10,100 --ensemble=1,5 \
        --ensemble_layouts=vmap,unrolled

Data are random arrays of MNIST's shape living on the device (speed does not
depend on pixel values). Each case compiles, warms up, then times `--steps`
training steps with the epoch driver the run would use (lax.scan on
accelerators, a host loop on CPU; `--driver` forces one). Seconds per epoch
are for the rung's real epoch: 50,000 images, or 250,000 for the expanded set.
An ensemble is timed in each of `--ensemble_layouts` (`lib.train.resolve_layout`).

Targets on one H100/H200 for the dropout rung on the expanded set: at most
3.3 s per epoch at batch 10 and 0.65 s at batch 100, and the five-net ensemble
trained as one program in at most twice one net's time.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from lib import train
from lib.nets import mnist as nets

FLAGS = flags.FLAGS
flags.DEFINE_list("nets", list(nets.NETS[:-1]), "Rungs to time (the ensemble is --ensemble).")
flags.DEFINE_list("batch_sizes", ["10", "100"], "Mini-batch sizes.")
flags.DEFINE_list("ensemble", ["1"], "Ensemble sizes, each trained as one program.")
flags.DEFINE_list(
    "ensemble_layouts", ["auto"], f"Ensemble layouts to time, of {', '.join(train.LAYOUTS)}."
)
flags.DEFINE_integer("steps", 0, "Steps to time; default 2,000 on accelerators, 200 on CPU.")
flags.DEFINE_enum("driver", "auto", train.DRIVERS, "Epoch driver.")


def time_case(
    name: str, batch_size: int, members: int, layout: str, steps: int, driver: str
) -> dict:
    rung = nets.RUNGS[name]
    model = nets.create(name)
    n = 50_000
    epoch_examples = 5 * n if rung.expanded else n
    config = train.TrainConfig(
        epochs=1,
        batch_size=batch_size,
        learning_rate=rung.learning_rate,
        l2=rung.l2,
        expanded=rung.expanded,
        ensemble=members,
    )
    optimizer = train.make_optimizer("sgd", rung.learning_rate)
    steps_per_epoch = epoch_examples // batch_size
    step = train.make_train_step(
        model,
        optimizer,
        0.5 * rung.l2 / steps_per_epoch,
        train.make_batch_fn(config.expanded),
    )
    if members > 1:
        step = train.ensemble_step(step, layout)
    runner = train.EpochRunner(step, driver)
    rng = np.random.default_rng(0)
    data = {
        "images": jnp.asarray(rng.random((n, 28, 28, 1), np.float32)),
        "labels": jnp.asarray(rng.integers(0, 10, n, np.int32)),
    }
    init_key, shuffle_key, step_key = train.run_keys(0, members)
    state = train.init_state(model, optimizer, init_key, data["images"][:1])
    idx = train.epoch_indices(shuffle_key, 0, epoch_examples, batch_size)[:steps]
    state, _ = runner(state, data, idx, step_key)  # compile and warm up
    jax.block_until_ready(state)
    started = time.perf_counter()
    state, _ = runner(state, data, idx, step_key)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - started
    per_step = seconds / steps
    return {
        "net": name,
        "batch": batch_size,
        "members": members,
        "layout": train.resolve_layout(layout) if members > 1 else "-",
        "driver": runner.driver,
        "ms_per_step": 1e3 * per_step,
        "examples_per_s": batch_size * members / per_step,
        "epoch_examples": epoch_examples,
        "s_per_epoch": per_step * steps_per_epoch,
    }


def main(argv):
    del argv
    for name in FLAGS.nets:
        if name not in nets.RUNGS:
            raise app.UsageError(f"unknown net '{name}'; choose from {', '.join(nets.NETS)}")
    for layout in FLAGS.ensemble_layouts:
        if layout not in train.LAYOUTS:
            raise app.UsageError(
                f"unknown layout '{layout}'; choose from {', '.join(train.LAYOUTS)}"
            )
    accelerator = jax.default_backend() != "cpu"
    steps = FLAGS.steps or (2000 if accelerator else 200)
    device = jax.devices()[0].device_kind
    print(f"device: {device} ({jax.default_backend()}), {steps} timed steps per case\n")
    print("| net | batch | nets | layout | driver | ms/step | examples/s | epoch | s/epoch |")
    print("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for name in FLAGS.nets:
        for batch in map(int, FLAGS.batch_sizes):
            for members in map(int, FLAGS.ensemble):
                for layout in FLAGS.ensemble_layouts if members > 1 else ["auto"]:
                    report(time_case(name, batch, members, layout, steps, FLAGS.driver))


def report(r: dict) -> None:
    print(
        f"| {r['net']} | {r['batch']} | {r['members']} | {r['layout']} | {r['driver']} | "
        f"{r['ms_per_step']:.3f} | {r['examples_per_s']:,.0f} | "
        f"{r['epoch_examples']:,} | {r['s_per_epoch']:.2f} |",
        flush=True,
    )


if __name__ == "__main__":
    app.run(main)
