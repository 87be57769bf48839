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

The README's main job: the ReLU rung with random one-pixel shifts, batch 100,
Nesterov momentum and a cosine learning-rate decay, 8 epochs (the README gives
its accuracy, time and device):

    python -m experiments.mnist_convnet --net=relu --epochs=8 --max_shift=1 \
        --batch_size=100 --optimizer=nesterov --learning_rate=0.05 --l2=0.02 \
        --schedule=cosine --workdir=runs/main

Validation is the book's by default (`--split=book`: the last 10,000 of the
original 60,000 training images); `--split=tfds` holds out the last 10,000 in
TFDS's stored order instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
from absl import app, flags
from flax import linen as nn

from experiments import common
from lib.core import data as data_lib
from lib.core import metrics, plots
from lib.core.stop import GracefulStop
from lib.nielsen import augment, layers, nets
from lib.nielsen import train as train_lib

FLAGS = flags.FLAGS

flags.DEFINE_enum(
    "net", "relu", nets.NETS, "The rung of the ladder: network and its hyperparameters."
)
flags.DEFINE_string("workdir", None, "Where the run writes; default runs/mnist/<net>.")
flags.DEFINE_integer("seed", 0, "Random seed (initialisation, shuffling, dropout).")
flags.DEFINE_integer("epochs", None, "Epochs; default: the rung's.")
flags.DEFINE_integer("batch_size", None, "Mini-batch size; default: the rung's (10).")
flags.DEFINE_float("learning_rate", None, "Learning rate eta; default: the rung's.")
flags.DEFINE_float("l2", None, "L2 regularisation lambda; default: the rung's.")
flags.DEFINE_float("dropout", None, "Dropout rate on FC and softmax inputs; default: the rung's.")
flags.DEFINE_string("activation", None, "sigmoid, tanh or relu; default: the rung's.")
flags.DEFINE_bool("expanded", None, "Train on the 5x one-pixel-shift set; default: the rung's.")
flags.DEFINE_integer("ensemble", None, "Nets trained as one program, scored by majority vote.")
flags.DEFINE_integer("max_shift", 0, "Random shifts of up to k pixels per training image.")
flags.DEFINE_float("max_degrees", 0.0, "Random rotations of up to this many degrees.")
flags.DEFINE_float("max_skew", 0.0, "Random horizontal skews (shear factor) up to this.")
flags.DEFINE_float("elastic_alpha", 0.0, "Elastic distortion strength (Simard et al. use 34).")
flags.DEFINE_float("elastic_sigma", 4.0, "Elastic distortion smoothness, in pixels.")
flags.DEFINE_integer("train_size", None, "Keep only the first N training images (quick runs).")
flags.DEFINE_enum(
    "split",
    "book",
    data_lib.ORDERS,
    "Validation images: book, the last 10,000 of MNIST's original 60,000 training images "
    "(the book's); tfds, the last 10,000 in the order TFDS stores them.",
)
flags.DEFINE_enum("optimizer", "sgd", train_lib.OPTIMIZERS, "sgd is the book's plain SGD.")
flags.DEFINE_enum(
    "schedule",
    "constant",
    train_lib.SCHEDULES,
    "Learning rate: the book's constant, or cosine decay.",
)
flags.DEFINE_float("momentum", 0.9, "Momentum for --optimizer=momentum or nesterov.")
flags.DEFINE_enum(
    "init", "book", ("book", "sqrt_n_in"), "Weight initialisation: N(0, 1/n_out) or N(0, 1/n_in)."
)
common.define_program_flags()

# Each numeric setting's valid values, checked before a run does anything.
RANGES = {"seed": common.NON_NEGATIVE, "epochs": common.AT_LEAST_1,
          "batch_size": common.AT_LEAST_1, "learning_rate": common.POSITIVE,
          "l2": common.NON_NEGATIVE, "dropout": common.FRACTION, "ensemble": common.AT_LEAST_1,
          "max_shift": common.Range(0, 13),  # past half the image, no digit is left to see
          "max_degrees": common.Range(0, 180), "max_skew": common.Range(0, 1),
          "elastic_alpha": common.NON_NEGATIVE, "elastic_sigma": common.POSITIVE,
          "train_size": common.AT_LEAST_1, "momentum": common.FRACTION,
          **common.PROGRAM_RANGES}  # fmt: skip

OVERRIDABLE = ("epochs", "batch_size", "learning_rate", "l2", "dropout", "activation", "expanded",
               "ensemble")  # fmt: skip

FLAG_NAMES = ("net", "workdir", "seed", "train_size", "split", "optimizer", "momentum", "schedule",
               "init",
               "max_shift", "max_degrees", "max_skew", "elastic_alpha", "elastic_sigma",
               *common.PROGRAM_DEFAULTS, *OVERRIDABLE)  # fmt: skip


# Taken when the flags are defined: another experiment imported later into the same
# process may redefine a flag of the same name (workdir, seed, ...) with its own default.
DEFAULTS = {name: FLAGS[name].default for name in FLAG_NAMES}


def resolve(config: dict) -> dict:
    """The rung's preset with every explicitly given (non-None) flag applied over it.

    Flags missing from `config` take their defaults, so callers may pass only what they change.
    """
    out = dict(DEFAULTS)
    out.update(config)
    if out["net"] not in nets.RUNGS:
        raise train_lib.ConfigError(
            f"unknown net '{out['net']}'; choose from {', '.join(nets.NETS)}"
        )
    rung = nets.RUNGS[out["net"]]
    for name in OVERRIDABLE:
        if out.get(name) is None:
            out[name] = getattr(rung, name)
    out["workdir"] = out.get("workdir") or f"runs/mnist/{out['net']}"
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def run(config: dict, workdir: str | None = None, verbose: bool = True) -> dict:
    """Train one configuration (flag names to values) and return its summary."""
    config = resolve({**config, "workdir": workdir or config.get("workdir")})
    common.check_ranges(config, RANGES)
    if config["activation"] not in layers.ACTIVATIONS:
        raise train_lib.ConfigError(
            f"unknown activation '{config['activation']}'; "
            f"choose from {', '.join(layers.ACTIVATIONS)}"
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
        raise train_lib.ConfigError(str(e)) from None
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
    train_lib.validate(train_config, config["train_size"] or 50_000)
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
    splits = data_lib.mnist(train_size=config["train_size"], order=config["split"])
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
            f"images{' x5 (expanded)' if config['expanded'] else ''}, "
            f"batch {config['batch_size']}, "
            f"{info['steps_per_epoch']} steps/epoch, {info['devices']} device(s), "
            f"{info['driver']} driver"
            + (f", {config['ensemble']} nets ({info['layout']})" if info["layout"] else "")
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
    summary = {"net": config["net"], "book_accuracy": rung.book_accuracy, **summary}
    history = metrics.read_jsonl(workdir_path / "metrics.jsonl")
    if history and writer.enabled:
        plots.accuracy_curves(
            history,
            workdir_path / "accuracy.png",
            title=f"MNIST, {config['net']}",
            book_accuracy=rung.book_accuracy,
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
            f"{summary['best_epoch']}; test accuracy there {_pct(summary['test_accuracy'])} "
            f"(book: {rung.book_accuracy:.2f}%); {summary['wall_time_s']:.0f} s on "
            f"{summary['device']}",
            flush=True,
        )
    else:
        say(f"stopped; run again with --workdir={config['workdir']} to resume", flush=True)
    return summary


def main(argv):
    summary = common.run_from_flags(argv, run, FLAG_NAMES)
    print(json.dumps({k: summary[k] for k in ("best_val_accuracy", "test_accuracy")}))


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
