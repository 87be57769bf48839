"""Capsule networks: Sabour, Frosst and Hinton, "Dynamic Routing Between Capsules"
(NIPS 2017).

A three-layer CapsNet (Conv1, PrimaryCaps, DigitCaps routed by agreement, with a
reconstruction decoder; 8.2M parameters) reaches 0.25% test error on MNIST with
random shifts of up to 2 pixels as the only augmentation; the paper's table 1:

| model                               | paper's test error |
| ----------------------------------- | -----------------: |
| baseline CNN (35.4M parameters)     | 0.39%              |
| CapsNet, routing 1, no reconstruction | 0.34%            |
| CapsNet, routing 1, reconstruction  | 0.29%              |
| CapsNet, routing 3, no reconstruction | 0.35%            |
| CapsNet, routing 3, reconstruction  | 0.25%              |

    python -m experiments.capsules --workdir=runs/capsules/r3_recon        # 0.25%
    python -m experiments.capsules --routing_iterations=1 --noreconstruction
    python -m experiments.capsules --model=baseline --workdir=runs/capsules/baseline
    python -m experiments.capsules --dataset=fashion_mnist --workdir=runs/capsules/fashion
    python -m experiments.capsules --train_size=2000 --eval_size=1000 --epochs=2 \\
        --conv_filters=64 --primary_channels=8 --workdir=runs/capsules/quick

`launch/capsules.sh` runs the table. Training uses the first 50,000 training images
(the book's split, as the project's other MNIST runs), validates on the last 10,000
after every epoch and scores the test set at the end (the paper trains on all 60,000
and reports the test error). Adam at --learning_rate, decayed by --decay_rate every
--decay_steps steps (continuously). The workdir (default runs/capsules/<model...>) gets
config.json, metrics.jsonl, summary.json, checkpoints/, accuracy.png and, with the
decoder, reconstructions.png and perturbations.png (the paper's Figure 4); the same
command resumes a stopped run, and --epochs may grow. Beyond the paper, the summary
scores the test digits rotated (up to 20 degrees) and skewed (shear up to 0.3), which
the nets never saw, an affNIST-like test of robustness (section 5.2 of the paper).
`--dataset` trains the same nets on another TFDS dataset of small images (its classes
and image shape inferred, the decoder sized to its pixels), its validation images
carved from the end of its training split as for MNIST.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import ConfigDict

from experiments import common
from lib.capsules import layers, nets, pictures
from lib.capsules import train as train_lib
from lib.core import config as config_lib
from lib.core import data as data_lib
from lib.core import loop, metrics, plots
from lib.core import steps as batching
from lib.core.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, OneOf, Range, Setting
from lib.core.errors import ConfigError
from lib.core.stop import GracefulStop
from lib.nielsen import augment

FLAGS = flags.FLAGS

MODELS = ("capsnet", "baseline")

# The paper's table 1: test error (%) of each net, by (routing iterations, reconstruction).
PAPER_ERROR = {"baseline": 0.39, (1, False): 0.34, (1, True): 0.29, (3, False): 0.35,
               (3, True): 0.25}  # fmt: skip

# The order of the images (lib.core.data.load's): the book's split. config.json records it
# as "split", as experiments.mnist_convnet does, so that launch.vote knows the order of
# the test predictions.
SPLIT = "book"

# The test digits distorted as no training image is, for the robustness scores.
ROTATION_DEGREES, SHEAR = 20.0, 0.3

SETTINGS = (
    common.DATASET,
    Setting("model", "capsnet", "The net: the paper's CapsNet or its baseline CNN.", OneOf(MODELS)),
    Setting(
        "workdir",
        None,
        "Where the run writes; default runs/capsules/<model> (capsnet_r<iterations>"
        "[_norecon]), under runs/<dataset>/capsules/ for another dataset.",
        kind=str,
    ),
    Setting(
        "routing_iterations", 3, "Routing iterations between PrimaryCaps and DigitCaps.", AT_LEAST_1
    ),
    Setting("reconstruction", True, "Train the decoder too (its loss scaled down)."),
    Setting(
        "reconstruction_weight",
        layers.RECONSTRUCTION_WEIGHT,
        "Weight of the decoder's sum of squared errors in the loss.",
        NON_NEGATIVE,
    ),
    Setting("epochs", 50, "Epochs of training.", AT_LEAST_1),
    Setting("batch_size", 128, "Mini-batch size.", AT_LEAST_1),
    Setting("learning_rate", 0.001, "Adam's initial learning rate.", POSITIVE),
    Setting(
        "decay_rate",
        train_lib.DECAY_RATE,
        "Factor by which the learning rate decays every --decay_steps steps.",
        Range(0, 1, open_low=True),
    ),
    Setting("decay_steps", train_lib.DECAY_STEPS, "Steps of one decay of the rate.", AT_LEAST_1),
    Setting(
        "max_shift", 2, "Random shifts of up to k pixels, zero padded.", Range(0, 13)
    ),  # past half the image, no digit is left to see
    Setting(
        "train_size", None, "Train on the first N training images (quick runs).", AT_LEAST_1, int
    ),
    Setting(
        "eval_size",
        None,
        "Score the first N validation and test images (quick runs); default all 10,000.",
        Range(1, 10_000),
        int,
    ),
    Setting("seed", 0, "Random seed (initialisation, order of batches, shifts).", NON_NEGATIVE),
    Setting("conv_filters", 256, "CapsNet's Conv1 filters (smaller for quick runs).", AT_LEAST_1),
    Setting(
        "primary_channels",
        32,
        "CapsNet's PrimaryCaps channels of 8-D capsules (smaller for quick runs).",
        AT_LEAST_1,
    ),
    Setting("eval_batch_size", 500, "Batch size for validation and test.", AT_LEAST_1),
    Setting(
        "conv",
        "auto",
        "How the convolutions run, the same functions up to float rounding: xla (XLA's "
        "convolutions and their gradients), patches (the gradients as matrix products over "
        "the input's shifted slices, many times faster on XLA's CPU backend, slower to "
        "compile), auto (patches on CPU). A run may resume under another.",
        OneOf(layers.CONVS),
    ),
)
common.define_setting_flags(SETTINGS)

# The settings of the CapsNet only, None in a run of the baseline.
CAPSNET_ONLY = ("routing_iterations", "reconstruction", "reconstruction_weight",
                "conv_filters", "primary_channels")  # fmt: skip


def get_config() -> ConfigDict:
    """Every setting at its default: the paper's CapsNet, 3 routing iterations, decoder."""
    return config_lib.defaults(SETTINGS)


def run_name(config: Mapping[str, Any]) -> str:
    if config["model"] == "baseline":
        return "baseline"
    recon = "" if config["reconstruction"] else "_norecon"
    return f"capsnet_r{config['routing_iterations']}{recon}"


def resolve(overrides: Mapping[str, Any]) -> ConfigDict:
    """The defaults with every given setting over them, checked; a ConfigError names each
    bad value."""
    config = config_lib.resolve(get_config(), overrides, SETTINGS)
    if config.model == "baseline":
        for name in CAPSNET_ONLY:
            config[name] = None
    elif not config.reconstruction:
        config.reconstruction_weight = None
    where = "runs/capsules" if config.dataset == "mnist" else f"runs/{config.dataset}/capsules"
    config.workdir = config.workdir or f"{where}/{run_name(config)}"
    config.split = SPLIT
    return config


def paper_error(config: Mapping[str, Any]) -> float | None:
    """The paper's test error (%) for the net of `config`, or None."""
    if config["dataset"] != "mnist":
        return None
    if config["model"] == "baseline":
        return PAPER_ERROR["baseline"]
    return PAPER_ERROR.get((config["routing_iterations"], bool(config["reconstruction"])))


def build(
    config: Mapping[str, Any], image_shape=(28, 28, 1), num_classes: int = 10
) -> nets.CapsNet | nets.BaselineCNN:
    """The net a run of `config` trains, for images of `image_shape` in `num_classes`."""
    if config["model"] == "baseline":
        return nets.BaselineCNN(num_classes=num_classes, conv=config["conv"])
    return nets.CapsNet(
        conv=config["conv"],
        num_classes=num_classes,
        pixels=int(np.prod(image_shape)),
        conv_filters=config["conv_filters"],
        primary_channels=config["primary_channels"],
        routing_iterations=config["routing_iterations"],
        decoder=(512, 1024) if config["reconstruction"] else None,
    )


def run(overrides: Mapping[str, Any], workdir: str | None = None, verbose: bool = True) -> dict:
    """Train one net (the given settings over the defaults, `resolve`) and return its
    summary; `workdir` wins over overrides["workdir"]."""
    config = config_lib.as_dict(
        resolve({**overrides, "workdir": workdir or overrides.get("workdir")})
    )
    available = common.training_images(config)  # refuses a --train_size beyond it
    n_train = config["train_size"] or available
    if n_train and config["batch_size"] > n_train:
        raise ConfigError(
            f"--batch_size={config['batch_size']} exceeds the {n_train:,} training images"
        )
    # The learning rate follows the step, not the length of the run: more epochs go on.
    with common.own_workdir(config, ignore=("conv",), may_grow=("epochs",)) as root:
        return _run(config, root, verbose)


def _scores(predict, params, split: data_lib.Split, batch_size: int) -> np.ndarray:
    """The predicted classes of a split's images, in batches."""
    x = jnp.asarray(split.images)
    return np.concatenate(
        [np.asarray(predict(params, x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    )


def _accuracy(predicted: np.ndarray, split: data_lib.Split) -> float:
    return float(np.mean(predicted == split.labels))


def _run(config: dict, root: Path, verbose: bool) -> dict:
    say = print if verbose else (lambda *a, **k: None)
    started = time.perf_counter()
    splits = data_lib.load(config["dataset"], config["train_size"], order=config["split"])
    n_eval = config["eval_size"] or len(splits.test)
    validation, test = splits.validation.take(n_eval), splits.test.take(n_eval)
    writer = metrics.MetricsWriter(root)
    writer.write_json("config.json", config)

    image_shape = splits.train.images.shape[1:]
    model, seed = build(config, image_shape, data_lib.num_classes(splits)), config["seed"]
    params = train_lib.init(model, jax.random.key(seed), splits.train.images.shape[1:])
    if config["model"] == "baseline":
        loss = train_lib.baseline_loss(model, config["max_shift"])
    else:
        loss = train_lib.capsnet_loss(
            model, config["max_shift"], config["reconstruction_weight"] or 0.0
        )
    tx = train_lib.optimizer(config["learning_rate"], config["decay_rate"], config["decay_steps"])
    state = batching.TrainState(params, tx.init(params))
    batches = batching.Batches(len(splits.train), config["batch_size"], seed)
    arrays = (jnp.asarray(splits.train.images), jnp.asarray(splits.train.labels))
    step = batching.make_step(loss, tx, arrays, batches, seed)
    predict = train_lib.classify(model)
    n_params = metrics.count_params(params)
    name = run_name(config)
    say(
        f"{name}: {n_params:,} parameters, {len(splits.train):,} training images of "
        f"{config['dataset']}, batch "
        f"{config['batch_size']}, {batches.steps_per_epoch} steps/epoch",
        flush=True,
    )

    def evaluate(state) -> dict[str, float]:
        predicted = _scores(predict, state.params, validation, config["eval_batch_size"])
        accuracy = _accuracy(predicted, validation)
        return {"val_accuracy": accuracy, "val_error": 1.0 - accuracy}

    setup_s = time.perf_counter() - started
    with GracefulStop() as stop:
        result = loop.train(
            state,
            step,
            batches.schedule(config["epochs"]),
            root,
            evaluate=evaluate,
            hooks=common.loop_hooks(name, verbose, config["epochs"]),
            should_stop=stop,
        )
    if not result.finished:
        common.say_stopped(say, config, stop)
        return {"finished": False}

    finishing = time.perf_counter()
    params = result.state.params
    history = result.history
    best = max(history, key=lambda e: e["val_accuracy"])
    predicted = _scores(predict, params, test, config["eval_batch_size"])
    test_accuracy = _accuracy(predicted, test)
    writer.write_array("test_predictions.npy", predicted.astype(np.int8))
    robustness = {}
    for kind, distort in (
        ("rotated", lambda k, x: augment.random_rotation(k, x, ROTATION_DEGREES)),
        ("skewed", lambda k, x: augment.random_skew(k, x, SHEAR)),
    ):
        # One fixed distortion per test image, the same for every run.
        images = np.asarray(jax.jit(distort)(jax.random.key(2017), jnp.asarray(test.images)))
        distorted = data_lib.Split(images, test.labels)
        accuracy = _accuracy(_scores(predict, params, distorted, config["eval_batch_size"]), test)
        robustness[f"test_{kind}_accuracy"] = accuracy

    epoch_times = [e["epoch_time_s"] for e in history]
    summary = {
        "finished": True,
        "model": config["model"],
        "dataset": config["dataset"],
        "name": name,
        "params": n_params,
        "epochs": len(history),
        "test_accuracy": test_accuracy,
        "test_error": 1.0 - test_accuracy,
        "test_size": len(test),
        "best_val_accuracy": best["val_accuracy"],
        "best_epoch": best["epoch"],
        "final_val_accuracy": history[-1]["val_accuracy"],
        "final_train_loss": history[-1]["train_loss"],
        **robustness,
        "paper_test_error_pct": paper_error(config),
        "seconds_per_epoch": float(np.median(epoch_times)),
        "examples_per_s": history[-1]["examples_per_s"],
        "train_time_s": result.wall_time_s,
    }
    if writer.enabled:
        plots.accuracy_curves(history, root / "accuracy.png", title=f"{config['dataset']}, {name}")
        if isinstance(model, nets.CapsNet) and model.decoder is not None:
            _pictures(model, params, test, root)
    # Training and evaluation of every session, with this session's set-up and scoring.
    summary["wall_time_s"] = result.wall_time_s + setup_s + time.perf_counter() - finishing
    summary["device"] = f"{jax.devices()[0].device_kind} x1"
    writer.write_json("summary.json", summary)
    paper = summary["paper_test_error_pct"]
    say(
        f"test error {100 * summary['test_error']:.2f}%"
        + (f" (paper: {paper:.2f}%)" if paper is not None else "")
        + f"; best validation {100 * best['val_accuracy']:.2f}% at epoch {best['epoch']}; "
        f"rotated {100 * robustness['test_rotated_accuracy']:.2f}%, skewed "
        f"{100 * robustness['test_skewed_accuracy']:.2f}%; {summary['wall_time_s']:.0f} s on "
        f"{summary['device']}",
        flush=True,
    )
    return summary


def _pictures(model: nets.CapsNet, params, test: data_lib.Split, root: Path) -> None:
    """Reconstructions of the first test digits, and Figure 4 for the first one."""
    shown = jnp.asarray(test.images[:10])
    out = jax.jit(model.apply)({"params": params}, shown)  # masked to the predicted class
    predicted = np.asarray(jnp.argmax(out.lengths, -1))
    pictures.reconstructions(
        np.asarray(shown), np.asarray(out.reconstruction), test.labels[:10], predicted,
        root / "reconstructions.png", shown.shape[1:],
    )  # fmt: skip
    label = int(predicted[0])
    decoded = jax.jit(
        lambda p, c: nets.perturbation_images(model, p, c, label, layers.FIGURE4_DELTAS)
    )(params, out.capsules[0])
    pictures.perturbations(
        np.asarray(decoded),
        layers.FIGURE4_DELTAS,
        root / "perturbations.png",
        title=f"a digit capsule's dimensions, each moved by -0.25 .. 0.25 (class {label})",
        image_shape=shown.shape[1:],
    )


def main(argv):
    summary = common.run_from_flags(argv, run, SETTINGS)
    print(json.dumps({k: v for k, v in summary.items() if k.startswith("test_")}))


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
