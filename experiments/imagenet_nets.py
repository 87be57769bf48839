"""The ImageNet model zoo trained data-parallel on any TFDS image classification dataset.

ResNet-50 on ImageNet, 90 epochs on one GPU; it should reach about 76% top-1 and 93% top-5
on the validation set (Goyal et al. 2017 report 76.3% top-1 for 90 epochs; not yet
measured with this code, which has only run on CPUs so far):

    python -m experiments.imagenet_nets --model=resnet50 --dataset=imagenet2012 \\
        --epochs=90 --batch_size=256 --workdir=runs/resnet50

The same command on several hosts: start it on every host (srun, mpirun, or with
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set; on a Cloud TPU pod under
launch.join_cluster), with --batch_size the global batch and --workdir on a shared
filesystem. A CPU smoke run on
MNIST at 32x32 (half a minute on two cores; 83.8% top-1 on the 1,000 test images):

    TFDS_DATA_DIR=../shared/tensorflow_datasets python -m experiments.imagenet_nets \\
        --model=resnet_tiny --dataset=mnist --train_split='train[:4096]' \\
        --eval_split='test[:1000]' --image_size=32 --batch_size=32 --steps=300 \\
        --learning_rate=0.1 --warmup_epochs=0.25 --workers=0 --workdir=runs/smoke

Training throughput without an input pipeline: --synthetic (random images, no evaluation).

Images go through `lib.imagenet.input_pipeline` (Grain: Inception crop and flip for training, resize
and centre crop for evaluation, grayscale made three channels) as uint8 and are normalised
on the devices. The run writes config.json, metrics.jsonl (one line per evaluation),
summary.json, TensorBoard events and checkpoints/ to --workdir; running again there
resumes from the last checkpoint, data position included, and ends as an uninterrupted run
would. Only process 0 writes files and prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils

from experiments import common
from lib.core import metrics, parallel
from lib.core.checkpoint import Checkpointer
from lib.core.errors import ConfigError, DataError, DivergedError
from lib.core.stop import GracefulStop
from lib.imagenet import input_pipeline as ip
from lib.imagenet import train as it
from lib.imagenet.nets.registry import UnknownModelError

FLAGS = flags.FLAGS

flags.DEFINE_string("model", "resnet50", "Model name (lib.imagenet.nets.registry, or resnet_tiny).")
flags.DEFINE_string("dataset", "imagenet2012", "TFDS image classification dataset.")
flags.DEFINE_string("data_dir", None, "TFDS data directory; default $TFDS_DATA_DIR.")
flags.DEFINE_string("train_split", "train", "TFDS split to train on (slicing allowed).")
flags.DEFINE_string("eval_split", None, "Split to evaluate on; default validation, else test.")
flags.DEFINE_bool("synthetic", False, "Random images on the devices: throughput, no evaluation.")
flags.DEFINE_integer("image_size", None, "Square input side; default the model's (224 or 299).")
flags.DEFINE_integer("batch_size", 256, "Global batch size, over all devices and hosts.")
flags.DEFINE_integer("epochs", None, "Training epochs (default 90 unless --steps is given).")
flags.DEFINE_integer("steps", None, "Training steps, instead of --epochs.")
flags.DEFINE_float("learning_rate", None, "Peak learning rate; default 0.1 * batch_size / 256.")
flags.DEFINE_float("warmup_epochs", 5.0, "Linear warm-up before the cosine decay, in epochs.")
flags.DEFINE_float("momentum", 0.9, "Nesterov momentum.")
flags.DEFINE_float("weight_decay", 1e-4, "Weight decay on convolution and dense kernels.")
flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing.")
flags.DEFINE_float("aux_weight", 0.3, "Loss weight of auxiliary classifiers, where a net has them.")
flags.DEFINE_enum("dtype", "bfloat16", ("bfloat16", "float32"), "Compute dtype (params: f32).")
flags.DEFINE_integer("seed", 0, "Random seed (initialisation, data order, augmentation, dropout).")
flags.DEFINE_string("workdir", None, "Where the run writes; default runs/imagenet/<model>.")
flags.DEFINE_integer("eval_every", 0, "Evaluate and checkpoint every N steps; 0: every epoch.")
flags.DEFINE_integer("eval_batch_size", None, "Global evaluation batch; default --batch_size.")
flags.DEFINE_integer("log_every", 100, "Steps between progress lines.")
flags.DEFINE_integer("num_devices", None, "Devices to shard the batch over; default all.")
flags.DEFINE_integer("workers", None, "Grain worker processes per host; default CPUs - 2.")

FLAG_NAMES = ("model", "dataset", "data_dir", "train_split", "eval_split", "synthetic",
              "image_size", "batch_size", "epochs", "steps", "learning_rate", "warmup_epochs",
              "momentum", "weight_decay", "label_smoothing", "aux_weight", "dtype", "seed",
              "workdir", "eval_every", "eval_batch_size", "log_every", "num_devices",
              "workers")  # fmt: skip

# What must not change when a run resumes (the data order and the schedule depend on it).
RUN_IDENTITY = ("model", "dataset", "train_split", "synthetic", "image_size", "batch_size",
                "seed", "workers", "dtype", "learning_rate", "warmup_epochs", "total_steps",
                "processes")  # fmt: skip

IMAGENET_HINT = (
    " For ImageNet, put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
    "<data_dir>/downloads/manual and run: tfds build imagenet2012 --data_dir=<data_dir> "
    "--file_format=array_record (building needs TensorFlow installed; training does not)"
)


# ----------------------------------------------------------------------------- config


def resolve(config: dict) -> dict:
    """Flag defaults, then `config`, then the defaults that depend on other settings."""
    out = {name: FLAGS[name].default for name in FLAG_NAMES}
    out.update(config)
    model = it.check_model_name(out["model"])
    if out["image_size"] is None:
        out["image_size"] = it.default_resolution(model)
    if out["learning_rate"] is None and out["batch_size"] > 0:
        out["learning_rate"] = it.scaled_learning_rate(out["batch_size"])
    if out["steps"] is None and out["epochs"] is None:
        out["epochs"] = 90
    if out["eval_batch_size"] is None:
        out["eval_batch_size"] = out["batch_size"]
    if out["workers"] is None:
        out["workers"] = max(0, min(32, (os.cpu_count() or 1) - 2))
    out["workdir"] = out["workdir"] or f"runs/imagenet/{model}"
    return out


def validate(config: dict) -> None:
    """ConfigError for settings that cannot work (before any data is read)."""
    positive = ("batch_size", "eval_batch_size", "log_every", "image_size")
    for name in positive:
        if config[name] <= 0:
            raise ConfigError(f"--{name} must be positive, got {config[name]}")
    if config["steps"] is not None and config["epochs"] is not None:
        raise ConfigError("give --epochs or --steps, not both")
    for name in ("steps", "epochs"):
        if config[name] is not None and config[name] <= 0:
            raise ConfigError(f"--{name} must be positive, got {config[name]}")
    if config["learning_rate"] <= 0:
        raise ConfigError(f"--learning_rate must be positive, got {config['learning_rate']}")
    for name in ("warmup_epochs", "weight_decay", "aux_weight", "eval_every", "workers"):
        if config[name] < 0:
            raise ConfigError(f"--{name} must not be negative, got {config[name]}")
    if not 0 <= config["label_smoothing"] < 1:
        raise ConfigError(f"--label_smoothing must be in [0, 1), got {config['label_smoothing']}")
    if not 0 <= config["momentum"] < 1:
        raise ConfigError(f"--momentum must be in [0, 1), got {config['momentum']}")
    smallest = it.min_resolution(config["model"])
    if config["image_size"] < smallest:
        raise ConfigError(
            f"{config['model']} needs --image_size of at least {smallest}, "
            f"got {config['image_size']}"
        )


def make_mesh(config: dict) -> jax.sharding.Mesh:
    devices = jax.device_count()
    num = config["num_devices"]
    if num is not None and not 0 < num <= devices:
        raise ConfigError(f"--num_devices must be in [1, {devices}], got {num}")
    if num is not None and jax.process_count() > 1 and num != devices:
        raise ConfigError(
            "on several hosts the batch is sharded over all devices: drop --num_devices"
        )
    mesh = parallel.make_mesh(num)
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % mesh.size:
            raise ConfigError(
                f"--{name}={config[name]} does not split evenly over {mesh.size} devices; "
                f"use a multiple of {mesh.size} or set --num_devices"
            )
    return mesh


def check_same_run(workdir: Path, config: dict) -> None:
    """UserError if the run in this workdir had other RUN_IDENTITY settings."""
    metrics.accept_resume(workdir, config, keys=RUN_IDENTITY)


# ----------------------------------------------------------------------------- data


@contextlib.contextmanager
def _absl_errors_only():
    before = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(before)


class Dataset:
    """The training and evaluation sources of a TFDS dataset, or synthetic batches."""

    def __init__(self, config: dict):
        self.config = config
        self.name = config["dataset"]
        if config["synthetic"]:
            self.name = "synthetic"
            self.num_classes, self.train_size, self.eval = 1000, it.IMAGENET_TRAIN_SIZE, None
            return
        try:
            with _absl_errors_only():  # TFDS logs a warning before failing on a bare folder
                self.train = ip.open_tfds_source(
                    self.name, config["train_split"], config["data_dir"]
                )
        except DataError as e:
            hint = IMAGENET_HINT if self.name == "imagenet2012" else ""
            raise DataError(str(e) + hint) from None
        info = self.train.dataset_info
        features = info.features
        if "image" not in features or "label" not in features:
            raise ConfigError(
                f"dataset '{self.name}' has no 'image' and 'label' features; "
                "--dataset takes a TFDS image classification dataset"
            )
        self.num_classes = int(features["label"].num_classes)
        self.train_size = len(self.train)
        split = config["eval_split"] or ("validation" if "validation" in info.splits else "test")
        self.eval = ip.open_tfds_source(self.name, split, config["data_dir"])
        self.eval_split = split

    def train_loader(self, per_host_batch: int):
        c = self.config
        return ip.make_loader(
            self.train,
            train=True,
            image_size=c["image_size"],
            batch_size=per_host_batch,
            seed=c["seed"],
            worker_count=c["workers"],
            normalize=False,
        )

    def eval_batches(self, per_host_batch: int):
        c = self.config
        loader = ip.make_loader(
            self.eval,
            train=False,
            image_size=c["image_size"],
            batch_size=per_host_batch,
            worker_count=c["workers"],
            normalize=False,
        )
        steps = ip.eval_steps(len(self.eval), per_host_batch, jax.process_count())
        return ip.pad_epoch(iter(loader), steps)


# ----------------------------------------------------------------------------- the run


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _empty_partial() -> dict:
    return {"loss": 0.0, "top1": 0.0, "steps": 0}


def run(config: dict, workdir: str | None = None, verbose: bool = True) -> dict:
    """Train one configuration (flag names to values); returns the run's summary."""
    try:
        config = resolve({**config, "workdir": workdir or config.get("workdir")})
    except UnknownModelError as e:
        raise ConfigError(str(e)) from None
    validate(config)
    processes = jax.process_count()
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % processes:
            raise ConfigError(f"--{name} must be a multiple of the {processes} processes")
    mesh = make_mesh(config)
    workdir_path = metrics.prepare_workdir(config["workdir"])
    with metrics.hold_workdir(workdir_path):  # a second run there is refused, naming this one
        return _run(config, workdir_path, mesh, verbose)


def _run(config: dict, workdir_path: Path, mesh: jax.sharding.Mesh, verbose: bool) -> dict:
    """The run of `run`, in the workdir it holds."""
    processes = jax.process_count()
    data = Dataset(config)
    train_batch = config["batch_size"] // processes
    eval_batch = config["eval_batch_size"] // processes

    steps_per_epoch = data.train_size // config["batch_size"]
    if steps_per_epoch == 0:
        raise ConfigError(
            f"--batch_size={config['batch_size']} is larger than the {data.train_size} "
            "training images; lower it or use a larger --train_split"
        )
    total_steps = config["steps"] or config["epochs"] * steps_per_epoch
    config.update(total_steps=total_steps, processes=processes)
    check_same_run(workdir_path, config)  # before anything is written there
    eval_every = config["eval_every"] or steps_per_epoch
    recipe = it.Recipe(
        learning_rate=config["learning_rate"],
        total_steps=total_steps,
        warmup_steps=round(config["warmup_epochs"] * steps_per_epoch),
        momentum=config["momentum"],
        weight_decay=config["weight_decay"],
        label_smoothing=config["label_smoothing"],
        aux_weight=config["aux_weight"],
    )
    dtype = jnp.bfloat16 if config["dtype"] == "bfloat16" else jnp.float32
    model = it.build_model(config["model"], num_classes=data.num_classes, dtype=dtype)
    optimizer = it.make_optimizer(recipe)
    train_step = it.jit_train_step(it.make_train_step(model, recipe, optimizer), mesh)
    eval_step = it.jit_eval_step(it.make_eval_step(model), mesh)

    init_key, step_key = jax.random.split(jax.random.PRNGKey(config["seed"]))
    try:
        state = it.init_state(model, optimizer, init_key, config["image_size"], mesh)
    except (TypeError, ValueError, ZeroDivisionError) as e:  # shapes that do not work out
        raise ConfigError(
            f"{config['model']} cannot run at --image_size={config['image_size']} "
            f"({type(e).__name__}); try a larger --image_size"
        ) from e
    step_key = parallel.put_replicated(step_key, mesh)

    record: dict[str, Any] = {
        "history": [],
        "partial": _empty_partial(),
        "throughput": {"images": 0, "seconds": 0.0},
        "wall_time_s": 0.0,
    }
    checkpoints = Checkpointer(workdir_path / "checkpoints")
    writer = metrics.MetricsWriter(workdir_path)
    loader_iter = None if config["synthetic"] else iter(data.train_loader(train_batch))
    restored = checkpoints.restore_latest(state, data=loader_iter)  # the newest intact step
    if restored is not None:
        state, record = restored.state, restored.record
    writer.reset(record["history"], step_key="step")
    writer.write_json("config.json", config)

    if config["synthetic"]:
        batch = it.synthetic_batch(
            jax.random.PRNGKey(config["seed"] + 1),
            config["batch_size"],
            config["image_size"],
            data.num_classes,
            mesh,
        )
        batches = None
    else:
        batches = ip.DevicePrefetch(loader_iter, parallel.batch_sharding(mesh))

    speak = verbose and jax.process_index() == 0
    say = print if speak else (lambda *a, **k: None)
    if restored is not None and restored.notice:  # damaged checkpoints passed over
        say(restored.notice, flush=True)
    step = int(jax.device_get(state.step))
    device = f"{jax.devices()[0].device_kind} x{mesh.size}"
    say(
        f"{config['model']}: {metrics.count_params(state.params):,} parameters, {data.name} "
        f"({data.train_size:,} training images, {data.num_classes} classes) at "
        f"{config['image_size']}x{config['image_size']}, batch {config['batch_size']} on "
        f"{device} ({processes} process(es)), {config['dtype']}; "
        f"{total_steps} steps, {steps_per_epoch} per epoch; "
        + (f"resuming at step {step}" if step else "start"),
        flush=True,
    )

    def evaluate() -> dict[str, float]:
        # Transfers and steps are asynchronous: the host decodes the next batch meanwhile.
        totals = None
        for host_batch in data.eval_batches(eval_batch):
            sums = eval_step(state, parallel.put_process_batch(host_batch, mesh))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = {k: float(v) for k, v in jax.device_get(totals).items()}
        n = totals["count"]
        return {"loss": totals["loss"] / n, "top1": totals["top1"] / n, "top5": totals["top5"] / n}

    pending: list[dict[str, jax.Array]] = []
    first_pending_step = step
    interval_started, interval_steps, warm = time.perf_counter(), 0, False

    def flush() -> dict[str, float] | None:
        """Fetch the metrics of the steps since the last flush; fail on a non-finite loss."""
        nonlocal pending, first_pending_step
        if not pending:
            return None
        fetched = jax.device_get(pending)
        for i, m in enumerate(fetched):
            if not np.isfinite(m["loss"]):
                bad = first_pending_step + i + 1
                raise DivergedError(
                    f"loss became {m['loss']} at step {bad} (epoch "
                    f"{(bad - 1) // steps_per_epoch + 1}); the last good checkpoint is kept. "
                    "Lower --learning_rate or lengthen --warmup_epochs."
                )
            record["partial"]["loss"] += float(m["loss"])
            record["partial"]["top1"] += float(m["top1"])
            record["partial"]["steps"] += 1
        first_pending_step += len(pending)
        pending = []
        return {k: float(v) for k, v in fetched[-1].items()}

    def end_interval() -> float:
        """images/s since the last call; the first interval of a session holds compilation."""
        nonlocal interval_started, interval_steps, warm
        seconds = time.perf_counter() - interval_started
        rate = interval_steps * config["batch_size"] / seconds
        if warm:
            record["throughput"]["images"] += interval_steps * config["batch_size"]
            record["throughput"]["seconds"] += seconds
        record["wall_time_s"] += seconds
        warm = True
        interval_started, interval_steps = time.perf_counter(), 0
        return rate

    def save() -> None:
        checkpoints.save(step, state, record, data=batches)

    def stop_now(stop: GracefulStop) -> bool:
        """A stop request, agreed by all processes: they must save at the same step, so
        several agree where they sync anyway (progress lines); one process checks every step."""
        if processes == 1:
            return stop()
        if step % config["log_every"]:
            return False
        return bool(multihost_utils.process_allgather(np.asarray(stop())).any())

    finished = True
    try:
        with GracefulStop() as stop:
            while step < total_steps:
                state, step_metrics = train_step(
                    state, batch if batches is None else next(batches), step_key
                )
                pending.append(step_metrics)
                step += 1
                interval_steps += 1
                at_eval = step % eval_every == 0 or step == total_steps
                if step % config["log_every"] == 0 or at_eval:
                    last = flush()
                    rate = end_interval()
                    seconds_per_step = 1 / max(rate / config["batch_size"], 1e-9)
                    say(
                        f"  step {step}/{total_steps}  epoch {step / steps_per_epoch:.2f}  "
                        f"loss {last['loss']:.4f}  top-1 {_pct(last['top1'])}  "
                        f"lr {last['learning_rate']:.4g}  {rate:,.0f} images/s  "
                        f"ETA {_duration((total_steps - step) * seconds_per_step)}",
                        flush=True,
                    )
                if at_eval:
                    partial = record["partial"]
                    entry = {
                        "step": step,
                        "epoch": step / steps_per_epoch,
                        "train_loss": partial["loss"] / partial["steps"],
                        "train_top1": partial["top1"] / partial["steps"],
                        "learning_rate": last["learning_rate"],
                    }
                    if data.eval is not None:
                        started = time.perf_counter()
                        result = evaluate()
                        entry.update({f"eval_{k}": v for k, v in result.items()})
                        entry["eval_time_s"] = time.perf_counter() - started
                        record["wall_time_s"] += entry["eval_time_s"]
                        say(
                            f"eval at step {step} (epoch {entry['epoch']:.2f}): "
                            f"top-1 {_pct(result['top1'])}  top-5 {_pct(result['top5'])}  "
                            f"loss {result['loss']:.4f}  ({entry['eval_time_s']:.1f} s)",
                            flush=True,
                        )
                        interval_started = time.perf_counter()  # evaluation is not training
                    record["partial"] = _empty_partial()
                    record["history"].append(entry)
                    save()
                    writer.write(entry, step_key="step")
                if step < total_steps and stop_now(stop):
                    if not at_eval:  # else just saved
                        flush()
                        end_interval()
                        save()
                    finished = False
                    break
    finally:
        checkpoints.close()
        writer.close()

    history = record["history"]
    last_eval = history[-1] if history else {}
    throughput = record["throughput"]
    summary = {
        "finished": finished,
        "model": config["model"],
        "dataset": data.name,
        "steps": step,
        "epochs": step / steps_per_epoch,
        "final_top1": last_eval.get("eval_top1"),
        "final_top5": last_eval.get("eval_top5"),
        "best_top1": max((h["eval_top1"] for h in history if "eval_top1" in h), default=None),
        "final_train_loss": last_eval.get("train_loss"),
        "images_per_s": throughput["images"] / throughput["seconds"]
        if throughput["seconds"]
        else None,
        "wall_time_s": record["wall_time_s"],
        "device": device,
        "processes": processes,
        "params": metrics.count_params(state.params),
    }
    if finished:
        writer.write_json("summary.json", summary)
        rate = summary["images_per_s"]
        say(
            f"done: top-1 {_pct(summary['final_top1'])}, top-5 {_pct(summary['final_top5'])} "
            f"after {step} steps; "
            + (f"{rate:,.0f} training images/s; " if rate else "")
            + f"{_duration(summary['wall_time_s'])} on {device}",
            flush=True,
        )
    else:
        say(f"stopped at step {step}; run again with --workdir={config['workdir']} to resume")
    return summary


def main(argv):
    parallel.join_cluster()
    summary = common.run_from_flags(argv, run, FLAG_NAMES)
    if jax.process_index() == 0:
        keys = ("final_top1", "final_top5", "images_per_s")
        print(json.dumps({k: summary[k] for k in keys}))


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
