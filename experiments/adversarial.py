"""The nets' blind spots: adversarial examples and fooling images on the ladder's nets.

Nielsen's last chapter points to them: Szegedy et al. 2013 ("Intriguing properties of
neural networks") found imperceptibly perturbed images that a net misclassifies;
Goodfellow, Shlens and Szegedy 2014 made them in one gradient step (FGSM); Madry et
al. 2017 in many (PGD); Nguyen, Yosinski and Clune 2014 made images that look like
noise to a person and are classified with near certainty. The attacks are
`lib.adversarial.attacks`'s; this module aims them at finished runs of
`experiments.mnist_convnet`:

    python -m experiments.adversarial --targets=runs/ladder/relu/seed=0 \\
        --workdir=runs/adversarial
    python -m experiments.adversarial \\
        --targets=runs/ladder/shallow/seed=0,runs/ladder/conv2/seed=0,runs/ladder/relu/seed=0

Each target is a single net (a run with --ensemble=1, as the ladder's are).

With no --targets it trains its own (the relu rung, 8 epochs of the quick recipe in
`QUICK_RECIPE`) in
WORKDIR/target, and with --train=none,fgsm,pgd beside it the same net trained on
adversarial examples of itself (Goodfellow et al.'s FGSM mix; Madry et al.'s PGD
training, see `lib.adversarial.training`) in WORKDIR/target-fgsm and target-pgd:

    python -m experiments.adversarial --train=none,fgsm,pgd --workdir=runs/adv_training

For each target it reports the test error on clean images and under
FGSM and PGD (L-inf) at each of --eps, the mean per-pixel RMS distortion of Szegedy's
minimum distortion toward a random wrong label (L-BFGS with a search over c), and one
fooling image per class with its confidence; with several targets, the error of each
target on the FGSM images made on each other one (transfer). WORKDIR gets
config.json, summary.json, table.md, error_vs_eps.png (error against eps per net),
examples.png (clean, perturbation amplified, adversarial) and fooling.png; a finished
target's results are kept in WORKDIR/targets/ (the first one's pictures with them), so a
rerun after an interruption goes on from the next target and draws the same figures.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import ConfigDict

from experiments import common, mnist_convnet
from lib.adversarial import attacks as adversarial
from lib.adversarial import training as adversarial_training
from lib.core import config as config_lib
from lib.core import data, metrics, plots
from lib.core.checkpoint import Checkpointer
from lib.core.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, OneOf, Range, Setting
from lib.core.errors import UserError
from lib.core.stop import GracefulStop
from lib.nielsen import nets
from lib.nielsen import train as train_lib

FLAGS = flags.FLAGS

EPS = Range(0, 1, open_low=True)

# Every setting, declared once: the flags, the range checks and config.json derive from it.
SETTINGS = (
    Setting("targets", (), "Workdirs of finished mnist_convnet runs to attack.", kind=str),
    dataclasses.replace(
        common.DATASET,
        help="The images of the nets trained here (no --targets); targets given bring their "
        "own. " + common.DATASET.help,
    ),
    Setting("workdir", "runs/adversarial", "Where the study writes."),
    Setting("eps", (0.05, 0.1, 0.2, 0.25, 0.3), "L-inf budgets.", EPS),
    Setting("test_size", 1000, "Test images attacked by FGSM and PGD.", Range(1, 10_000)),
    Setting("pgd_steps", 40, "PGD steps.", AT_LEAST_1),
    Setting(
        "pgd_step_size", None, "PGD step size; default 2.5 eps / --pgd_steps.", POSITIVE, float
    ),
    Setting("distortion_size", 100, "Test images for the minimum distortion.", AT_LEAST_1),
    Setting("lbfgs_iterations", 50, "L-BFGS iterations per penalty weight c.", AT_LEAST_1),
    Setting("transfer_eps", 0.1, "FGSM budget of the transfer table.", EPS),
    Setting("seed", 0, "Seed of PGD's start, the wrong labels and the noise.", NON_NEGATIVE),
    Setting(
        "train",
        ("none",),
        "With no --targets, the nets trained here (the relu rung's quick 8-epoch recipe), one "
        "per entry: none, trained on clean images; fgsm or pgd, trained adversarially "
        "(see experiments.mnist_convnet --adversarial_training).",
        OneOf(("none", *adversarial_training.METHODS)),
    ),
    Setting("target_epochs", 8, "Epochs of the nets trained when no --targets.", AT_LEAST_1),
    Setting(
        "train_size",
        None,
        "Training images of the nets trained here; default all.",
        AT_LEAST_1,
        int,
    ),
    Setting(
        "adversarial_eps", 0.25, "L-inf budget of adversarial training (--train=fgsm,pgd).", EPS
    ),
    Setting("adversarial_steps", 7, "PGD steps per training batch of --train=pgd.", AT_LEAST_1),
    Setting(
        "adversarial_warmup",
        0.0,
        "Epochs over which PGD training's budget grows from 0 (--train=pgd).",
        NON_NEGATIVE,
    ),
)
common.define_setting_flags(SETTINGS)

# The quick recipe (1-pixel shifts, batch 100, Nesterov, cosine decay; 8 epochs by
# default) of the relu net trained when no target is given.
QUICK_RECIPE = {"net": "relu", "max_shift": 1, "batch_size": 100, "optimizer": "nesterov",
            "learning_rate": 0.05, "l2": 0.02, "schedule": "cosine"}  # fmt: skip


def get_config() -> ConfigDict:
    """The study's settings at their defaults."""
    return config_lib.defaults(SETTINGS)


class Target:
    """A finished run's network, its last intact saved parameters, its classes and its name.

    `load(dataset, order=...)` gives the run's dataset whole (default `data.load`); one
    that keeps what it loaded lets targets of one dataset share it.
    """

    def __init__(self, workdir: str | Path, load: Callable[..., data.Splits] | None = None):
        self.workdir = Path(workdir)
        config_file, checkpoints = self.workdir / "config.json", self.workdir / "checkpoints"
        if not config_file.exists() or not checkpoints.is_dir():
            raise UserError(
                f"{self.workdir} holds no run of experiments.mnist_convnet (no config.json "
                f"or checkpoints/); train one first: python -m experiments.mnist_convnet "
                f"--workdir={self.workdir}"
            )
        if not (self.workdir / "summary.json").exists():
            raise UserError(
                f"{self.workdir} holds an unfinished run (no summary.json); finish it first: "
                f"python -m experiments.mnist_convnet --workdir={self.workdir} resumes it"
            )
        self.config = config = json.loads(config_file.read_text())
        if config.get("net") not in nets.RUNGS or config.get("ensemble", 1) != 1:
            raise UserError(
                f"{self.workdir} is not a single net of the ladder (net {config.get('net')}, "
                f"ensemble {config.get('ensemble')}): attack a run trained with --ensemble=1, "
                f"such as a ladder run (runs/ladder/relu/seed=0)"
            )
        self.name = config["net"]
        trained_on = config.get("adversarial_training", "none")
        if trained_on != "none":
            self.name += f", {trained_on.upper()}-trained (eps {config['adversarial_eps']:g})"
        # The net as the run built it: its classes and image shape are its data's.
        self.num_classes, image_shape = _classes_and_shape(config, load or data.load)
        self.model = nets.create(
            config["net"],
            activation=config["activation"],
            dropout=config["dropout"],
            weight_init=config["init"],
        ).clone(num_classes=self.num_classes)
        # The train state as the run saved it (lib.nielsen.train.train_and_evaluate), in
        # shapes only; the optimizer's settings shape its state, not its numbers.
        optimizer = train_lib.make_optimizer(
            config.get("optimizer", "sgd"),
            1.0,
            config.get("momentum", 0.9),
            config.get("schedule", "constant"),
            total_steps=1,
        )
        shapes = jax.eval_shape(
            lambda: train_lib.init_state(
                self.model, optimizer, jax.random.PRNGKey(0), jnp.zeros((1, *image_shape))
            )
        )
        # On the default device, as every other array of the study, whatever sharding the
        # checkpoint was written with: inputs of one placement keep one compiled program.
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        state_like = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), shapes
        )
        saved = Checkpointer(checkpoints)
        try:
            restored = saved.restore_latest(state_like)  # the newest intact step
        finally:
            saved.close()
        if restored is None:
            raise UserError(f"{checkpoints} holds no checkpoint; train the run first")
        self.params = restored.state.params
        # One line on damaged newer steps passed over, or None.
        damaged = "; ".join(f"step {step} ({why})" for step, why in restored.skipped)
        self.checkpoint_notice = (
            f"damaged checkpoints passed over: {damaged}; attacking step {restored.step}"
            if damaged
            else None
        )
        self.apply = NetApply(self.model)


def _classes_and_shape(
    config: Mapping[str, Any], load: Callable[..., data.Splits]
) -> tuple[int, tuple[int, ...]]:
    """The classes and image shape of the images a run of experiments.mnist_convnet with
    `config` trained on, found as the run found them in its dataset as `load` gives it."""
    splits = load(config.get("dataset", "mnist"), order=config.get("split", "book"))
    splits = splits._replace(train=splits.train.take(config.get("train_size")))
    splits = common.scored_subsets(splits, config)
    return data.num_classes(splits), splits.train.images.shape[1:]


@dataclasses.dataclass(frozen=True)
class NetApply:
    """`apply(params, x) -> logits` of a net; equal for equal nets, so that the attacks,
    compiled per `apply`, compile once for targets of the same architecture."""

    model: nn.Module

    def __call__(self, params, x):
        return self.model.apply({"params": params}, x)


def _errors(target: Target, x, y) -> float:
    return float(np.mean(np.asarray(adversarial.predictions(target.apply, target.params, x)) != y))


def attack(target: Target, test: data.Split, config: dict, say) -> tuple[dict, dict]:
    """One target's studies: (its results, pictures' arrays)."""
    x, y = jnp.asarray(test.images[: config["test_size"]]), test.labels[: config["test_size"]]
    key = jax.random.key(config["seed"])
    apply, params = target.apply, target.params
    out = {"workdir": str(target.workdir), "net": target.name}
    out["clean_error"] = _errors(target, x, y)
    out["fgsm"], out["pgd"] = {}, {}
    started = time.perf_counter()
    for eps in config["eps"]:
        x_fgsm = adversarial.fgsm(apply, params, x, jnp.asarray(y), eps)
        out["fgsm"][str(eps)] = _errors(target, x_fgsm, y)
        x_pgd = adversarial.pgd(
            apply,
            params,
            x,
            jnp.asarray(y),
            eps,
            config["pgd_steps"],
            config["pgd_step_size"] or 2.5 * eps / config["pgd_steps"],
            jax.random.fold_in(key, 1),
        )
        out["pgd"][str(eps)] = _errors(target, x_pgd, y)
        say(
            f"  {target.name}: eps {eps}: error FGSM {100 * out['fgsm'][str(eps)]:.1f}%, "
            f"PGD {100 * out['pgd'][str(eps)]:.1f}%  ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    n, classes = config["distortion_size"], target.num_classes
    shift = jax.random.randint(jax.random.fold_in(key, 2), (n,), 1, classes)
    wrong = (test.labels[:n] + shift) % classes
    x_min, found = adversarial.minimum_distortion(
        apply, params, x[:n], jnp.asarray(wrong), iterations=config["lbfgs_iterations"]
    )
    rms = np.asarray(adversarial.rms_distortion(x[:n], x_min))[np.asarray(found)]
    out["distortion"] = {
        "mean_rms": float(rms.mean()) if len(rms) else None,
        "found": int(np.sum(found)),
        "of": n,
    }
    mean = "none found" if not len(rms) else f"{rms.mean():.4f} RMS per pixel"
    say(f"  {target.name}: minimum distortion {mean} (found for {len(rms)}/{n})", flush=True)
    noise = jax.random.uniform(jax.random.fold_in(key, 3), (classes, *x.shape[1:]))
    fooling, confidence = adversarial.fooling_images(apply, params, noise, jnp.arange(classes))
    out["fooling_confidence"] = [float(c) for c in confidence]
    say(f"  {target.name}: fooling images, least confident {min(confidence):.5f}", flush=True)
    eps = config["transfer_eps"]
    k = min(8, n)  # images shown: the first of those given the minimum distortion
    shown = adversarial.fgsm(apply, params, x[:k], jnp.asarray(y[:k]), eps)
    pictures = {
        "clean": np.asarray(x[:k]),
        "adversarial": np.asarray(shown),
        "adversarial_labels": np.asarray(adversarial.predictions(apply, params, shown)),
        "minimum": np.asarray(x_min[:k]),
        "minimum_labels": np.asarray(adversarial.predictions(apply, params, x_min[:k])),
        "fooling": np.asarray(fooling),
    }
    return out, pictures


def _ladder_order(names) -> list[str]:
    """Target names as the ladder orders its rungs (shallow first), the rest after them,
    each group by name: the same order however summary.json stored its keys."""
    rank = {net: i for i, net in enumerate(nets.NETS)}
    first_word = lambda name: name.split(",")[0].split(" ")[0]
    return sorted(names, key=lambda n: (rank.get(first_word(n), len(rank)), n))


def table(summary: dict) -> str:
    """The study's markdown table (and the transfer table) from its summary."""
    eps = summary["eps"]
    lines = [
        "| net | clean error | "
        + " | ".join(f"FGSM {e}" for e in eps)
        + " | "
        + " | ".join(f"PGD {e}" for e in eps)
        + " | min. distortion (RMS) | fooling: least confidence |",
        "| --- | ---: | " + " | ".join("---:" for _ in range(2 * len(eps) + 2)) + " |",
    ]
    for name in _ladder_order(summary["targets"]):
        r = summary["targets"][name]
        cells = [f"{100 * r['clean_error']:.1f}%"]
        cells += [f"{100 * r['fgsm'][str(e)]:.1f}%" for e in eps]
        cells += [f"{100 * r['pgd'][str(e)]:.1f}%" for e in eps]
        mean_rms = r["distortion"]["mean_rms"]
        cells.append("-" if mean_rms is None else f"{mean_rms:.3f}")
        cells.append(f"{min(r['fooling_confidence']):.5f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    transfer = summary.get("transfer")
    if transfer:
        names = _ladder_order(transfer)
        lines += [
            "",
            f"Transfer: test error of each net (columns) on FGSM images (eps "
            f"{summary['transfer_eps']}) made on each net (rows).",
            "",
            "| made on | " + " | ".join(names) + " |",
            "| --- | " + " | ".join("---:" for _ in names) + " |",
        ]
        for made in names:
            cells = [f"{100 * transfer[made][on]:.1f}%" for on in names]
            lines.append(f"| {made} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _unique_names(targets: list[Target]) -> None:
    seen: dict[str, int] = {}
    for t in targets:
        seen[t.name] = seen.get(t.name, 0) + 1
    for t in targets:
        if seen[t.name] > 1:
            t.name = f"{t.name} ({t.workdir})"


def resolve(overrides: Mapping[str, Any]) -> ConfigDict:
    """The defaults with every given setting over them, checked; a ConfigError names each
    bad value."""
    return config_lib.resolve(get_config(), overrides, SETTINGS)


def run(overrides: Mapping[str, Any], workdir: str | None = None, verbose: bool = True) -> dict:
    """Attack every target (the given settings over the defaults); returns the summary
    (also written to WORKDIR/summary.json). `workdir` wins over overrides["workdir"]."""
    config = config_lib.as_dict(
        resolve({**overrides, "workdir": workdir or overrides.get("workdir")})
    )
    if config["distortion_size"] > config["test_size"]:
        raise UserError(
            f"--distortion_size={config['distortion_size']} must be at most --test_size="
            f"{config['test_size']}"
        )
    paths = list(config["targets"])
    if len({Path(p).resolve() for p in paths}) < len(paths):
        raise UserError(f"--targets names a run twice: {','.join(paths)}")
    if len(set(config["train"])) < len(config["train"]):
        raise UserError(f"--train names a net twice: {','.join(config['train'])}")
    load = functools.cache(data.load)  # each dataset once, for every target and the attacks
    targets = [Target(p, load) for p in paths]  # a bad target is named before any work
    datasets = sorted({t.config.get("dataset", "mnist") for t in targets})
    if len(datasets) > 1:
        raise UserError(f"--targets were trained on different datasets: {', '.join(datasets)}")
    if datasets:
        config["dataset"] = datasets[0]
    with common.own_workdir(config) as root:
        return _study(config, root, targets, verbose, load)


def _study(
    config: dict,
    root: Path,
    targets: list[Target],
    verbose: bool,
    load: Callable[..., data.Splits],
) -> dict:
    """The attacks of `run`, in the workdir it holds; `load` gives the datasets."""
    say = print if verbose else (lambda *a, **k: None)
    writer = metrics.MetricsWriter(root)
    writer.write_json("config.json", config)
    # A stop is looked for before each net the study trains and each target it attacks:
    # what finished is kept, and the same command goes on from there.
    attacked = None
    test = load(config["dataset"], order="book").test
    with GracefulStop() as stop:
        if not targets:
            targets = _train_targets(config, root, verbose, load, stop)
        if targets is not None:
            _unique_names(targets)
            started = time.perf_counter()
            attacked = _attack_each(config, root, targets, test, say, stop)
    if attacked is None:
        common.say_stopped(say, config, stop)
        return {"finished": False}
    results, pictures = attacked
    summary = {
        "finished": True,
        "eps": config["eps"],
        "transfer_eps": config["transfer_eps"],
        "targets": results,
    }
    if len(targets) > 1:
        x = jnp.asarray(test.images[: config["test_size"]])
        y = test.labels[: config["test_size"]]
        summary["transfer"] = {}
        for made in targets:
            x_adv = adversarial.fgsm(
                made.apply, made.params, x, jnp.asarray(y), config["transfer_eps"]
            )
            summary["transfer"][made.name] = {on.name: _errors(on, x_adv, y) for on in targets}
    summary["wall_time_s"] = time.perf_counter() - started
    summary["device"] = f"{jax.devices()[0].device_kind} x1"
    text = table(summary)
    (root / "table.md").write_text(text + "\n")
    if writer.enabled:
        plots.error_vs_eps(summary, root / "error_vs_eps.png", "test error under attack")
    if pictures is not None:
        name = targets[0].name
        plots.adversarial_examples(
            pictures, root / "examples.png", title=f"{name}: FGSM eps {config['transfer_eps']}"
        )
        plots.image_row(
            pictures["fooling"],
            [f"{k}: {c:.4f}" for k, c in enumerate(results[name]["fooling_confidence"])],
            root / "fooling.png",
            title=f"{name}: fooling images (class: confidence)",
        )
    writer.write_json("summary.json", summary)
    say(text, flush=True)
    return summary


def _attack_each(
    config: dict,
    root: Path,
    targets: list[Target],
    test: data.Split,
    say: Callable[..., None],
    stop: GracefulStop,
) -> tuple[dict, dict | None] | None:
    """Each target's attacks (`attack`) on `test`, in order, keeping each in ROOT/targets
    as it ends and skipping those kept before: (results by name, the first target's
    pictures); None when a stop is asked before the last of them starts."""
    kept = root / "targets"
    results, pictures = {}, None  # the figures show the first target's pictures
    for i, target in enumerate(targets):
        done, drawn = kept / f"{i}.json", kept / f"{i}.npz"
        if (
            done.exists()
            and json.loads(done.read_text())["workdir"] == str(target.workdir)
            and (i > 0 or drawn.exists())
        ):
            results[target.name] = json.loads(done.read_text())
            if i == 0:
                with np.load(drawn) as saved:
                    pictures = dict(saved)
            say(f"{target.name}: done before, kept in {done}", flush=True)
            continue
        if stop():  # asked as the net or target before finished: it is kept
            return None
        kept.mkdir(exist_ok=True)
        say(f"{target.name} ({target.workdir}):", flush=True)
        if target.checkpoint_notice:
            say(f"  {target.checkpoint_notice}", flush=True)
        results[target.name], shown = attack(target, test, config, say)
        if i == 0:
            pictures = shown
            _save_pictures(drawn, shown)  # before the JSON that marks the target done
        metrics.write_json(done, results[target.name])
    return results, pictures


def _train_targets(
    config: dict,
    root: Path,
    verbose: bool,
    load: Callable[..., data.Splits],
    stop: GracefulStop,
) -> list[Target] | None:
    """The nets of --train, trained in `root` (a finished one is kept); None when a stop
    was asked before the last of them finished (`stop`, looked at before each starts)."""
    say = print if verbose else (lambda *a, **k: None)
    targets = []
    for method in config["train"]:
        if stop():  # asked as the net before finished: it is kept, none starts
            return None
        workdir = root / ("target" if method == "none" else f"target-{method}")
        trained = "" if method == "none" else f", trained on {method.upper()} images"
        say(f"no --targets: the quick recipe's relu net{trained}, in {workdir}", flush=True)
        summary = mnist_convnet.run(
            {
                **QUICK_RECIPE,
                "dataset": config["dataset"],
                "epochs": config["target_epochs"],
                "train_size": config["train_size"],
                "adversarial_training": method,
                "adversarial_eps": config["adversarial_eps"],
                "adversarial_steps": config["adversarial_steps"],
                "adversarial_warmup": config["adversarial_warmup"] if method == "pgd" else 0.0,
            },
            str(workdir),
            verbose=verbose,
        )
        if not summary["finished"]:
            return None
        targets.append(Target(workdir, load))
    return targets


def _save_pictures(path: Path, pictures: dict) -> None:
    """The pictures' arrays as one .npz, written atomically."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **pictures)
    os.replace(tmp, path)


def main(argv):
    common.run_from_flags(argv, run, SETTINGS)


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
