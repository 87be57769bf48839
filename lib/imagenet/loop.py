"""An ImageNet-scale run: `train_and_evaluate(config, workdir) -> summary`.

One function trains a model of the zoo data-parallel on a TFDS image classification
dataset (or on synthetic batches), evaluates every `eval_every` steps, and writes to
`workdir`: config.json, metrics.jsonl (one line per evaluation), summary.json, TensorBoard
events and checkpoints/. Called again on the same workdir it resumes from the newest
intact checkpoint, data position included, and ends as an uninterrupted run would; a
workdir that holds a run with other settings (RUN_IDENTITY) is refused. Only process 0
writes files.

The settings are declared once, in SETTINGS (name, default, meaning), and the values
they may take in `validate`. `get_config` gives them as an `ml_collections.ConfigDict`;
`train_and_evaluate` takes that or any mapping of setting names to values (a missing one
keeps its default). Settings that default to None get a value that depends on the others
(`resolve`). Progress reaches the caller as lines of text through `report` (absl's log at
INFO when none is given); the library itself prints nothing.

The sections follow big_vision's train.py: settings, mesh, input, model and optimizer,
checkpoint, loop. The steps themselves are `lib.imagenet.train`'s.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from lib.core import config as config_lib
from lib.core import metrics, parallel
from lib.core.checkpoint import Checkpointer
from lib.core.config import OneOf, Setting
from lib.core.errors import ConfigError, DataError, DivergedError
from lib.core.stop import GracefulStop
from lib.imagenet import input_pipeline as ip
from lib.imagenet import train as train_lib
from lib.imagenet.nets import registry

Report = Callable[[str], None]

# ----------------------------------------------------------------------------- settings

SETTINGS: tuple[Setting, ...] = (
    Setting("model", "resnet50", "Model name (lib.imagenet.nets.registry, or resnet_tiny)."),
    Setting("dataset", "imagenet2012", "TFDS image classification dataset."),
    Setting("data_dir", None, "TFDS data directory; default $TFDS_DATA_DIR.", kind=str),
    Setting("train_split", "train", "TFDS split to train on (slicing allowed)."),
    Setting("eval_split", None, "Split to evaluate on; default validation, else test.", kind=str),
    Setting("synthetic", False, "Random images on the devices: throughput, no evaluation."),
    Setting("image_size", None, "Square input side; default the model's (224 or 299).", kind=int),
    Setting("batch_size", 256, "Global batch size, over all devices and hosts."),
    Setting("epochs", None, "Training epochs (default 90 unless --steps is given).", kind=int),
    Setting("steps", None, "Training steps, instead of --epochs.", kind=int),
    Setting(
        "learning_rate", None, "Peak learning rate; default 0.1 * batch_size / 256.", kind=float
    ),
    Setting("warmup_epochs", 5.0, "Linear warm-up before the cosine decay, in epochs."),
    Setting("momentum", 0.9, "Nesterov momentum."),
    Setting("weight_decay", 1e-4, "Weight decay on convolution and dense kernels."),
    Setting("label_smoothing", 0.1, "Label smoothing."),
    Setting("aux_weight", 0.3, "Loss weight of auxiliary classifiers, where a net has them."),
    Setting("dtype", "bfloat16", "Compute dtype (params: f32).", OneOf(("bfloat16", "float32"))),
    Setting("seed", 0, "Random seed (initialisation, data order, augmentation, dropout)."),
    Setting("eval_every", 0, "Evaluate and checkpoint every N steps; 0: every epoch."),
    Setting("eval_batch_size", None, "Global evaluation batch; default --batch_size.", kind=int),
    Setting("log_every", 100, "Steps between progress lines."),
    Setting("num_devices", None, "Devices to shard the batch over; default all.", kind=int),
    Setting("workers", None, "Grain worker processes per host; default CPUs - 2.", kind=int),
)

# What must not change when a run resumes: the data order, the schedule and the loss
# depend on it.
RUN_IDENTITY = ("model", "dataset", "train_split", "synthetic", "image_size", "batch_size",
                "seed", "workers", "dtype", "learning_rate", "warmup_epochs", "momentum",
                "weight_decay", "label_smoothing", "aux_weight", "total_steps",
                "processes")  # fmt: skip

IMAGENET_HINT = (
    " For ImageNet, put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
    "<data_dir>/downloads/manual and run: tfds build imagenet2012 --data_dir=<data_dir> "
    "--file_format=array_record (building needs TensorFlow installed; training does not)"
)


def get_config(**overrides: Any) -> ConfigDict:
    """Every setting at its default, with `overrides` over them (ConfigError for a name
    that is no setting)."""
    return config_lib.preset(SETTINGS, overrides)


def resolve(config: Mapping[str, Any] | ConfigDict) -> dict[str, Any]:
    """A plain dict of every setting: the defaults, then `config`, then the values of the
    settings left None that depend on the others (image size, learning rate, ...)."""
    given = config_lib.as_dict(config)
    names = [s.name for s in SETTINGS]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown setting {', '.join(unknown)}; the settings are {', '.join(sorted(names))}"
        )
    out = {s.name: s.default for s in SETTINGS} | given
    try:
        model = registry.check_name(out["model"], train_lib.SMOKE_MODELS)
    except registry.UnknownModelError as e:
        raise ConfigError(str(e)) from None
    if out["image_size"] is None:
        out["image_size"] = train_lib.default_resolution(model)
    if out["learning_rate"] is None and out["batch_size"] > 0:
        out["learning_rate"] = train_lib.scaled_learning_rate(out["batch_size"])
    if out["steps"] is None and out["epochs"] is None:
        out["epochs"] = 90
    if out["eval_batch_size"] is None:
        out["eval_batch_size"] = out["batch_size"]
    if out["workers"] is None:
        out["workers"] = max(0, min(32, (os.cpu_count() or 1) - 2))
    return out


def validate(config: Mapping[str, Any]) -> None:
    """ConfigError for resolved settings that cannot work (before any data is read)."""
    for name in ("batch_size", "eval_batch_size", "log_every", "image_size"):
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
    config_lib.check(config, SETTINGS, prefix="--")  # the choices (dtype)
    smallest = train_lib.min_resolution(config["model"])
    if config["image_size"] < smallest:
        why = registry.TRAIN_SIZE_NOTE.get(config["model"])
        raise ConfigError(
            f"{config['model']} needs --image_size of at least {smallest}, "
            f"got {config['image_size']}" + (f" ({why})" if why else "")
        )
    processes = jax.process_count()
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % processes:
            raise ConfigError(f"--{name} must be a multiple of the {processes} processes")


# ----------------------------------------------------------------------------- mesh


def make_mesh(config: Mapping[str, Any]) -> jax.sharding.Mesh:
    """The devices the batch is sharded over; ConfigError when the batches do not split."""
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


def schedule_steps(config: Mapping[str, Any], train_size: int) -> tuple[int, int, int]:
    """(steps per epoch, total steps, warm-up steps) of the resolved `config` on
    `train_size` training images; ConfigError for a batch larger than the data or a
    warm-up as long as the run (its learning rate would never reach the peak nor decay)."""
    steps_per_epoch = train_size // config["batch_size"]
    if steps_per_epoch == 0:
        raise ConfigError(
            f"--batch_size={config['batch_size']} is larger than the {train_size} "
            "training images; lower it or use a larger --train_split"
        )
    total_steps = config["steps"] or config["epochs"] * steps_per_epoch
    warmup_steps = round(config["warmup_epochs"] * steps_per_epoch)
    if warmup_steps >= total_steps:
        raise ConfigError(
            f"--warmup_epochs={config['warmup_epochs']:g} is {warmup_steps} steps, not fewer "
            f"than the run's {total_steps} ({total_steps / steps_per_epoch:.3g} epochs), so "
            "the learning rate would never reach its peak nor decay; lower --warmup_epochs"
        )
    return steps_per_epoch, total_steps, warmup_steps


def check_same_run(workdir: Path, config: Mapping[str, Any]) -> None:
    """UserError if the run in this workdir had other RUN_IDENTITY settings."""
    metrics.accept_resume(workdir, config, keys=RUN_IDENTITY)


# ----------------------------------------------------------------------------- input


@contextlib.contextmanager
def _absl_errors_only() -> Iterator[None]:
    before = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(before)


class Dataset:
    """The training and evaluation sources of a TFDS dataset, or synthetic batches."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.name = config["dataset"]
        if config["synthetic"]:
            self.name = "synthetic"
            self.num_classes, self.train_size, self.eval = 1000, train_lib.IMAGENET_TRAIN_SIZE, None
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
        split = config["eval_split"] or _default_eval_split(self.name, info.splits)
        _check_split(self.name, split, info.splits)
        self.eval = ip.open_tfds_source(self.name, split, config["data_dir"])

    def train_loader(self, per_host_batch: int) -> grain.DataLoader:
        """This host's share of every global training batch, augmented, endlessly."""
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

    def eval_batches(self, per_host_batch: int) -> Iterator[dict[str, Any]]:
        """One pass over the evaluation split, this host's share, padded to whole batches
        (padding has mask 0)."""
        c = self.config
        loader = ip.make_loader(
            self.eval,
            train=False,
            image_size=c["image_size"],
            batch_size=per_host_batch,
            worker_count=c["workers"],
            normalize=False,
        )
        steps = ip.eval_steps(
            len(self.eval), per_host_batch, jax.process_count(), worker_count=c["workers"]
        )
        return ip.pad_epoch(iter(loader), steps)


def _held_out_hint(splits: Collection[str]) -> str:
    """Flags that evaluate on the last 5% of a split and train on the rest."""
    name = "train" if "train" in splits else sorted(splits)[0]
    return f"--train_split='{name}[:95%]' --eval_split='{name}[95%:]'"


def _default_eval_split(dataset: str, splits: Collection[str]) -> str:
    """validation, else test; ConfigError for a dataset with neither."""
    for name in ("validation", "test"):
        if name in splits:
            return name
    raise ConfigError(
        f"dataset '{dataset}' has no validation or test split (its splits: "
        f"{', '.join(sorted(splits))}); hold some images out for evaluation with "
        f"--eval_split, e.g. {_held_out_hint(splits)}"
    )


def _check_split(dataset: str, split: str, splits: Collection[str]) -> None:
    """ConfigError unless every split named in the TFDS split string `split` (slices like
    "test[:1000]" and unions like "train[:5%]+test" allowed) is one of `splits`."""
    for part in split.split("+"):
        base = part.split("[")[0].split("(")[0].strip()
        if base not in splits:
            raise ConfigError(
                f"--eval_split={split}: dataset '{dataset}' has no split '{base}' (its "
                f"splits: {', '.join(sorted(splits))}); name one of them, or hold some "
                f"training images out, e.g. {_held_out_hint(splits)}"
            )


# ----------------------------------------------------------------------------- model and optimizer


class Programs(NamedTuple):
    """A run's jitted functions (see `lib.imagenet.train`)."""

    init: Callable[[jax.Array], train_lib.TrainState]  # key -> state, replicated on the mesh
    train_step: Callable  # (state, batch, key) -> (state, metrics)
    eval_step: Callable  # (state, batch) -> sums


@functools.lru_cache(maxsize=8)
def compiled_programs(
    model: str,
    num_classes: int,
    dtype: str,
    recipe: train_lib.Recipe,
    image_size: int,
    mesh: jax.sharding.Mesh,
) -> Programs:
    """The functions of a run with these settings, made once per process, so that runs
    alike in one process (a stopped run resumed, a sweep over seeds, tests) compile once."""
    net = train_lib.build_model(
        model, num_classes=num_classes, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    )
    optimizer = train_lib.make_optimizer(recipe)
    return Programs(
        init=train_lib.jit_init(train_lib.make_init(net, optimizer, image_size), mesh),
        train_step=train_lib.jit_train_step(
            train_lib.make_train_step(net, recipe, optimizer), mesh
        ),
        eval_step=train_lib.jit_eval_step(train_lib.make_eval_step(net), mesh),
    )


# ----------------------------------------------------------------------------- progress


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _empty_partial() -> dict[str, float]:
    return {"loss": 0.0, "top1": 0.0, "steps": 0}


class _Meter:
    """The train steps' metrics, fetched from the devices only at progress lines (so the
    host never waits on a step), summed into the current evaluation interval in
    `record["partial"]`, and the training time and images/s in `record`.

    The first interval of a call holds the compilation, so its images do not count
    toward the throughput (its time does count toward the wall time).
    """

    def __init__(self, record: dict, batch_size: int, steps_per_epoch: int, step: int):
        self.record, self.batch_size, self.steps_per_epoch = record, batch_size, steps_per_epoch
        self.pending: list[dict[str, jax.Array]] = []
        self.first_pending_step = step
        self.started, self.steps, self.warm = time.perf_counter(), 0, False

    def add(self, step_metrics: dict[str, jax.Array]) -> None:
        self.pending.append(step_metrics)
        self.steps += 1

    def flush(self) -> dict[str, float] | None:
        """The last step's metrics; DivergedError on a non-finite loss among those fetched."""
        if not self.pending:
            return None
        fetched = jax.device_get(self.pending)
        partial = self.record["partial"]
        for i, m in enumerate(fetched):
            if not np.isfinite(m["loss"]):
                bad = self.first_pending_step + i + 1
                raise DivergedError(
                    f"loss became {m['loss']} at step {bad} (epoch "
                    f"{(bad - 1) // self.steps_per_epoch + 1}); the last good checkpoint is "
                    "kept. Start again in a new --workdir with a lower --learning_rate or a "
                    "longer --warmup_epochs."
                )
            partial["loss"] += float(m["loss"])
            partial["top1"] += float(m["top1"])
            partial["steps"] += 1
        self.first_pending_step += len(self.pending)
        self.pending = []
        return {k: float(v) for k, v in fetched[-1].items()}

    def end_interval(self) -> float:
        """images/s since the last call."""
        seconds = time.perf_counter() - self.started
        images = self.steps * self.batch_size
        if self.warm:
            self.record["throughput"]["images"] += images
            self.record["throughput"]["seconds"] += seconds
        self.record["wall_time_s"] += seconds
        self.warm = True
        self.restart_clock()
        return images / seconds

    def restart_clock(self) -> None:
        """Begin a new interval now (after an evaluation, which is not training time)."""
        self.started, self.steps = time.perf_counter(), 0


# ----------------------------------------------------------------------------- the run


def train_and_evaluate(
    config: Mapping[str, Any] | ConfigDict,
    workdir: str | Path,
    report: Report | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one configuration in `workdir`; returns the run's summary.

    `report` hears the progress lines (on every process; absl's log at INFO by default).
    `should_stop` is asked after every step (on several processes, at progress lines, and
    all save at the same step when any asks); by default SIGTERM and SIGINT ask. A stopped
    run saves a checkpoint and returns with `summary["finished"]` False, writing no
    summary.json. Raises ConfigError for bad settings (those that need the dataset's
    splits and size too) and DataError for a missing dataset before `workdir` is created,
    UserError for a held workdir or one with another run before any file of the run is
    written, and DivergedError on a non-finite loss, keeping the last good checkpoint.
    """
    config = resolve(config)
    validate(config)
    mesh = make_mesh(config)
    data = Dataset(config)
    schedule = schedule_steps(config, data.train_size)
    path = metrics.prepare_workdir(workdir)
    with metrics.hold_workdir(path):  # a second run there is refused, naming this one
        return _train(config, data, schedule, path, mesh, report or logging.info, should_stop)


def _train(
    config: dict[str, Any],
    data: Dataset,
    schedule: tuple[int, int, int],
    workdir: Path,
    mesh: jax.sharding.Mesh,
    report: Report,
    should_stop: Callable[[], bool] | None,
) -> dict[str, Any]:
    """The run of `train_and_evaluate`, in the workdir it holds, on `data` with the
    `schedule_steps` of its size."""
    processes = jax.process_count()
    train_batch = config["batch_size"] // processes
    eval_batch = config["eval_batch_size"] // processes

    steps_per_epoch, total_steps, warmup_steps = schedule
    config = {**config, "workdir": str(workdir), "total_steps": total_steps,
              "processes": processes}  # fmt: skip
    check_same_run(workdir, config)  # before anything is written there
    eval_every = config["eval_every"] or steps_per_epoch

    # Model and optimizer.
    recipe = train_lib.Recipe(
        learning_rate=config["learning_rate"],
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        momentum=config["momentum"],
        weight_decay=config["weight_decay"],
        label_smoothing=config["label_smoothing"],
        aux_weight=config["aux_weight"],
    )
    programs = compiled_programs(
        config["model"], data.num_classes, config["dtype"], recipe, config["image_size"], mesh
    )
    train_step, eval_step = programs.train_step, programs.eval_step

    init_key, step_key = jax.random.split(jax.random.PRNGKey(config["seed"]))
    try:
        state = programs.init(init_key)
    except (TypeError, ValueError, ZeroDivisionError) as e:  # shapes that do not work out
        raise ConfigError(
            f"{config['model']} cannot run at --image_size={config['image_size']} "
            f"({type(e).__name__}); try a larger --image_size"
        ) from e
    step_key = parallel.put_replicated(step_key, mesh)

    # Checkpoint: the newest intact step, with the data position, or a fresh record.
    record: dict[str, Any] = {
        "history": [],
        "partial": _empty_partial(),
        "throughput": {"images": 0, "seconds": 0.0},
        "wall_time_s": 0.0,
    }
    checkpoints = Checkpointer(workdir / "checkpoints")
    writer = metrics.MetricsWriter(workdir)
    loader_iter = None if config["synthetic"] else iter(data.train_loader(train_batch))
    restored = checkpoints.restore_latest(state, data=loader_iter)
    if restored is not None:
        state, record = restored.state, restored.record
    writer.reset(record["history"], step_key="step")
    writer.write_json("config.json", config)

    if config["synthetic"]:
        key = jax.random.PRNGKey(config["seed"] + 1)
        batch = train_lib.synthetic_batch(
            key, config["batch_size"], config["image_size"], data.num_classes, mesh
        )
        batches = None
    else:
        batches = ip.DevicePrefetch(loader_iter, parallel.batch_sharding(mesh))

    if restored is not None and restored.notice:  # damaged checkpoints passed over
        report(restored.notice)
    step = int(jax.device_get(state.step))
    device = f"{jax.devices()[0].device_kind} x{mesh.size}"
    report(
        f"{config['model']}: {metrics.count_params(state.params):,} parameters, {data.name} "
        f"({data.train_size:,} training images, {data.num_classes} classes) at "
        f"{config['image_size']}x{config['image_size']}, batch {config['batch_size']} on "
        f"{device} ({processes} process(es)), {config['dtype']}; "
        f"{total_steps} steps, {steps_per_epoch} per epoch; "
        + (f"resuming at step {step}" if step else "start")
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

    def stop_now(stop: Callable[[], bool]) -> bool:
        """A stop request, agreed by all processes: they must save at the same step, so
        several agree where they sync anyway (progress lines); one process checks every step."""
        if processes == 1:
            return stop()
        if step % config["log_every"]:
            return False
        return bool(multihost_utils.process_allgather(np.asarray(stop())).any())

    # The loop.
    meter = _Meter(record, config["batch_size"], steps_per_epoch, step)
    finished = True
    try:
        with contextlib.ExitStack() as context:
            stop = should_stop or context.enter_context(GracefulStop())
            while step < total_steps:
                state, step_metrics = train_step(
                    state, batch if batches is None else next(batches), step_key
                )
                meter.add(step_metrics)
                step += 1
                at_eval = step % eval_every == 0 or step == total_steps
                if step % config["log_every"] == 0 or at_eval:
                    last = meter.flush()
                    rate = meter.end_interval()
                    seconds_per_step = config["batch_size"] / max(rate, 1e-9)
                    report(
                        f"  step {step}/{total_steps}  epoch {step / steps_per_epoch:.2f}  "
                        f"loss {last['loss']:.4f}  top-1 {_pct(last['top1'])}  "
                        f"lr {last['learning_rate']:.4g}  {rate:,.0f} images/s  "
                        f"ETA {_duration((total_steps - step) * seconds_per_step)}"
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
                        report(
                            f"eval at step {step} (epoch {entry['epoch']:.2f}): "
                            f"top-1 {_pct(result['top1'])}  top-5 {_pct(result['top5'])}  "
                            f"loss {result['loss']:.4f}  ({entry['eval_time_s']:.1f} s)"
                        )
                        meter.restart_clock()
                    record["partial"] = _empty_partial()
                    record["history"].append(entry)
                    checkpoints.save(step, state, record, data=batches)
                    writer.write(entry, step_key="step")
                if step < total_steps and stop_now(stop):
                    if not at_eval:  # else just saved
                        meter.flush()
                        meter.end_interval()
                        checkpoints.save(step, state, record, data=batches)
                    finished = False
                    break
    finally:
        checkpoints.close()
        writer.close()

    summary = _summary(config, data.name, record, step, step / steps_per_epoch, finished, device)
    summary["params"] = metrics.count_params(state.params)
    if finished:
        writer.write_json("summary.json", summary)
        rate = summary["images_per_s"]
        report(
            f"done: top-1 {_pct(summary['final_top1'])}, top-5 {_pct(summary['final_top5'])} "
            f"after {step} steps; "
            + (f"{rate:,.0f} training images/s; " if rate else "")
            + f"{_duration(summary['wall_time_s'])} on {device}"
        )
    elif not getattr(stop, "nested", False):  # a caller of several runs says how to go on
        report(f"stopped at step {step}; run again with --workdir={workdir} to resume")
    return summary


def _summary(
    config: Mapping[str, Any],
    dataset: str,
    record: dict,
    step: int,
    epochs: float,
    finished: bool,
    device: str,
) -> dict[str, Any]:
    """What summary.json holds, but the parameter count."""
    history = record["history"]
    last_eval = history[-1] if history else {}
    throughput = record["throughput"]
    return {
        "finished": finished,
        "model": config["model"],
        "dataset": dataset,
        "steps": step,
        "epochs": epochs,
        "final_top1": last_eval.get("eval_top1"),
        "final_top5": last_eval.get("eval_top5"),
        "best_top1": max((h["eval_top1"] for h in history if "eval_top1" in h), default=None),
        "final_train_loss": last_eval.get("train_loss"),
        "images_per_s": throughput["images"] / throughput["seconds"]
        if throughput["seconds"]
        else None,
        "wall_time_s": record["wall_time_s"],
        "device": device,
        "processes": config["processes"],
    }
