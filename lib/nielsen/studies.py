"""Studies: several variants of a run, each trained as K seeds side by side.

A study (the activation study, the training-data study) trains each of its variants
in a sub-workdir of its own through `train.train_and_evaluate`, with
`TrainConfig(ensemble=K, seed=s)`: member m is exactly the lone run with seed s + m,
so the K members are K independent seeds, trained together. Each sub-run resumes
from its own checkpoints, and a finished one only reloads its final state.

What a variant yields (`run_variant`): the validation accuracy of every seed after
every epoch, as a (seeds, epochs) array read back from the sub-run's metrics.jsonl,
and the test accuracy of every seed's final parameters. The rest of this module
turns those into what a study reports: mean and spread over seeds, the first epoch
that passes a threshold, the study's own metrics.jsonl lines, and the figures.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from matplotlib.ticker import MaxNLocator

from lib.core.data import Splits
from lib.core.metrics import read_jsonl, write_json
from lib.core.plots import subplots
from lib.nielsen import train


class VariantResult(NamedTuple):
    summary: dict  # train_and_evaluate's summary of the K-seed run
    curves: np.ndarray  # (seeds, epochs) validation accuracy of each seed, in [0, 1]
    final_test: list[float]  # each seed's test accuracy after the last epoch
    history: list[dict]  # the sub-run's metrics.jsonl
    params: Any  # the final parameters, with a leading seed axis when there are several


def member_curves(history: Sequence[Mapping]) -> np.ndarray:
    """(seeds, epochs) validation accuracies from a run's per-epoch records.

    An ensemble run records each member's accuracy (`val_member_accuracy`); a lone
    run has one seed, its `val_accuracy`.
    """
    if not history:
        return np.zeros((0, 0))
    if "val_member_accuracy" in history[0]:
        return np.asarray([h["val_member_accuracy"] for h in history], np.float64).T
    return np.asarray([[h["val_accuracy"] for h in history]], np.float64)


def run_variant(
    model: nn.Module,
    splits: Splits,
    config: train.TrainConfig,
    workdir: str | Path,
    hooks: train.Hooks | None = None,
    should_stop: Any = None,
) -> VariantResult:
    """Train (or resume, or reload) one variant of `config.ensemble` seeds in `workdir`.

    Raises `train.DivergedError` like `train_and_evaluate`; when `should_stop` ends
    the run early, `summary["finished"]` is False and the curves are partial.
    """
    workdir = Path(workdir)
    check_settings(workdir, model, config, splits)
    summary, state = train.train_and_evaluate(model, splits, config, workdir, hooks, should_stop)
    predict = train.make_predict(model, config.ensemble, config.ensemble_layout)
    labels = train.predict_split(
        predict, state.params, jnp.asarray(splits.test.images), config.eval_batch_size
    )
    scored = train.accuracies(labels, splits.test.labels)
    final_test = scored.get("member_accuracy", [scored["accuracy"]])
    history = read_jsonl(workdir / "metrics.jsonl")
    return VariantResult(summary, member_curves(history), final_test, history, state.params)


def run_settings(model: nn.Module, config: train.TrainConfig, splits: Splits | None = None) -> dict:
    """What makes a sub-run the run it is: the net, its data and its training, not how long
    it trains or where."""
    net = {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.name not in ("parent", "name", "pool")  # pool: how, not what, it computes
    }
    how = dataclasses.asdict(config)
    for name in ("driver", "ensemble_layout", "eval_batch_size", "num_devices"):
        how.pop(name)
    if config.schedule == "constant":  # a decaying rate's steps depend on the epochs
        how.pop("epochs")
    if splits is not None:
        how.update(train_images=len(splits.train), validation_images=len(splits.validation))
    return json.loads(json.dumps({"net": type(model).__name__, **net, **how}, default=str))


def check_settings(
    workdir: Path, model: nn.Module, config: train.TrainConfig, splits: Splits | None = None
) -> None:
    """Record a sub-run's settings in workdir/settings.json; raise ConfigError when the
    workdir already holds a run with other settings (it would resume the wrong run),
    naming every one that differs. Settings only one side records are not compared. More
    epochs than before is fine at a constant rate: the run goes on from where it ended."""
    settings = run_settings(model, config, splits)
    path = workdir / "settings.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = [
            f"{k}={before[k]} (now {settings[k]})"
            for k in sorted(set(before) & set(settings))
            if before[k] != settings[k]
        ]
        if changed:
            raise train.ConfigError(
                f"{workdir} holds a run with other settings: {', '.join(changed)}; "
                "choose another --workdir, or delete that one to start it again"
            )
        return
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


# ----------------------------------------------------------------------------- over seeds


def first_epoch_at(curve: Sequence[float], threshold: float) -> int | None:
    """The first epoch (counting from 1) whose accuracy is at least `threshold`, or None."""
    hits = np.flatnonzero(np.asarray(curve) >= threshold)
    return int(hits[0]) + 1 if hits.size else None


def spread(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max."""
    v = np.asarray(values, np.float64)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def seed_summary(
    curves: np.ndarray, final_test: Sequence[float], thresholds: Sequence[float]
) -> dict:
    """What a table row says about K seeds: final and best validation accuracy, final test
    accuracy (each as mean and spread over seeds), and each seed's first epoch at or above
    each threshold (None where it never got there)."""
    return {
        "seeds": int(curves.shape[0]),
        "epochs": int(curves.shape[1]),
        "final_val": spread(curves[:, -1]),
        "best_val": spread(curves.max(axis=1)),
        "final_test": spread(final_test),
        "first_epoch": {f"{100 * t:g}": [first_epoch_at(c, t) for c in curves] for t in thresholds},
    }


def study_lines(variant: str, history: Sequence[Mapping], **fields) -> list[dict]:
    """A sub-run's per-epoch records as lines of the study's metrics.jsonl: one per epoch,
    tagged with the variant (and any `fields`), with each seed's validation accuracy and
    their mean and spread. `val_accuracy` stays the sub-run's: the seeds' majority vote."""
    curves = member_curves(history)
    lines = []
    for i, entry in enumerate(history):
        over_seeds = spread(curves[:, i])
        lines.append(
            {
                "variant": variant,
                **fields,
                **{k: v for k, v in entry.items() if k != "val_member_accuracy"},
                "val_seed_accuracy": curves[:, i].tolist(),
                "val_mean_accuracy": over_seeds["mean"],
                "val_std_accuracy": over_seeds["std"],
            }
        )
    return lines


def percent(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def mean_pm(s: Mapping, digits: int = 2) -> str:
    """'99.10 ± 0.05%' (mean ± sample standard deviation over seeds)."""
    if s.get("std"):
        return f"{100 * s['mean']:.{digits}f} ± {100 * s['std']:.{digits}f}%"
    return percent(s["mean"], digits)


def epochs_cell(epochs: Sequence[int | None]) -> str:
    """Each seed's first epoch at a threshold: '7 (6-9)' as median and range, or
    '- (2/3 seeds: 9, 12)' when some seeds never got there."""
    reached = sorted(e for e in epochs if e is not None)
    if not reached:
        return "-"
    if len(reached) < len(epochs):
        listed = ", ".join(str(e) for e in reached)
        return f"- ({len(reached)}/{len(epochs)} seeds: {listed})"
    median = float(np.median(reached))
    text = f"{median:g}"
    if reached[0] != reached[-1]:
        text += f" ({reached[0]}-{reached[-1]})"
    return text


# ----------------------------------------------------------------------------- figures


def _finish(fig, ax, path: str | Path, title: str, legend_loc: str = "lower right") -> None:
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def seed_bands(
    series: Sequence[tuple[str, np.ndarray]],
    path: str | Path,
    title: str = "",
    thresholds: Sequence[float] = (),
) -> None:
    """Validation accuracy per epoch: the mean over seeds as a line, min to max as a band;
    on the left the whole range, on the right a close-up of the top, where the curves end.

    `series` holds (label, curves) with curves (seeds, epochs) in [0, 1].
    """
    series = [(label, 100 * np.asarray(curves)) for label, curves in series if curves.size]
    if not series:
        return
    fig, axes = subplots(1, 2, figsize=(12, 4.6))
    finals = [acc.mean(0)[-1] for _, acc in series]
    high = max(float(acc.max()) for _, acc in series)
    low = min(float(acc.min()) for _, acc in series)
    close = float(np.median(finals)) - 2.5
    for ax, (bottom, top) in zip(axes, [(low - 1.0, high + 0.5), (close, high + 0.3)], strict=True):
        for label, acc in series:
            epochs = np.arange(1, acc.shape[1] + 1)
            seeds = acc.shape[0]
            (line,) = ax.plot(
                epochs, acc.mean(0), "-o", ms=3, label=f"{label} ({seeds} seed{'s' * (seeds > 1)})"
            )
            if seeds > 1:
                ax.fill_between(epochs, acc.min(0), acc.max(0), color=line.get_color(), alpha=0.2)
        bottom, top = max(bottom, 0.0), min(top, 100.0)
        for t in thresholds:
            if bottom < 100 * t < top:
                ax.axhline(100 * t, color="grey", ls=":", lw=1)
        ax.set_ylim(bottom, top)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy (%)")
    axes[0].set_title("mean over seeds; band: min to max", fontsize=10)
    axes[1].set_title("close-up of the top (dotted: thresholds)", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=9)
    fig.suptitle(title)
    rows = -(-len(labels) // 3)
    fig.tight_layout(rect=(0, 0.06 * rows + 0.02, 1, 1))
    fig.savefig(path, dpi=100)


def accuracy_vs_size(
    series: Sequence[tuple[str, Sequence[int], Sequence[Sequence[float]]]],
    path: str | Path,
    title: str = "",
    ylabel: str = "test accuracy (%)",
) -> None:
    """Accuracy against the number of training images (log axis), as in the book's
    "more training data" figures: mean over seeds, bars from min to max.

    `series` holds (label, sizes, accuracies) with one list of per-seed accuracies
    (in [0, 1]) per size.
    """
    fig, ax = subplots(figsize=(7.5, 4.5))
    low, high = 100.0, 0.0
    for label, sizes, accs in series:
        if not sizes:
            continue
        order = np.argsort(sizes)
        x = np.asarray(sizes)[order]
        per_size = [100 * np.asarray(accs[i], np.float64) for i in order]
        mean = np.array([a.mean() for a in per_size])
        err = np.array([[m - a.min(), a.max() - m] for m, a in zip(mean, per_size, strict=True)]).T
        ax.errorbar(x, mean, yerr=err, fmt="-o", ms=4, capsize=3, label=label)
        low = min(low, float(mean.min()))
        high = max(high, float(max(a.max() for a in per_size)))
    ax.set_xscale("log")
    sizes = sorted({n for _, xs, _ in series for n in xs})
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.minorticks_off()
    ax.set_ylim(max(low - 1.0, 0.0), min(high + 0.5, 100.0))
    ax.set_xlabel("training images (before expansion)")
    ax.set_ylabel(ylabel)
    _finish(fig, ax, path, title)
