"""Expanding the training data: accuracy against the number of training images.

Nielsen, "Neural Networks and Deep Learning": chapter 3 plots accuracy against the
size of the training set and shows that more data, or data made by distorting the
images one has, keeps helping; chapter 6 lifts the ReLU two-ConvPool net from 99.23%
to 99.37% by adding each image's four one-pixel shifts (a 250,000-image set), and
cites Simard, Steinkraus & Platt (2003) for random affine and elastic distortions.

Every expansion runs on the device, per mini-batch (lib/nielsen/augment.py), and can be
switched on alone or combined with others by joining names with '+':

| name    | what each training image becomes                                       |
| ------- | ---------------------------------------------------------------------- |
| none    | itself                                                                 |
| fixed   | itself and its four one-pixel shifts: the book's 5x set, 5x the steps  |
| shift   | moved by a random whole number of pixels, up to --max_shift each way   |
| rotate  | turned by a random angle of up to --max_degrees                        |
| skew    | sheared horizontally by a random factor of up to --max_skew            |
| elastic | bent by a random smooth field (--elastic_alpha, --elastic_sigma)       |

The random ones draw a fresh distortion for every image at every step, so an
epoch (one pass over the N images, 5N with `fixed`) never repeats an image.
Each (expansion, training-set size) pair trains its seeds side by side (vmapped into
one program on accelerators, one per core on a CPU) in WORKDIR/<expansion>/n<size>/,
which resumes from its own checkpoints.

    python -m experiments.expanded_data --workdir=runs/expanded                 # GPU
    python -m experiments.expanded_data --preset=quick --workdir=runs/expanded-quick
    python -m experiments.expanded_data --preset=dropout_elastic --workdir=runs/dropout-elastic

full: the book's ReLU net (eta 0.03, lambda 0.1, batch 10, 60 epochs), 1,000 to
50,000 images, every expansion alone and the random ones together, 3 seeds; at
50,000 images `none` should end near the book's 99.23% and `fixed` near 99.37%.
quick: 500 to 5,000 images, one seed, none / fixed / elastic, 3 epochs but at
least 2,500 steps per run (50 epochs of 500 images), validated on the first 2,000
validation images; minutes on two CPU cores, for the shape of the curves, not the
book's numbers.
dropout_elastic: the book's dropout net (FC 1000 x 2, dropout 0.5, 40 epochs,
99.60% in the book) with elastic distortions on top of the one-pixel shifts; the
target is above 99.65% test accuracy as a single net (a GPU run).

WORKDIR gets config.json, metrics.jsonl (one line per (expansion, size) per epoch),
summary.json (each seed's final test accuracy, final and best validation accuracy,
and the book's test accuracy at the best validation epoch), table.md and
more_data.png (final test accuracy against training images, one line per expansion).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from absl import app, flags
from ml_collections import ConfigDict

from experiments import common
from lib.core import config as config_lib
from lib.core import data as data_lib
from lib.core.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, OneOf, Range, Setting
from lib.core.errors import ConfigError
from lib.core.metrics import write_json, write_jsonl
from lib.core.stop import GracefulStop
from lib.nielsen import augment, nets, studies
from lib.nielsen import train as train_lib

FLAGS = flags.FLAGS

EXPANSIONS = ("fixed", "shift", "rotate", "skew", "elastic")  # in the order they are named

PRESETS: dict[str, dict] = {
    "full": {
        "net": "relu",
        "expansions": [
            "none",
            "fixed",
            "shift",
            "rotate",
            "skew",
            "elastic",
            "shift+rotate+skew+elastic",
        ],
        "train_sizes": [1000, 2000, 5000, 10000, 20000, 50000],
        "seeds": 3,
        "epochs": None,  # the net's rung: 60 for relu
        "min_steps": 0,
        "validation_size": None,
    },
    "quick": {
        "net": "relu",
        "expansions": ["none", "fixed", "elastic"],
        "train_sizes": [500, 1000, 2000, 5000],
        "seeds": 1,
        "epochs": 3,
        "min_steps": 2500,  # 50 epochs of 500 images: enough to learn what there is to learn
        "validation_size": 2000,
    },
    "dropout_elastic": {
        "net": "dropout",
        "expansions": ["fixed+elastic"],
        "train_sizes": [50000],
        "seeds": 1,
        "epochs": None,  # the dropout rung's 40
        "min_steps": 0,
        "validation_size": None,
    },
}
TARGET = {"dropout_elastic": 99.65}  # test accuracy (%) the preset aims above

# Every setting of the study, declared once: the flags, the presets (`get_config`), the
# range checks and the saved config.json all derive from this list. A setting whose
# default is None, or no values, takes the preset's value, or else the net's rung's.
SETTINGS = (
    Setting("preset", "full", "Which study; see the module doc.", OneOf(tuple(PRESETS))),
    common.DATASET,
    Setting("workdir", "runs/expanded", "Where the study writes."),
    Setting(
        "net",
        None,
        "The rung of the ladder whose net trains; default: the preset's.",
        OneOf(nets.NETS),
        str,
    ),
    Setting(
        "expansions",
        (),
        "Expansions to compare: none, or names joined by '+'; default: the preset's.",
        kind=str,
    ),
    Setting(
        "train_sizes",
        (),
        "Training-set sizes, before expansion; default: the preset's.",
        AT_LEAST_1,
        int,
    ),
    common.STUDY_VALIDATION_SIZE,
    common.TEST_SIZE,
    common.study_seeds("run"),
    common.STUDY_SEED,
    Setting("epochs", None, "Epochs; default: the preset's, else the net's rung.", AT_LEAST_1, int),
    Setting(
        "min_steps",
        None,
        "Train each run for at least this many steps (more epochs for small sets), so the "
        "size of the set, not the number of steps, limits what a small one learns; default: "
        "the preset's.",
        NON_NEGATIVE,
        int,
    ),
    Setting("batch_size", None, "Mini-batch size; default: the rung's (10).", AT_LEAST_1, int),
    Setting("learning_rate", None, "Learning rate eta; default: the rung's.", POSITIVE, float),
    Setting("l2", None, "L2 regularisation lambda; default: the rung's.", NON_NEGATIVE, float),
    Setting("max_shift", 2, "shift: up to this many pixels each way.", Range(0, 13)),
    Setting("max_degrees", 15.0, "rotate: up to this many degrees either way.", Range(0, 180)),
    Setting("max_skew", 0.3, "skew: shear factor up to this either way.", Range(0, 1)),
    Setting("elastic_alpha", 34.0, "elastic: strength (Simard et al.: 34).", NON_NEGATIVE),
    Setting("elastic_sigma", 4.0, "elastic: smoothness in pixels (Simard: 4).", POSITIVE),
    *common.PROGRAM_SETTINGS,
)
common.define_setting_flags(SETTINGS)
# The settings that, where neither the preset nor the command line sets them, are the
# net's rung's (fields of lib.nielsen.nets.Rung).
FROM_RUNG = ("epochs", "batch_size", "learning_rate", "l2")


def get_config(preset: str = "full") -> ConfigDict:
    """The study `preset` as a config: its settings over every other setting's default;
    those it leaves to the net (FROM_RUNG) stay None until `resolve`."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; choose from {', '.join(PRESETS)}")
    return config_lib.preset(SETTINGS, {"preset": preset, **PRESETS[preset]})


def parse_expansion(spec: str, config: dict) -> tuple[str, bool, augment.AugmentConfig | None]:
    """'elastic+fixed' -> ('fixed+elastic', expanded=True, AugmentConfig(elastic_alpha=...)).

    The canonical name lists the expansions in a fixed order, so the same combination
    always trains in the same sub-workdir.
    """
    names = [n.strip() for n in spec.split("+") if n.strip()]
    if names == ["none"]:
        return "none", False, None
    for name in names:
        if name not in EXPANSIONS:
            raise ConfigError(
                f"unknown expansion '{name}' in '{spec}'; use none, or join names of "
                f"{', '.join(EXPANSIONS)} with '+'"
            )
    if not names:
        raise ConfigError("an empty expansion; use none, or names joined by '+'")
    canonical = "+".join(n for n in EXPANSIONS if n in names)
    strengths = {
        "shift": {"max_shift": config["max_shift"]},
        "rotate": {"max_degrees": config["max_degrees"]},
        "skew": {"max_skew": config["max_skew"]},
        "elastic": {"elastic_alpha": config["elastic_alpha"]},
    }
    chosen = {k: v for name in names for k, v in strengths.get(name, {}).items()}
    try:
        aug = augment.AugmentConfig(**chosen, elastic_sigma=config["elastic_sigma"])
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    if chosen and not aug.enabled:
        zero = next(k for k, v in chosen.items() if not v)
        raise ConfigError(f"'{canonical}' asks for {zero}=0, which turns it off")
    return canonical, "fixed" in names, aug if aug.enabled else None


def label(expansion: str, config: dict) -> str:
    """How the figure and table name an expansion."""
    words = {
        "none": "no expansion",
        "fixed": "one-pixel shifts (5x)",
        "shift": f"random shifts ≤{config['max_shift']} px",
        "rotate": f"rotations ≤{config['max_degrees']:g}°",
        "skew": f"skews ≤{config['max_skew']:g}",
        "elastic": f"elastic α={config['elastic_alpha']:g}, σ={config['elastic_sigma']:g}",
    }
    return " + ".join(words[n] for n in expansion.split("+"))


def resolve(overrides: Mapping[str, Any]) -> ConfigDict:
    """The preset of overrides["preset"] (default full) with every given setting over it
    (neither None nor an empty list) and the net's rung for what neither sets, checked
    against the settings' ranges; a ConfigError names each bad one, or says why the study
    cannot run."""
    values = config_lib.given(overrides, empty_lists_unset=True)
    config = config_lib.override(get_config(values.get("preset", "full")), values)
    if config.net not in nets.RUNGS:
        raise ConfigError(f"unknown net '{config.net}'; choose from {', '.join(nets.NETS)}")
    rung = nets.RUNGS[config.net]
    for name in FROM_RUNG:
        if config[name] is None:
            config[name] = getattr(rung, name)
    try:
        config.train_sizes = tuple(int(n) for n in config.train_sizes)
    except (TypeError, ValueError):
        raise ConfigError(
            f"train_sizes must be whole numbers, got {','.join(map(str, config.train_sizes))}"
        ) from None
    config_lib.check(config, SETTINGS, prefix="--")
    common.training_images(config, sizes=("train_sizes",))
    specs = [s.strip() for s in config.expansions if s.strip()]
    if not specs:
        raise ConfigError("no expansions given; for example --expansions=none,fixed")
    config.expansions = tuple(dict.fromkeys(parse_expansion(s, config)[0] for s in specs))
    for spec in config.expansions:
        for n in config.train_sizes:
            train_lib.validate(train_config(config, spec, n), n)
    return config


def epochs_for(config: dict, n_virtual: int) -> int:
    """The given epochs, or more where that many would take fewer than min_steps steps."""
    steps_per_epoch = max(1, n_virtual // config["batch_size"])
    return max(config["epochs"], -(-config["min_steps"] // steps_per_epoch))


def train_config(config: dict, expansion: str, n: int) -> train_lib.TrainConfig:
    """How (expansion, n training images) trains."""
    _, expanded, aug = parse_expansion(expansion, config)
    return train_lib.TrainConfig(
        epochs=epochs_for(config, 5 * n if expanded else n),
        batch_size=config["batch_size"],
        learning_rate=config["learning_rate"],
        l2=config["l2"],
        seed=config["seed"],
        ensemble=config["seeds"],
        expanded=expanded,
        augment=aug,
        eval_batch_size=config["eval_batch_size"],
        driver=config["driver"],
        ensemble_layout=config["ensemble_layout"],
        num_devices=config["num_devices"],
    )


# ----------------------------------------------------------------------------- report


def run_report(expansion: str, n: int, result: studies.VariantResult, config: dict) -> dict:
    return {
        "expansion": expansion,
        "label": label(expansion, config),
        "train_size": n,
        **studies.seed_summary(result.curves, result.final_test, []),
        "final_test_per_seed": result.final_test,
        "test_accuracy_at_best_val": result.summary["test_accuracy"],
        "best_epoch": result.summary["best_epoch"],
        "epochs": result.summary["epochs"],
        "wall_time_s": result.summary["wall_time_s"],
        "examples_per_s": result.summary["examples_per_s"],
        "device": result.summary["device"],
    }


def table(reports: dict, config: dict) -> str:
    """Markdown: one row per expansion, one column per size; final test accuracy,
    mean ± standard deviation over seeds."""
    sizes = config["train_sizes"]
    lines = [
        "| expansion | " + " | ".join(f"{n:,}" for n in sizes) + " |",
        "| --- |" + " ---: |" * len(sizes),
    ]
    for spec in config["expansions"]:
        cells = []
        for n in sizes:
            r = reports.get(f"{spec}/n{n}")
            if r is None:
                cells.append("-")
            elif "diverged" in r:
                cells.append("diverged")
            else:
                cells.append(studies.mean_pm(r["final_test"]))
        lines.append(f"| {label(spec, config)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# What every part of a study split over several workdirs must share to be one study;
# the expansions and the sizes are what the parts divide between them.
SHARED = tuple(
    s.name
    for s in SETTINGS
    if s.name not in ("preset", "workdir", "expansions", "train_sizes")
    and s not in common.PROGRAM_SETTINGS
)


def combine(parts: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """One study's (reports, config) from the (summary, config) of finished studies that
    each ran some of its expansions or sizes (say, one expansion per session), with the
    same settings otherwise: the rows in the preset's order of expansions, the columns by
    size."""
    if not parts:
        raise ConfigError("no finished part of the study to combine")
    first = parts[0][1]
    reports: dict[str, dict] = {}
    specs: list[str] = []
    sizes: set[int] = set()
    for summary, config in parts:
        differ = [k for k in SHARED if config.get(k) != first.get(k)]
        if differ:
            k = differ[0]
            raise ConfigError(
                f"parts of the study ran with different {k} ({first.get(k)} and "
                f"{config.get(k)}); combine parts of one study only"
            )
        twice = sorted(set(reports) & set(summary["runs"]))
        if twice:
            raise ConfigError(f"{twice[0]} was run by two parts; keep one of them")
        reports.update(summary["runs"])
        specs += [e for e in config["expansions"] if e not in specs]
        sizes |= set(config["train_sizes"])
    order = PRESETS[first["preset"]]["expansions"]  # the preset's own, then the others
    specs.sort(key=lambda e: order.index(e) if e in order else len(order))
    return reports, {**first, "expansions": specs, "train_sizes": sorted(sizes)}


def epochs_note(config: dict) -> str:
    if config["min_steps"]:
        return f"≥{config['epochs']} epochs and ≥{config['min_steps']:,} steps"
    return f"{config['epochs']} epochs"


def size_figure(reports: dict, config: dict, path: str | Path) -> None:
    """Final test accuracy against training images, a line per expansion, from the
    runs' reports (those that finished)."""
    series = []
    for spec in config["expansions"]:
        done = sorted(
            (r["train_size"], r["final_test_per_seed"])
            for r in reports.values()
            if r["expansion"] == spec and "final_test_per_seed" in r
        )
        if done:
            series.append((label(spec, config), [n for n, _ in done], [a for _, a in done]))
    seeds = config["seeds"]
    studies.accuracy_vs_size(
        series,
        path,
        f"{config['dataset']}, {config['net']} net, {epochs_note(config)}, "
        + (f"{seeds} seeds (bars: min to max)" if seeds > 1 else "1 seed"),
        ylabel="test accuracy after the last epoch (%)",
    )


def write_outputs(root: Path, config: dict, results: dict, reports: dict) -> None:
    """The study's metrics.jsonl and figure from the runs finished so far."""
    lines = []
    for key, (spec, n, result) in results.items():
        lines += studies.study_lines(key, result.history, expansion=spec, train_size=n)
    write_jsonl(root / "metrics.jsonl", lines)
    size_figure(reports, config, root / "more_data.png")


def run(overrides: Mapping[str, Any], workdir: str | None = None, verbose: bool = True) -> dict:
    """Run (or resume) the study and return its summary (also written to summary.json): the
    preset of overrides["preset"] with the given settings over it (`resolve`); `workdir`
    wins over overrides["workdir"]."""
    config = config_lib.as_dict(
        resolve({**overrides, "workdir": workdir or overrides.get("workdir")})
    )
    # more epochs (or steps) go on from where the runs ended, as if they had never stopped
    with common.own_workdir(config, may_grow=("epochs", "min_steps")) as root:
        return _study(config, root, verbose)


def _study(config: dict, root: Path, verbose: bool) -> dict:
    """The study of `run`, in the workdir it holds."""
    say = print if verbose else (lambda *a, **k: None)
    full = data_lib.load(config["dataset"], max(config["train_sizes"]), order="tfds")
    full = common.scored_subsets(full, config)
    write_json(root / "config.json", config)
    model = nets.create(config["net"], num_classes=data_lib.num_classes(full))
    started = time.perf_counter()
    results: dict[str, tuple[str, int, studies.VariantResult]] = {}
    reports: dict[str, dict] = {}
    finished = True

    with GracefulStop() as stop:
        for spec in config["expansions"]:
            for n in config["train_sizes"]:
                if stop():  # asked as the run before ended: it is kept, none starts
                    finished = False
                    break
                key = f"{spec}/n{n}"
                splits = full._replace(train=full.train.take(n))

                def on_start(info, key=key):
                    what = (
                        f"resuming at step {info['resumed_step']}"
                        if info["resumed_step"]
                        else "start"
                    )
                    say(
                        f"{key}: {config['net']} net, {config['seeds']} seed(s) side by side, "
                        f"{info['steps_per_epoch']} steps/epoch, {info['driver']} driver; {what}",
                        flush=True,
                    )

                epochs = train_config(config, spec, n).epochs

                def on_epoch(e, key=key, epochs=epochs):
                    acc = e.get("val_member_accuracy", [e["val_accuracy"]])
                    say(
                        f"  {key} epoch {e['epoch']:3d}/{epochs}  loss "
                        f"{e['train_loss']:.4f}  val {100 * sum(acc) / len(acc):.2f}%  "
                        f"{e['epoch_time_s']:.1f} s",
                        flush=True,
                    )

                hooks = train_lib.Hooks(on_start=on_start, on_epoch=on_epoch)
                try:
                    result = studies.run_variant(
                        model,
                        splits,
                        train_config(config, spec, n),
                        root / spec / f"n{n}",
                        hooks,
                        stop,
                    )
                except train_lib.DivergedError as e:
                    reports[key] = {"expansion": spec, "train_size": n, "diverged": str(e)}
                    say(f"{key}: diverged, {e}", flush=True)
                    continue
                if not result.summary["finished"]:
                    finished = False
                    break
                results[key] = (spec, n, result)
                reports[key] = run_report(spec, n, result, config)
                write_json(root / spec / f"n{n}" / "summary.json", reports[key])
                write_outputs(root, config, results, reports)
            if not finished:
                break

    if not finished:
        common.say_stopped(say, config, stop)
        return {"finished": False}
    markdown = table(reports, config)
    (root / "table.md").write_text(markdown + "\n")
    devices = sorted({r["device"] for r in reports.values() if "device" in r})
    summary = {
        "finished": True,
        "study": "expanded_data",
        "preset": config["preset"],
        "net": config["net"],
        "epochs": config["epochs"],
        "min_steps": config["min_steps"],
        "validation_size": len(full.validation),
        "test_size": len(full.test),
        "seeds": list(range(config["seed"], config["seed"] + config["seeds"])),
        "device": ", ".join(devices),
        "wall_time_s": time.perf_counter() - started,  # this invocation's
        "train_time_s": sum(r.get("wall_time_s", 0.0) for r in reports.values()),  # all runs'
        "runs": reports,
    }
    target = TARGET.get(config["preset"])
    if target is not None:
        summary["target_test_accuracy"] = target / 100
    write_json(root / "summary.json", summary)
    say(markdown, flush=True)
    for key, r in reports.items():
        if "test_accuracy_at_best_val" in r:
            aim = f" (target: above {target:.2f}%)" if target is not None else ""
            say(
                f"{key}: test accuracy at the best validation epoch ({r['best_epoch']}) "
                f"{studies.percent(r['test_accuracy_at_best_val'])}{aim}",
                flush=True,
            )
    say(f"device: {summary['device']}; wrote {root}/summary.json and more_data.png", flush=True)
    return summary


def main(argv):
    common.run_from_flags(argv, run, SETTINGS)


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
