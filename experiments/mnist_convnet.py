"""Nielsen's chapter-6 ladder of MNIST networks ("Neural Networks and Deep Learning").

Every rung is a preset: `--net=<rung>` sets the book's network and
hyperparameters, and any flag given explicitly overrides them.

    python -m experiments.mnist_convnet --net=relu --workdir=runs/relu
    python -m experiments.mnist_convnet --net=dropout --workdir=runs/dropout   # GPU

| rung     | book's test accuracy | epochs | eta  | lambda | notes                      |
| -------- | -------------------- | ------ | ---- | ------ | -------------------------- |
| shallow  | 97.80%               | 60     | 0.1  | 0      | FC 100 sigmoid             |
| conv1    | 98.78%               | 60     | 0.1  | 0      | ConvPool 20                |
| conv2    | 99.06%               | 60     | 0.1  | 0      | ConvPool 20, 40            |
| relu     | 99.23%               | 60     | 0.03 | 0.1    | ReLU everywhere            |
| expanded | 99.37%               | 60     | 0.03 | 0.1    | 250,000 shifted images     |
| fc2      | 99.43%               | 60     | 0.03 | 0.1    | second FC 100              |
| dropout  | 99.60%               | 40     | 0.03 | 0      | FC 1000 x2, dropout 0.5    |
| ensemble | 99.67%               | 40     | 0.03 | 0      | five dropout nets, voting  |

The README's main job: three nets of the ReLU rung trained side by side (on the CPU,
spread over its cores) and voting, with random one-pixel shifts, the book's batch of
10 and lambda, Nesterov momentum and a cosine learning-rate decay, 4 epochs (the
README gives its accuracy, time and device):

    python -m experiments.mnist_convnet --net=relu --ensemble=3 --epochs=4 --max_shift=1 \
        --batch_size=10 --optimizer=nesterov --learning_rate=0.015 --l2=0.1 \
        --schedule=cosine --eval_batch_size=100 --workdir=runs/main

Validation is the book's by default (`--split=book`: the last 10,000 of the
original 60,000 training images); `--split=tfds` holds out the last 10,000 in
TFDS's stored order instead.

The same nets train on any TFDS image classification dataset of small images, their
shapes inferred from its images (28x28 grey or 32x32 colour alike); the book's numbers
are MNIST's only:

    python -m experiments.mnist_convnet --net=relu --dataset=fashion_mnist
    python -m experiments.mnist_convnet --net=dropout --dataset=cifar10
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from absl import app, flags
from flax import linen as nn
from ml_collections import ConfigDict

from experiments import common
from lib.adversarial import training as adversarial_training
from lib.core import config as config_lib
from lib.core import data as data_lib
from lib.core import metrics, plots
from lib.core.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, OneOf, Range, Setting
from lib.core.errors import ConfigError
from lib.core.stop import GracefulStop
from lib.nielsen import augment, layers, nets
from lib.nielsen import train as train_lib

FLAGS = flags.FLAGS

# Every setting of a run, declared once: the flags, the preset (`get_config`), the range
# checks and the saved config.json all derive from this list. A default of None is the
# rung's (a field of lib.nielsen.nets.Rung) or, for the rest, "none".
SETTINGS = (
    Setting(
        "net", "relu", "The rung of the ladder: network and its hyperparameters.", OneOf(nets.NETS)
    ),
    common.DATASET,
    Setting("workdir", None, "Where the run writes; default runs/<dataset>/<net>.", kind=str),
    Setting("seed", 0, "Random seed (initialisation, shuffling, dropout).", NON_NEGATIVE),
    Setting("epochs", None, "Epochs; default: the rung's.", AT_LEAST_1, int),
    Setting("batch_size", None, "Mini-batch size; default: the rung's (10).", AT_LEAST_1, int),
    Setting("learning_rate", None, "Learning rate eta; default: the rung's.", POSITIVE, float),
    Setting("l2", None, "L2 regularisation lambda; default: the rung's.", NON_NEGATIVE, float),
    Setting(
        "dropout",
        None,
        "Dropout rate on FC and softmax inputs; default: the rung's.",
        FRACTION,
        float,
    ),
    Setting(
        "activation",
        None,
        "Activation of every layer; default: the rung's.",
        OneOf(tuple(layers.ACTIVATIONS)),
        str,
    ),
    Setting(
        "expanded", None, "Train on the 5x one-pixel-shift set; default: the rung's.", kind=bool
    ),
    Setting("ensemble", None, "Nets trained together, scored by majority vote.", AT_LEAST_1, int),
    Setting(
        "max_shift", 0, "Random shifts of up to k pixels per training image.", Range(0, 13)
    ),  # past half the image, no digit is left to see
    Setting("max_degrees", 0.0, "Random rotations of up to this many degrees.", Range(0, 180)),
    Setting("max_skew", 0.0, "Random horizontal skews (shear factor) up to this.", Range(0, 1)),
    Setting(
        "elastic_alpha", 0.0, "Elastic distortion strength (Simard et al. use 34).", NON_NEGATIVE
    ),
    Setting("elastic_sigma", 4.0, "Elastic distortion smoothness, in pixels.", POSITIVE),
    Setting(
        "train_size", None, "Keep only the first N training images (quick runs).", AT_LEAST_1, int
    ),
    common.VALIDATION_SIZE,
    common.TEST_SIZE,
    Setting(
        "split",
        "book",
        "Validation images: book, the last 10,000 of MNIST's original "
        "60,000 training images (the book's); tfds, the last 10,000 in the order TFDS "
        "stores them (as every other dataset's are).",
        OneOf(data_lib.ORDERS),
    ),
    Setting("optimizer", "sgd", "sgd is the book's plain SGD.", OneOf(train_lib.OPTIMIZERS)),
    Setting(
        "schedule",
        "constant",
        "Learning rate: the book's constant, or cosine decay.",
        OneOf(train_lib.SCHEDULES),
    ),
    Setting("momentum", 0.9, "Momentum for --optimizer=momentum or nesterov.", FRACTION),
    Setting(
        "init", "book", "Weight initialisation: N(0, 1/n_out) or N(0, 1/n_in).", OneOf(layers.INITS)
    ),
    Setting(
        "adversarial_training",
        "none",
        "Train on adversarial examples of the net itself, made at every step: fgsm "
        "(Goodfellow et al. 2014: the cost half on clean, half on FGSM images) or pgd "
        "(Madry et al. 2017: on PGD images only).",
        OneOf(("none", *adversarial_training.METHODS)),
    ),
    Setting(
        "adversarial_eps",
        0.25,
        "L-inf budget of the training attack (Goodfellow et al.: 0.25; Madry et al.: 0.3).",
        Range(0, 1, open_low=True),
    ),
    Setting(
        "adversarial_weight",
        None,
        "Share of the clean images' cost in adversarial training; default 0.5 for fgsm, 0 for pgd.",
        FRACTION,
        float,
    ),
    Setting(
        "adversarial_steps",
        7,
        "PGD steps per training batch (Madry et al.: 40), of 2.5 eps / steps each.",
        AT_LEAST_1,
    ),
    Setting(
        "adversarial_warmup",
        0.0,
        "Epochs over which the training attack's budget grows from 0 to its eps.",
        NON_NEGATIVE,
    ),
    *common.PROGRAM_SETTINGS,
)
common.define_setting_flags(SETTINGS)

# The settings of adversarial training, None in a run without it.
ADVERSARIAL = ("adversarial_eps", "adversarial_weight", "adversarial_steps", "adversarial_warmup")

# The settings a rung presets: those named as a field of nets.Rung.
PRESET = tuple(s.name for s in SETTINGS if s.name in nets.Rung.__dataclass_fields__)


def get_config(net: str = "relu") -> ConfigDict:
    """The rung `net` as a config: the book's network and hyperparameters for it, every
    other setting at its default."""
    if net not in nets.RUNGS:
        raise ConfigError(f"unknown net '{net}'; choose from {', '.join(nets.NETS)}")
    rung = nets.RUNGS[net]
    values = {name: getattr(rung, name) for name in PRESET}
    return config_lib.preset(SETTINGS, {"net": net, **values})


def resolve(overrides: Mapping[str, Any]) -> ConfigDict:
    """The preset of overrides["net"] (default relu) with every non-None override over it,
    checked against the settings' ranges; a ConfigError names each bad one."""
    net = config_lib.given(overrides).get("net", "relu")
    resolved = config_lib.resolve(get_config(net), overrides, SETTINGS)
    resolved.workdir = (
        resolved.workdir or f"runs/{resolved.dataset.replace('/', '_')}/{resolved.net}"
    )
    if resolved.adversarial_training == "none":  # no attack in training: nothing to set
        for name in ADVERSARIAL:
            resolved[name] = None
    return resolved


def adversary(
    config: Mapping[str, Any], steps_per_epoch: int
) -> adversarial_training.Adversary | None:
    """The attack that a run with `config` trains against, or None."""
    method = config["adversarial_training"]
    if method == "none":
        return None
    weight = config["adversarial_weight"]
    return adversarial_training.Adversary(
        method=method,
        eps=config["adversarial_eps"],
        clean_weight=(0.5 if method == "fgsm" else 0.0) if weight is None else weight,
        steps=config["adversarial_steps"],
        warmup_steps=round(config["adversarial_warmup"] * steps_per_epoch),
    )


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _members(summary: dict) -> str:
    """For an ensemble: what its test accuracy is, and each net's alone."""
    alone = summary.get("test_member_accuracy")
    if not alone:
        return ""
    return f", the vote of {len(alone)} nets (alone {', '.join(map(_pct, alone))})"


def run(overrides: Mapping[str, Any], workdir: str | None = None, verbose: bool = True) -> dict:
    """Train one configuration and return its summary: the preset of overrides["net"] with
    the given settings over it (`resolve`); `workdir` wins over overrides["workdir"]."""
    config = config_lib.as_dict(
        resolve({**overrides, "workdir": workdir or overrides.get("workdir")})
    )
    model = nets.create(
        config["net"],
        activation=config["activation"],
        dropout=config["dropout"],
        weight_init=config["init"],
    )
    try:
        expansion = augment.AugmentConfig(
            max_shift=config["max_shift"],
            max_degrees=config["max_degrees"],
            max_skew=config["max_skew"],
            elastic_alpha=config["elastic_alpha"],
            elastic_sigma=config["elastic_sigma"],
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    train_config = train_lib.TrainConfig(
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        learning_rate=config["learning_rate"],
        l2=config["l2"],
        optimizer=config["optimizer"],
        momentum=config["momentum"],
        schedule=config["schedule"],
        seed=config["seed"],
        ensemble=config["ensemble"],
        expanded=config["expanded"],
        augment=expansion if expansion.enabled else None,
        eval_batch_size=config["eval_batch_size"],
        driver=config["driver"],
        ensemble_layout=config["ensemble_layout"],
        num_devices=config["num_devices"],
    )
    available = common.training_images(config)  # refuses a --train_size beyond it
    n_train = config["train_size"] or available or 50_000
    train_lib.validate(train_config, n_train)
    steps_per_epoch = train_lib.virtual_train_size(n_train, train_config) // config["batch_size"]
    train_config = dataclasses.replace(train_config, adversary=adversary(config, steps_per_epoch))
    # More epochs go on from where the run ended, as if it had never stopped; not so under
    # a cosine schedule, which the number of epochs sets from the first step.
    grows = ("epochs",) if config["schedule"] == "constant" else ()
    with common.own_workdir(config, may_grow=grows) as workdir_path:
        return _train(config, workdir_path, model, train_config, verbose)


def _train(
    config: dict,
    workdir_path: Path,
    model: nn.Module,
    train_config: train_lib.TrainConfig,
    verbose: bool,
) -> dict:
    """The run of `run`, in the workdir it holds."""
    rung = nets.RUNGS[config["net"]]
    splits = data_lib.load(config["dataset"], config["train_size"], order=config["split"])
    splits = common.scored_subsets(splits, config)
    model = model.clone(num_classes=data_lib.num_classes(splits))
    # The book's numbers are MNIST's.
    book_accuracy = rung.book_accuracy if config["dataset"] == "mnist" else None
    writer = metrics.MetricsWriter(workdir_path)
    writer.write_json("config.json", config)

    say = print if verbose else (lambda *a, **k: None)
    started = time.perf_counter()
    first_epoch = [0]

    def on_start(info):
        if info.get("checkpoint_notice"):  # damaged checkpoints passed over
            say(info["checkpoint_notice"], flush=True)
        first_epoch[0] = info["resumed_step"] // info["steps_per_epoch"]  # for the ETA
        what = "resuming at step {resumed_step}".format(**info) if info["resumed_step"] else "start"
        say(
            f"{config['net']}: {info['params']:,} parameters, {len(splits.train):,} training "
            f"images of {config['dataset']}{' x5 (expanded)' if config['expanded'] else ''}, "
            f"batch {config['batch_size']}, "
            f"{info['steps_per_epoch']} steps/epoch, {info['devices']} device(s), "
            f"{info['driver']} driver"
            + (f", {config['ensemble']} nets ({info['layout']})" if info["layout"] else "")
            + (
                f", trained on {config['adversarial_training'].upper()} images (eps "
                f"{config['adversarial_eps']:g})"
                if train_config.adversary
                else ""
            )
            + f"; {what}",
            flush=True,
        )

    last_progress = [time.perf_counter()]

    def on_progress(p):
        if time.perf_counter() - last_progress[0] < 15:  # a line every 15 s at most
            return
        last_progress[0] = time.perf_counter()
        say(
            f"  epoch {p['epoch']} step {p['step']}/{p['steps']}  "
            f"{p['examples_per_s']:,.0f} examples/s",
            flush=True,
        )

    def on_epoch(e):
        eta = (
            (time.perf_counter() - started)
            / max(1, e["epoch"] - first_epoch[0])
            * (config["epochs"] - e["epoch"])
        )
        test = f"  test {_pct(e['test_accuracy'])}" if "test_accuracy" in e else ""
        say(
            f"epoch {e['epoch']:3d}/{config['epochs']}  loss {e['train_loss']:.4f}  "
            f"val {_pct(e['val_accuracy'])}{test}  {e['epoch_time_s']:.1f} s  "
            f"{e['examples_per_s']:,.0f} examples/s  ETA {eta / 60:.1f} min",
            flush=True,
        )

    hooks = train_lib.Hooks(on_start=on_start, on_epoch=on_epoch, on_progress=on_progress)
    with GracefulStop() as stop:
        summary, state = train_lib.train_and_evaluate(
            model, splits, train_config, workdir_path, hooks, should_stop=stop
        )
    summary = {
        "net": config["net"],
        "dataset": config["dataset"],
        "book_accuracy": book_accuracy,
        **summary,
    }
    history = metrics.read_jsonl(workdir_path / "metrics.jsonl")
    if history and writer.enabled:
        plots.accuracy_curves(
            history,
            workdir_path / "accuracy.png",
            title=f"{config['dataset']}, {config['net']}"
            + (f", the vote of {config['ensemble']} nets" if config["ensemble"] > 1 else ""),
            book_accuracy=book_accuracy,
        )
        params = state.params
        if config["ensemble"] > 1:
            params = jax.tree.map(lambda x: x[0], params)
        if "ConvPool_0" in params:
            plots.filter_grid(
                params["ConvPool_0"]["kernel"],
                workdir_path / "filters.png",
                title=f"first ConvPool layer, {config['net']}",
            )
    if summary["finished"]:
        writer.write_json("summary.json", summary)
        say(
            f"best validation {_pct(summary['best_val_accuracy'])} at epoch "
            f"{summary['best_epoch']}; test accuracy there {_pct(summary['test_accuracy'])}"
            + _members(summary)
            + (f" (book: {book_accuracy:.2f}%)" if book_accuracy else "")
            + f"; {summary['wall_time_s']:.0f} s on {summary['device']}",
            flush=True,
        )
    else:
        common.say_stopped(say, config, stop)
    return summary


def main(argv):
    summary = common.run_from_flags(argv, run, SETTINGS)
    print(json.dumps({k: summary[k] for k in ("best_val_accuracy", "test_accuracy")}))


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
