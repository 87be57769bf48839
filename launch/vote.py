"""The majority vote of nets trained separately, from the test predictions each run kept.

    python -m launch.vote --runs='results/dropout_elastic/alpha8_cosine/seed=*'
    python -m launch.vote --runs=runs/a,runs/b,runs/c

Each run is a finished workdir of `experiments.mnist_convnet` or `experiments.capsules`
(or its small files kept under results/): its summary.json, config.json and
test_predictions.npy. Prints a Markdown table, a row per run (seed, best validation
accuracy, test accuracy at that epoch), then the members' mean and the vote's accuracy
on the test set, ties going to the smallest label, as in the ladder's ensemble row. A
run with `--ensemble` kept one row of predictions per member; each member votes. Runs
scored on other test sets (another dataset, split or `--test_size`) are refused, as is
a run whose config.json records no split (the order of its test set).
"""

from __future__ import annotations

import glob
import json
import statistics
from pathlib import Path

import numpy as np
from absl import flags

from experiments import common
from lib.core import data
from lib.core.errors import UserError
from lib.nielsen import train

FLAGS = flags.FLAGS
PREDICTIONS = "test_predictions.npy"


def test_labels(split: str, dataset: str = "mnist") -> np.ndarray:
    """The dataset's test labels in the order a run with this `--split` scored them."""
    return data.load(dataset, order=split).test.labels


def expand(patterns: list[str]) -> list[Path]:
    """The folders the patterns name, each glob expanded (sorted), in the order given."""
    folders = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise UserError(f"no folder matches {pattern!r}")
        folders += [Path(f) for f in found]
    return folders


def vote(folders: list[Path], labels=test_labels) -> dict:
    """The members' accuracies and their vote's: {"members": [...], "vote": accuracy,
    "dataset", "split"}. `labels(split, dataset)` gives the test labels."""
    if not folders:
        raise UserError("no runs to vote: name their folders")
    resolved = [Path(f).resolve() for f in folders]
    twice = sorted(
        {str(f) for f, r in zip(folders, resolved, strict=True) if resolved.count(r) > 1}
    )
    if twice:
        raise UserError(f"{', '.join(twice)} named more than once: each run votes once")
    members, configs = [], []
    for folder in folders:
        missing = [
            n for n in ("summary.json", "config.json", PREDICTIONS) if not (folder / n).exists()
        ]
        if missing:
            raise UserError(
                f"{folder} has no {' or '.join(missing)}: vote finished runs of "
                f"experiments.mnist_convnet or experiments.capsules (or the small files kept "
                f"of them)"
            )
        try:
            config = json.loads((folder / "config.json").read_text())
            finished = json.loads((folder / "summary.json").read_text()).get("finished", True)
        except ValueError as e:
            raise UserError(f"{folder} holds a damaged config.json or summary.json ({e})") from None
        if not finished:
            raise UserError(
                f"{folder} is a run stopped before its end (its summary says so): finish it "
                f"with its command, or leave it out"
            )
        if "split" not in config:
            raise UserError(
                f"{folder}/config.json records no split, so the order of its test predictions "
                f"cannot be told: vote runs that record it (experiments.mnist_convnet and "
                f"experiments.capsules do)"
            )
        predictions = np.load(folder / PREDICTIONS)
        members += list(predictions.reshape(-1, predictions.shape[-1]))
        configs.append(config)
    scored = {(c.get("dataset", "mnist"), c["split"]) for c in configs}
    if len(scored) > 1:
        which = ", ".join(f"{d} split={s}" for d, s in sorted(scored))
        raise UserError(f"the runs were scored on different test sets ({which}); vote runs of one")
    dataset, split = scored.pop()
    truth = np.asarray(labels(split, dataset))
    sizes = sorted({m.shape[0] for m in members})
    if sizes != [truth.shape[0]]:
        raise UserError(
            f"the runs kept {' or '.join(map(str, sizes))} test predictions, the {dataset} test "
            f"set has {truth.shape[0]} images: vote runs scored on the whole test set"
        )
    predictions = np.stack(members)
    scored = train.accuracies(predictions, truth)
    return {
        "members": scored["member_accuracy"],
        "vote": scored["accuracy"],
        "dataset": dataset,
        "split": split,
    }


def table(folders: list[Path], result: dict, names: list[str] | None = None) -> str:
    """A row per run (named by its folder, or by `names`), then the members' mean and
    the vote."""
    lines = [
        "| run | seed | best validation | test | epochs | wall time | device |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for folder, name in zip(folders, names or folders, strict=True):
        summary = json.loads((folder / "summary.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        lines.append(
            f"| {name} | {config.get('seed', '-')} | {summary['best_val_accuracy']:.2%} | "
            f"{summary['test_accuracy']:.2%} | {summary['epochs']} | "
            f"{summary['wall_time_s'] / 60:.0f} min | {summary['device']} |"
        )
    members = result["members"]
    if len(members) > 1:
        mean, spread = statistics.mean(members), statistics.stdev(members)
        lines.append(f"| members' mean ({len(members)}) | | | {mean:.2%} ± {spread:.2%} | | | |")
        lines.append(f"| majority vote of {len(members)} | | | {result['vote']:.2%} | | | |")
    return "\n".join(lines)


def main() -> None:
    folders = expand(FLAGS.runs)
    print(table(folders, vote(folders)))


if __name__ == "__main__":  # flags of the command only: launch.ladder imports vote
    flags.DEFINE_list("runs", None, "Finished runs' folders (globs allowed), comma-separated.")
    flags.mark_flag_as_required("runs")
    common.run_command(main)
