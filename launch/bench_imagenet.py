"""Training throughput of the ImageNet model zoo: images/s per model on synthetic data.

    python -m launch.bench_imagenet                           # every model, usual batch
    python -m launch.bench_imagenet --models=resnet50         # the headline number
    python -m launch.bench_imagenet --models=resnet18,resnet50 --batch_size=16 \\
        --image_size=64 --steps=3                             # CPU: small enough to finish

Each model runs the experiment's train step (lib.imagenet.train: bfloat16 compute with
float32 parameters, Nesterov SGD, label smoothing, weight decay) compiled over all devices
with the batch sharded, the state replicated and donated, on one batch of random uint8
images that already lives on the devices (normalised there, as in training), at each
model's own resolution or --image_size (raised to the smallest the model trains at: 299
for Inception v3's auxiliary classifier). After compiling and `--warmup` steps, `--steps`
steps are dispatched back to back and the clock stops at one sync at the end, so host and
device overlap as in a real run. The input pipeline is not part of this number;
launch.bench_input measures it.

Usual batch size: 256 (the reference batch of the ImageNet recipes; Goyal et al. 2017),
128 for the two-tower AlexNet (Krizhevsky et al. 2012, section 5).
Target on one H100 or H200: ResNet-50 at batch 256 in bfloat16 above 7,000 images/s.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import flags

from experiments import common
from lib.core import parallel
from lib.core.errors import UserError
from lib.imagenet import train as it
from lib.imagenet.nets import registry

FLAGS = flags.FLAGS
flags.DEFINE_list("models", [], "Models to time (default: every registered model).")
flags.DEFINE_integer("batch_size", None, "Global batch; default each model's usual one.")
flags.DEFINE_integer(
    "image_size",
    None,
    "Input side; default each model's own (224 or 299), raised to the smallest it trains at.",
)
flags.DEFINE_integer("steps", None, "Timed steps; default 50 on accelerators, 3 on CPU.")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
flags.DEFINE_enum("dtype", "bfloat16", ("bfloat16", "float32"), "Compute dtype.")
flags.DEFINE_integer("num_devices", None, "Devices to shard the batch over; default all.")

USUAL_BATCH = {name: 256 for name in it.model_names()} | {"alexnet_ksh": 128}
NUM_CLASSES = 1000


def time_model(
    name: str,
    batch_size: int,
    image_size: int,
    steps: int,
    warmup: int,
    dtype: jnp.dtype,
    mesh: jax.sharding.Mesh,
) -> dict:
    """Compile seconds, milliseconds per step and images per second of one model."""
    model = it.build_model(name, num_classes=NUM_CLASSES, dtype=dtype)
    recipe = it.Recipe(learning_rate=0.1, total_steps=10_000, warmup_steps=100)
    optimizer = it.make_optimizer(recipe)
    step = it.jit_train_step(it.make_train_step(model, recipe, optimizer), mesh)
    key = jax.random.PRNGKey(0)
    state = it.init_state(model, optimizer, key, image_size, mesh)
    batch = it.synthetic_batch(key, batch_size, image_size, NUM_CLASSES, mesh)
    key = parallel.put_replicated(key, mesh)

    started = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - started
    for _ in range(warmup):
        state, _ = compiled(state, batch, key)
    jax.block_until_ready(state)
    started = time.perf_counter()
    for _ in range(steps):
        state, _ = compiled(state, batch, key)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - started
    return {
        "model": name,
        "batch": batch_size,
        "input": image_size,
        "compile_s": compile_s,
        "ms_per_step": 1e3 * seconds / steps,
        "images_per_s": steps * batch_size / seconds,
    }


def main() -> None:
    names = FLAGS.models or list(registry.MODELS)
    for name in names:
        registry.check_name(name, it.SMOKE_MODELS)
    if FLAGS.num_devices is not None and not 0 < FLAGS.num_devices <= jax.device_count():
        raise UserError(f"--num_devices must be in [1, {jax.device_count()}]")
    accelerator = jax.default_backend() != "cpu"
    steps = FLAGS.steps or (50 if accelerator else 3)
    if steps < 1 or FLAGS.warmup < 0 or (FLAGS.batch_size is not None and FLAGS.batch_size < 1):
        raise UserError("--steps and --batch_size must be positive, --warmup not negative")
    mesh = parallel.make_mesh(FLAGS.num_devices)
    dtype = jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32
    device = jax.devices()[0].device_kind
    print(
        f"device: {device} x{mesh.size} ({jax.default_backend()}), {FLAGS.dtype} compute, "
        f"synthetic data, {steps} timed steps after {FLAGS.warmup} warm-up\n"
    )
    print("| model | batch | input | compile s | ms/step | images/s |")
    print("|---|---:|---:|---:|---:|---:|", flush=True)
    for name in names:
        batch = FLAGS.batch_size or USUAL_BATCH[name]
        if batch % mesh.size:
            raise UserError(
                f"batch {batch} does not split over {mesh.size} devices; set --batch_size"
            )
        row = time_model(
            name,
            batch,
            max(FLAGS.image_size or it.default_resolution(name), it.min_resolution(name)),
            steps,
            FLAGS.warmup,
            dtype,
            mesh,
        )
        print(
            f"| {row['model']} | {row['batch']} | {row['input']} | {row['compile_s']:.1f} "
            f"| {row['ms_per_step']:.1f} | {row['images_per_s']:,.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    common.run_command(main)
