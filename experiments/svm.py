"""From a circuit to an SVM: Karpathy's "Hacker's guide to Neural Networks", chapter 2.

The binary SVM score = a*x + b*y + c as a circuit trained by pulls on one random toy
point at a time; the same SVM as a loss (hinge plus L2) under `jax.grad` and Optax; a
2-layer net of three ReLU units; then, beyond the text, multiclass SVMs on MNIST
pixels and on random Fourier features (an approximate RBF-kernel SVM).

    python -m experiments.svm --workdir=runs/svm                # toy ~15 s, MNIST ~4 min
    python -m experiments.svm --nomnist --workdir=runs/svm_toy  # the toy part only

prints (seed 0, two CPU cores)

    circuit SVM (SGD, step 0.01, reg 0.1): 100% training accuracy after 325 iterations
    loss SVM (jax.grad + optax.sgd, whole batch, 2000 steps): 100% after 320 steps; the
      circuit's pulls over the whole batch give the same a, b, c (difference 2e-16),
      and it classifies the toy points as the circuit SVM does
    2-layer net (3 ReLU units): 100% training accuracy after 300 iterations
    MNIST linear SVM on pixels, 10 epochs:        validation 92.14%, test 92.17%  (10 s)
    MNIST SVM on 4096 random Fourier features:    validation 97.18%, test 97.36%  (~3.5 min)

and writes config.json, summary.json, metrics.jsonl (MNIST epochs) and
toy_boundaries.png to the workdir.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import ConfigDict

from experiments import common
from lib.core import config as config_lib
from lib.core.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Range, Setting
from lib.core.errors import UserError
from lib.core.metrics import prepare_workdir, refuse_other_command, write_json
from lib.karpathy import svm as svm_lib

FLAGS = flags.FLAGS

# Every setting of a run, declared once: the flags, the defaults (`get_config`), the range
# checks and the saved config.json all derive from this list.
SETTINGS = (
    Setting("workdir", "runs/svm", "Where config.json, summary.json, metrics.jsonl and plots go."),
    Setting("seed", 0, "Seed for the choice of points, initialisation and shuffling."),
    Setting(
        "step_size",
        0.01,
        "Toy models: the SGD step size (and the loss SVM's learning rate).",
        POSITIVE,
    ),
    Setting(
        "reg",
        0.1,
        "Toy SVM: regularisation strength, the pull -reg * a on a and b at every step. The "
        "text's 1.0 is so strong that the loss's minimum misclassifies one point.",
        NON_NEGATIVE,
    ),
    Setting("eval_every", 25, "Toy models: iterations between accuracy reports.", AT_LEAST_1),
    Setting("max_iterations", 5000, "Toy models: give up after this many SGD steps.", AT_LEAST_1),
    Setting("loss_steps", 2000, "Loss SVM: full-batch gradient steps.", AT_LEAST_1),
    Setting("net_hidden", 3, "2-layer net: ReLU units in the hidden layer.", AT_LEAST_1),
    Setting("net_reg", 1e-3, "2-layer net: L2 regularisation of the weights.", NON_NEGATIVE),
    Setting("mnist", True, "Also train the multiclass SVMs on MNIST."),
    Setting(
        "mnist_train_size",
        None,
        "MNIST: keep only the first N training images (quick runs).",
        Range(1, 50_000),
        int,
    ),
    Setting("mnist_epochs", 10, "MNIST: epochs of minibatch SGD.", AT_LEAST_1),
    Setting("mnist_batch_size", 100, "MNIST: minibatch size.", AT_LEAST_1),
    Setting(
        "mnist_learning_rate", 0.01, "MNIST linear SVM on pixels: peak learning rate.", POSITIVE
    ),
    Setting("mnist_reg", 1e-4, "MNIST: L2 regularisation of the weights.", NON_NEGATIVE),
    Setting(
        "rff_features", 4096, "MNIST: random Fourier features (0: skip the RFF SVM).", NON_NEGATIVE
    ),
    Setting(
        "rff_gamma", 0.02, "MNIST: RBF kernel width gamma in exp(-gamma ||x - x'||^2).", POSITIVE
    ),
    Setting("rff_learning_rate", 1.0, "MNIST RFF SVM: peak learning rate.", POSITIVE),
)
common.define_setting_flags(SETTINGS)


def get_config() -> ConfigDict:
    """Every setting at its default."""
    return config_lib.defaults(SETTINGS)


def resolve(overrides: Mapping[str, Any]) -> ConfigDict:
    """The defaults with every non-None override over them, checked; a ConfigError (a
    UserError) names each bad value."""
    config = config_lib.resolve(get_config(), overrides, SETTINGS)
    size = config.mnist_train_size
    if size is not None and size < config.mnist_batch_size:
        raise UserError(
            f"--mnist_train_size ({size}) must be at least --mnist_batch_size "
            f"({config.mnist_batch_size})"
        )
    return config


GRID = (np.linspace(-2.5, 4.0, 131), np.linspace(-4.0, 2.5, 131))


def _params(p: dict) -> dict:
    return {k: np.asarray(v).tolist() for k, v in p.items()}


def _abc(p: dict) -> str:
    return ", ".join(f"{k} = {float(p[k]):.4f}" for k in ("a", "b", "c"))


# The toy models ----------------------------------------------------------------------


def toy(config: dict, say: Callable[..., None]) -> tuple[dict, dict]:
    """The chapter's toy part; returns the summary and the trained models for the plot."""
    key = jax.random.PRNGKey(config["seed"])
    points, labels = svm_lib.toy_data()
    reg, step = config["reg"], config["step_size"]
    say("== The toy data ==")
    say("  " + ", ".join(f"({x:g}, {y:g}) {lab:+d}" for (x, y), lab in
                         zip(svm_lib.TOY_POINTS, svm_lib.TOY_LABELS, strict=True)))  # fmt: skip

    say(f"\n== The SVM as a circuit: score = a*x + b*y + c, from {_abc(svm_lib.SVM_INIT)} ==")
    say(f"SGD on one random point per step, step {step}, regularisation pull -{reg:g} * (a, b)")
    circuit = svm_lib.train_circuit_svm(
        jax.random.fold_in(key, 1),
        step_size=step,
        reg=reg,
        eval_every=config["eval_every"],
        max_iterations=config["max_iterations"],
    )
    for it, acc in circuit.history:
        say(f"  training accuracy at iteration {it:4d}: {acc:.3f}")
    reached = circuit.history[-1][1] == 1.0
    say(
        f"{'100% after' if reached else 'not 100% after'} {circuit.iterations} iterations: "
        f"{_abc(circuit.params)}"
    )

    say(f"\n== The same SVM as a loss: mean hinge + {reg:g}/2 (a^2 + b^2) ==")
    loss_grad = jax.grad(svm_lib.svm_loss)
    per_point_gap = 0.0
    for p in (svm_lib.SVM_INIT, circuit.params):
        p = {k: jnp.asarray(v, points.dtype) for k, v in p.items()}
        for i in range(len(labels)):
            g = loss_grad(p, points[i : i + 1], labels[i : i + 1], reg)
            pulls = svm_lib.circuit_svm_pulls(p, points[i], labels[i], reg)
            per_point_gap = max(per_point_gap, *(abs(float(g[k] + pulls[k])) for k in p))
    say(
        "jax.grad of the loss on each point = minus the circuit's pulls, at the start and at "
        f"the circuit's end: largest difference {per_point_gap:.1e}"
    )
    loss_run = svm_lib.train_loss_svm(steps=config["loss_steps"], learning_rate=step, reg=reg)
    full_batch = svm_lib.circuit_full_batch(steps=config["loss_steps"], step_size=step, reg=reg)
    trajectory_gap = max(abs(float(loss_run.params[k] - full_batch[k])) for k in "abc")
    loss_acc = float(svm_lib.accuracy(svm_lib.svm_score, loss_run.params, points, labels))
    hits = np.flatnonzero(np.asarray(loss_run.accuracies) == 1.0)
    first_full = int(hits[0]) if hits.size else None
    say(
        f"optax.sgd({step}) on the whole batch, {config['loss_steps']} steps: "
        f"{_abc(loss_run.params)}; loss {float(loss_run.losses[-1]):.4f}, "
        f"training accuracy {loss_acc:.3f}"
        + (f" (first 100% after {first_full} steps)" if first_full is not None else "")
    )
    say(
        f"the circuit's full-batch pulls over the same {config['loss_steps']} steps: "
        f"{_abc(full_batch)}; largest difference {trajectory_gap:.1e}"
    )
    xx, yy = np.meshgrid(*GRID)
    grid = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], axis=1), points.dtype)
    same_side = float(
        jnp.mean(
            (svm_lib.svm_score(circuit.params, grid) > 0)
            == (svm_lib.svm_score(loss_run.params, grid) > 0)
        )
    )
    circuit_pred = np.asarray(svm_lib.svm_score(circuit.params, points) > 0)
    loss_pred = np.asarray(svm_lib.svm_score(loss_run.params, points) > 0)
    agree = bool((circuit_pred == loss_pred).all())
    say(
        f"circuit SVM (SGD) and loss SVM (full batch) classify the toy points "
        f"{'the same' if agree else 'differently'}, and agree on {100 * same_side:.1f}% of "
        f"the plotted plane"
    )
    text_reg = svm_lib.train_loss_svm(steps=20_000, learning_rate=0.05, reg=1.0)
    text_reg_acc = float(svm_lib.accuracy(svm_lib.svm_score, text_reg.params, points, labels))
    say(
        f"(with the text's pull of -1 * (a, b) the loss's minimum, {_abc(text_reg.params)}, "
        f"reaches only {text_reg_acc:.3f}: SGD touches 100% on the way, the minimum does not)"
    )

    say(f"\n== A 2-layer net: {config['net_hidden']} ReLU units, hinge loss, jax.grad ==")
    net = svm_lib.train_two_layer(
        jax.random.fold_in(key, 2),
        hidden=config["net_hidden"],
        step_size=step,
        reg=config["net_reg"],
        eval_every=config["eval_every"],
        max_iterations=config["max_iterations"],
    )
    for it, acc in net.history:
        say(f"  training accuracy at iteration {it:4d}: {acc:.3f}")
    net_reached = net.history[-1][1] == 1.0
    say(f"{'100% after' if net_reached else 'not 100% after'} {net.iterations} iterations")

    summary = {
        "circuit_svm": {
            "iterations_to_100": circuit.iterations if reached else None,
            "training_accuracy": circuit.history[-1][1],
            "history": circuit.history,
            "params": _params(circuit.params),
        },
        "loss_svm": {
            "steps": config["loss_steps"],
            "first_step_at_100": first_full,
            "training_accuracy": loss_acc,
            "final_loss": float(loss_run.losses[-1]),
            "params": _params(loss_run.params),
            "per_point_gradient_difference": per_point_gap,
            "full_batch_circuit_params": _params(full_batch),
            "full_batch_trajectory_difference": trajectory_gap,
            "same_predictions_as_circuit": agree,
            "plane_agreement_with_circuit": same_side,
            "text_reg_minimum": {"params": _params(text_reg.params), "accuracy": text_reg_acc},
        },
        "two_layer_net": {
            "hidden": config["net_hidden"],
            "iterations_to_100": net.iterations if net_reached else None,
            "training_accuracy": net.history[-1][1],
            "history": net.history,
        },
    }
    models = {
        f"circuit SVM (SGD, {circuit.iterations} it.)": (svm_lib.svm_score, circuit.params),
        f"loss SVM (optax, {config['loss_steps']} steps)": (svm_lib.svm_score, loss_run.params),
        f"2-layer net, {config['net_hidden']} ReLU ({net.iterations} it.)": (
            svm_lib.two_layer_score,
            net.params,
        ),
    }
    return summary, models


def plot_boundaries(models: dict, path: Path) -> None:
    """Each toy model's score over the plane, its decision boundary and the points."""
    from lib.core.plots import subplots

    xx, yy = np.meshgrid(*GRID)
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
    fig, axes = subplots(1, len(models), figsize=(4.2 * len(models), 4.2), squeeze=False)
    for ax, (title, (score_fn, params)) in zip(axes[0], models.items(), strict=True):
        scores = np.asarray(score_fn(params, jnp.asarray(grid))).reshape(xx.shape)
        ax.contourf(xx, yy, scores > 0, levels=[-0.5, 0.5, 1.5], colors=["#f4c7c3", "#c6dafc"])
        ax.contour(xx, yy, scores, levels=[-1, 0, 1], colors="k", linestyles=[":", "-", ":"])
        for label, marker, color in ((1, "o", "#1a53c4"), (-1, "s", "#c4281a")):
            pts = svm_lib.TOY_POINTS[svm_lib.TOY_LABELS == label]
            ax.scatter(pts[:, 0], pts[:, 1], marker=marker, c=color, edgecolors="k",
                       label=f"{label:+d}", zorder=3)  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    axes[0][0].legend(loc="lower left")
    fig.suptitle("Toy decision boundaries (solid: score 0, dotted: margins ±1)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# MNIST -------------------------------------------------------------------------------


def mnist_svms(config: dict, workdir: Path, say: Callable[..., None]) -> dict:
    from lib.core import data

    try:
        splits = data.mnist(train_size=config["mnist_train_size"])
    except data.DataError as e:
        raise UserError(str(e)) from None

    def as_rows(split):
        return split.images.reshape(len(split), -1), split.labels

    train, validation, test = (as_rows(s) for s in splits)
    key = jax.random.PRNGKey(config["seed"])
    models = {"linear_svm": (svm_lib.flatten_images, config["mnist_learning_rate"])}
    if config["rff_features"]:
        rff = svm_lib.init_random_fourier_features(
            jax.random.fold_in(key, 10), train[0].shape[1], config["rff_features"],
            config["rff_gamma"],
        )  # fmt: skip
        models["rff_svm"] = (
            functools.partial(svm_lib.random_fourier_features, rff),
            config["rff_learning_rate"],
        )
    results = {}
    metrics_path = workdir / "metrics.jsonl"
    metrics_path.write_text("")
    for name, (features, learning_rate) in models.items():
        what = (
            "pixels"
            if name == "linear_svm"
            else f"{config['rff_features']} random Fourier features, gamma {config['rff_gamma']:g}"
        )
        say(
            f"\n== MNIST multiclass linear SVM on {what}: hinge + L2 ({config['mnist_reg']:g}), "
            f"{len(train[1]):,} training images, SGD momentum 0.9, lr {learning_rate:g} "
            "cosine-decayed =="
        )

        def on_epoch(record, name=name):
            with metrics_path.open("a") as f:
                f.write(json.dumps({"model": name, **record}) + "\n")
            say(
                f"  epoch {record['epoch']:2d}  loss {record['loss']:.4f}  "
                f"validation {100 * record['validation_accuracy']:.2f}%",
                flush=True,
            )

        started = time.perf_counter()
        run = svm_lib.train_multiclass_svm(
            jax.random.fold_in(key, 11),
            train,
            validation,
            test,
            features=features,
            epochs=config["mnist_epochs"],
            batch_size=config["mnist_batch_size"],
            learning_rate=learning_rate,
            reg=config["mnist_reg"],
            on_epoch=on_epoch,
        )
        wall = time.perf_counter() - started
        say(
            f"best validation {100 * run.validation_accuracy:.2f}% at epoch {run.best_epoch}; "
            f"test accuracy there {100 * run.test_accuracy:.2f}%; {wall:.0f} s"
        )
        results[name] = {
            "features": what,
            "best_epoch": run.best_epoch,
            "validation_accuracy": run.validation_accuracy,
            "test_accuracy": run.test_accuracy,
            "wall_time_s": wall,
            "train_size": len(train[1]),
            "history": run.history,
        }
    return results


def run(overrides: Mapping[str, Any], workdir: str | None = None, verbose: bool = True) -> dict:
    """The toy models, their plot, and (unless the mnist setting is off) the MNIST SVMs,
    with the given settings (or a whole config) over the defaults (`resolve`);
    `workdir` wins over overrides["workdir"]."""
    config = config_lib.as_dict(
        resolve({**overrides, "workdir": workdir or overrides.get("workdir")})
    )
    root = prepare_workdir(config["workdir"])
    refuse_other_command(root, config)
    write_json(root / "config.json", config)
    say = print if verbose else (lambda *a, **k: None)
    started = time.perf_counter()
    with jax.enable_x64(True):  # the toy models in float64, so the two SVMs agree exactly
        summary, models = toy(config, say)
        plot_boundaries(models, root / "toy_boundaries.png")
    say(f"\nwrote {root / 'toy_boundaries.png'}")
    if config["mnist"]:
        summary["mnist"] = mnist_svms(config, root, say)
    summary["wall_time_s"] = time.perf_counter() - started
    summary["device"] = str(jax.devices()[0].device_kind)
    write_json(root / "summary.json", summary)
    say(f"wrote {root / 'summary.json'} ({summary['wall_time_s']:.0f} s in all)")
    return summary


def main(argv: list[str]) -> None:
    common.run_from_flags(argv, run, SETTINGS)


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
