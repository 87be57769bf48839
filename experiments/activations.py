"""Sigmoid, tanh and ReLU in the book's two-ConvPool net, several seeds each.

Nielsen, "Neural Networks and Deep Learning", chapter 6: the net of two ConvPool
layers (20 and 40 filters, 5x5, max-pooling 2x2), a fully connected layer of 100
and a softmax, trained by plain SGD on mini-batches of 10 for 60 epochs, reaches
99.06% with sigmoid units (eta 0.1) and 99.23% with ReLUs (eta 0.03, lambda 0.1);
the book reports that tanh (eta 0.1) trains a little faster than sigmoid and ends
about the same, and asks whether sigmoid could keep up with tanh if its learning
rate were changed or the function rescaled, since sigmoid(z) = (1 + tanh(z/2)) / 2.

Each variant below trains its seeds side by side (vmapped into one program on
accelerators, one per core on a CPU; member m is exactly the lone run with seed + m)
in WORKDIR/<variant>/, which resumes from its own checkpoints; variants given after
those of an earlier run in the same workdir are trained next to the finished ones,
which are kept. The variants that answer the open question take sigmoid to tanh in
steps, tanh(z) = 2 sigmoid(2z) - 1:

| variant          | units            | eta  | lambda | what it changes                      |
| ---------------- | ---------------- | ---- | ------ | ------------------------------------ |
| sigmoid          | sigmoid(z)       | 0.1  | 0      | the book's                           |
| tanh             | tanh(z)          | 0.1  | 0      | the book's                           |
| relu             | max(0, z)        | 0.03 | 0.1    | the book's                           |
| sigmoid_x4       | sigmoid(z)       | 0.4  | 0      | learning rate x4 (slope 1/4 at 0)    |
| sigmoid_2z       | sigmoid(2z)      | 0.1  | 0      | steeper: slope 1/2, still in (0, 1)  |
| sigmoid_sym      | 2 sigmoid(z) - 1 | 0.1  | 0      | centred, in (-1, 1): tanh(z/2)       |
| sigmoid_rescaled | 2 sigmoid(2z) - 1| 0.1  | 0      | both: tanh itself, a check           |

    python -m experiments.activations --workdir=runs/activations          # 60 epochs, 5 seeds
    python -m experiments.activations --preset=quick --workdir=runs/activations-quick

The quick preset (every variant, 2 seeds, 5,000 training images, 8 epochs = 4,000
steps, validated on the first 2,000 validation images) takes about four minutes on
two CPU cores; it shows how fast each variant starts, and sigmoid leaving the
plateau it starts on, not where the variants end. The full study (60 epochs of
50,000 images, 5 seeds) should end near the book's test accuracies: 99.06% for
sigmoid and 99.23% for ReLU, tanh about as sigmoid.

WORKDIR gets config.json, metrics.jsonl (one line per variant per epoch, with each
seed's validation accuracy), summary.json (per variant: final and best validation
accuracy and final test accuracy over seeds, each seed's first epoch at or above
each threshold), table.md, activations.png (sigmoid, tanh, ReLU: mean and spread
over seeds per epoch) and sigmoid_vs_tanh.png (the sigmoid variants beside tanh).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags
from ml_collections import ConfigDict

from experiments import common
from lib.core import config as config_lib
from lib.core import data as data_lib
from lib.core.config import AT_LEAST_1, OneOf, Range, Setting
from lib.core.errors import ConfigError
from lib.core.metrics import write_json, write_jsonl
from lib.core.stop import GracefulStop
from lib.nielsen import nets, studies
from lib.nielsen import train as train_lib

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Variant:
    activation: str  # a name in lib.nielsen.layers.ACTIVATIONS
    learning_rate: float
    l2: float
    label: str


VARIANTS: dict[str, Variant] = {
    "sigmoid": Variant("sigmoid", 0.1, 0.0, "sigmoid, η=0.1"),
    "tanh": Variant("tanh", 0.1, 0.0, "tanh, η=0.1"),
    "relu": Variant("relu", 0.03, 0.1, "ReLU, η=0.03, λ=0.1"),
    "sigmoid_x4": Variant("sigmoid", 0.4, 0.0, "sigmoid, η=0.4"),
    "sigmoid_2z": Variant("sigmoid_2z", 0.1, 0.0, "σ(2z), η=0.1"),
    "sigmoid_sym": Variant("sigmoid_sym", 0.1, 0.0, "2σ(z)−1, η=0.1"),
    "sigmoid_rescaled": Variant("sigmoid_rescaled", 0.1, 0.0, "2σ(2z)−1 = tanh, η=0.1"),
}
BOOK = ("sigmoid", "tanh", "relu")
SIGMOID_QUESTION = (
    "tanh",
    "sigmoid",
    "sigmoid_x4",
    "sigmoid_2z",
    "sigmoid_sym",
    "sigmoid_rescaled",
)
NET = "conv2"  # the two-ConvPool rung of lib.nets.mnist; its activation is set per variant

PRESETS: dict[str, dict] = {
    "full": {
        "variants": list(VARIANTS),
        "seeds": 5,
        "epochs": 60,
        "train_size": None,
        "validation_size": None,
        "thresholds": [98.5, 99.0],
    },
    "quick": {
        "variants": list(VARIANTS),
        "seeds": 2,
        "epochs": 8,  # 4,000 steps: long enough to see sigmoid leave its first plateau
        "train_size": 5000,
        "validation_size": 2000,
        "thresholds": [90.0, 95.0, 98.5, 99.0],
    },
}

# Every setting of the study, declared once: the flags, the presets (`get_config`), the
# range checks and the saved config.json all derive from this list. A setting whose
# default is None, or no values, takes the preset's value.
SETTINGS = (
    Setting(
        "preset",
        "full",
        "full: the book's study (a GPU, or hours on a CPU); quick: minutes on a CPU.",
        OneOf(tuple(PRESETS)),
    ),
    common.DATASET,
    Setting("workdir", "runs/activations", "Where the study writes."),
    Setting(
        "variants",
        (),
        f"Variants to run, of {', '.join(VARIANTS)}; default: the preset's (all of them).",
        OneOf(tuple(VARIANTS)),
        str,
    ),
    common.study_seeds("variant"),
    common.STUDY_SEED,
    Setting("epochs", None, "Epochs; the book's is 60; default: the preset's.", AT_LEAST_1, int),
    Setting(
        "train_size",
        None,
        "Keep only the first N training images; default: the preset's.",
        AT_LEAST_1,
        int,
    ),
    common.STUDY_VALIDATION_SIZE,
    common.TEST_SIZE,
    Setting("batch_size", 10, "Mini-batch size; the book's is 10.", AT_LEAST_1),
    Setting(
        "thresholds",
        (),
        "Validation accuracies (%) whose first epoch the table gives; default: the preset's.",
        Range(0, 100, open_low=True),
        float,
    ),
    *common.PROGRAM_SETTINGS,
)
common.define_setting_flags(SETTINGS)


def get_config(preset: str = "full") -> ConfigDict:
    """The study `preset` as a config: its settings over every other setting's default."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; choose from {', '.join(PRESETS)}")
    return config_lib.preset(SETTINGS, {"preset": preset, **PRESETS[preset]})


def resolve(overrides: Mapping[str, Any]) -> ConfigDict:
    """The preset of overrides["preset"] (default full) with every given setting over it
    (neither None nor an empty list), checked against the settings' ranges; a ConfigError
    names each bad one, or says why the study cannot run."""
    values = config_lib.given(overrides, empty_lists_unset=True)
    if "variants" in values:
        values["variants"] = tuple(
            dict.fromkeys(v.strip() for v in values["variants"] if v.strip())
        )
    if "thresholds" in values:
        try:
            values["thresholds"] = tuple(float(t) for t in values["thresholds"])
        except (TypeError, ValueError):
            raise ConfigError(
                f"thresholds must be percentages, got {','.join(map(str, values['thresholds']))}"
            ) from None
    config = config_lib.resolve(get_config(values.get("preset", "full")), values, SETTINGS)
    available = common.training_images(config)
    for name in config.variants:
        train_lib.validate(train_config(config, name), config.train_size or available or 50_000)
    return config


def train_config(config: dict, name: str) -> train_lib.TrainConfig:
    variant = VARIANTS[name]
    return train_lib.TrainConfig(
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        learning_rate=variant.learning_rate,
        l2=variant.l2,
        seed=config["seed"],
        ensemble=config["seeds"],
        eval_batch_size=config["eval_batch_size"],
        driver=config["driver"],
        ensemble_layout=config["ensemble_layout"],
        num_devices=config["num_devices"],
    )


def train_variant(
    name: str,
    config: dict,
    splits: data_lib.Splits,
    workdir: str | Path,
    hooks: train_lib.Hooks | None = None,
    should_stop=None,
) -> studies.VariantResult:
    """One variant's seeds, side by side (vmapped into one program on accelerators, one
    per core on a CPU), in `workdir` (resuming there).

    `config` needs epochs, batch_size, seed, seeds, eval_batch_size, driver,
    ensemble_layout, num_devices.
    """
    model = nets.create(
        NET, activation=VARIANTS[name].activation, num_classes=data_lib.num_classes(splits)
    )
    return studies.run_variant(
        model, splits, train_config(config, name), workdir, hooks, should_stop
    )


# ----------------------------------------------------------------------------- report


def gap_to(curves: np.ndarray, reference: np.ndarray) -> dict | None:
    """Mean-over-seeds accuracy minus the reference's, in percentage points: averaged over
    the epochs both have, and at the last of them."""
    epochs = min(curves.shape[1], reference.shape[1])
    if epochs == 0:
        return None
    diff = 100 * (curves[:, :epochs].mean(0) - reference[:, :epochs].mean(0))
    return {"mean_pp": float(diff.mean()), "final_pp": float(diff[-1])}


def variant_report(name: str, result: studies.VariantResult, thresholds: list[float]) -> dict:
    variant = VARIANTS[name]
    return {
        "label": variant.label,
        "activation": variant.activation,
        "learning_rate": variant.learning_rate,
        "l2": variant.l2,
        **studies.seed_summary(result.curves, result.final_test, [t / 100 for t in thresholds]),
        "final_test_per_seed": result.final_test,
        "test_accuracy_vote": result.summary["test_accuracy"],
        "wall_time_s": result.summary["wall_time_s"],
        "examples_per_s": result.summary["examples_per_s"],
        "device": result.summary["device"],
    }


def table(reports: dict, thresholds: list[float]) -> str:
    """Markdown: one row per variant, in the order run."""
    firsts = " | ".join(f"first ≥ {t:g}%" for t in thresholds)
    lines = [
        f"| variant | η | λ | final val | best val | final test | {firsts} "
        "| vs tanh, mean / final (pp) | wall time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | "
        + "---: | " * len(thresholds)
        + "---: | ---: |",
    ]
    for name, r in reports.items():
        v = VARIANTS[name]
        if "diverged" in r:
            lines.append(
                f"| {v.label} | {v.learning_rate:g} | {v.l2:g} | diverged: {r['diverged']} |"
            )
            continue
        cells = " | ".join(studies.epochs_cell(r["first_epoch"][f"{t:g}"]) for t in thresholds)
        gap = r.get("vs_tanh")
        vs = "-" if gap is None else f"{gap['mean_pp']:+.2f} / {gap['final_pp']:+.2f}"
        lines.append(
            f"| {r['label']} | {v.learning_rate:g} | {v.l2:g} | {studies.mean_pm(r['final_val'])} "
            f"| {studies.mean_pm(r['best_val'])} | {studies.mean_pm(r['final_test'])} | {cells} "
            f"| {vs} | {r['wall_time_s'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def write_outputs(root: Path, config: dict, results: dict) -> None:
    """The study's metrics.jsonl and figures from the variants finished so far."""
    lines = []
    for name, result in results.items():
        lines += studies.study_lines(name, result.history, label=VARIANTS[name].label)
    write_jsonl(root / "metrics.jsonl", lines)
    where = (
        f"{config['train_size'] or common.training_images(config) or 50_000:,} training "
        f"images of {config['dataset']}, {config['validation_size'] or 10_000:,} validation, "
        f"batch {config['batch_size']}"
    )
    thresholds = [t / 100 for t in config["thresholds"]]
    book = [(VARIANTS[n].label, results[n].curves) for n in BOOK if n in results]
    if book:
        studies.seed_bands(book, root / "activations.png", f"Two-ConvPool net, {where}", thresholds)
    question = [(VARIANTS[n].label, results[n].curves) for n in SIGMOID_QUESTION if n in results]
    if len(question) > 1:
        studies.seed_bands(
            question,
            root / "sigmoid_vs_tanh.png",
            f"Can sigmoid train as fast as tanh? {where}",
            thresholds,
        )


def run(overrides: Mapping[str, Any], workdir: str | None = None, verbose: bool = True) -> dict:
    """Run (or resume) the study and return its summary (also written to summary.json): the
    preset of overrides["preset"] with the given settings over it (`resolve`); `workdir`
    wins over overrides["workdir"]."""
    config = config_lib.as_dict(
        resolve({**overrides, "workdir": workdir or overrides.get("workdir")})
    )
    # thresholds only choose what the table reports; more epochs go on where the runs ended,
    # and variants added after the last keep the finished ones (each has its own workdir)
    grows = ("epochs", "variants")
    with common.own_workdir(config, ignore=("thresholds",), may_grow=grows) as root:
        return _study(config, root, verbose)


def _study(config: dict, root: Path, verbose: bool) -> dict:
    """The study of `run`, in the workdir it holds."""
    say = print if verbose else (lambda *a, **k: None)
    splits = data_lib.load(config["dataset"], config["train_size"], order="tfds")
    splits = common.scored_subsets(splits, config)
    write_json(root / "config.json", config)
    started = time.perf_counter()
    results: dict[str, studies.VariantResult] = {}
    reports: dict[str, dict] = {}
    finished = True

    with GracefulStop() as stop:
        for name in config["variants"]:
            if stop():  # asked as the variant before ended: its run is kept, none starts
                finished = False
                break
            label = VARIANTS[name].label

            def on_start(info, label=label):
                what = (
                    f"resuming at step {info['resumed_step']}" if info["resumed_step"] else "start"
                )
                say(
                    f"{label}: {config['seeds']} seeds side by side, {len(splits.train):,} "
                    f"images, {info['steps_per_epoch']} steps/epoch, {info['driver']} driver; "
                    f"{what}",
                    flush=True,
                )

            def on_epoch(e, name=name):
                acc = np.asarray(e.get("val_member_accuracy", [e["val_accuracy"]]))
                say(
                    f"  {name} epoch {e['epoch']:3d}/{config['epochs']}  loss "
                    f"{e['train_loss']:.4f}  val {100 * acc.mean():.2f}% (seeds "
                    f"{100 * acc.min():.2f}-{100 * acc.max():.2f})  {e['epoch_time_s']:.1f} s",
                    flush=True,
                )

            hooks = train_lib.Hooks(on_start=on_start, on_epoch=on_epoch)
            try:
                result = train_variant(name, config, splits, root / name, hooks, stop)
            except train_lib.DivergedError as e:
                reports[name] = {"label": label, "diverged": str(e).split(";")[0]}
                say(f"{label}: diverged, {e}", flush=True)
                continue
            if not result.summary["finished"]:
                finished = False
                break
            results[name] = result
            reports[name] = variant_report(name, result, config["thresholds"])
            write_json(root / name / "summary.json", {"variant": name, **reports[name]})
            write_outputs(root, config, results)

    if not finished:
        common.say_stopped(say, config, stop)
        return {"finished": False}
    if "tanh" in results:
        for name, result in results.items():
            reports[name]["vs_tanh"] = gap_to(result.curves, results["tanh"].curves)
    markdown = table(reports, config["thresholds"])
    (root / "table.md").write_text(markdown + "\n")
    devices = sorted({r["device"] for r in reports.values() if "device" in r})
    summary = {
        "finished": True,
        "study": "activations",
        "net": NET,
        "train_size": len(splits.train),
        "validation_size": len(splits.validation),
        "test_size": len(splits.test),
        "epochs": config["epochs"],
        "seeds": list(range(config["seed"], config["seed"] + config["seeds"])),
        "thresholds": config["thresholds"],
        "device": ", ".join(devices),
        "wall_time_s": time.perf_counter() - started,  # this invocation's
        "train_time_s": sum(r.get("wall_time_s", 0.0) for r in reports.values()),  # all runs'
        "variants": reports,
    }
    write_json(root / "summary.json", summary)
    say(markdown, flush=True)
    say(f"device: {summary['device']}; wrote {root}/summary.json and its figures", flush=True)
    return summary


def main(argv):
    common.run_from_flags(argv, run, SETTINGS)


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
