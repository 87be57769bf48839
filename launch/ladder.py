"""Run the chapter-6 ladder and write its table: the book's accuracy beside ours.

    python -m launch.ladder --workdir=runs/ladder                       # all rungs (GPU)
    python -m launch.ladder --nets=shallow,conv1,conv2,relu --epochs=3 --workdir=runs/ladder-cpu
    python -m launch.ladder --nets=relu --seeds=0,1,2 --workdir=runs/ladder

Each (rung, seed) trains in WORKDIR/<rung>/seed=<seed> through
`experiments.mnist_convnet`; a finished one (summary.json present) is not run
again, an unfinished one resumes. Any of that module's flags given here
(--epochs, --batch_size, --train_size, ...) applies to every rung. Validation is
the book's: the last 10,000 of MNIST's original training images (`--split=tfds`
for the last 10,000 in TFDS's stored order). With `--results=DIR`, each finished
run's small files (summary.json, config.json, metrics.jsonl, test_predictions.npy)
are copied to DIR/<rung>/seed=<seed> as soon as it ends, to be kept with the code;
checkpoints stay in WORKDIR. The table goes to WORKDIR/ladder.md and stdout.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from experiments import mnist_convnet
from lib.nets import mnist as nets

FLAGS = flags.FLAGS
flags.DEFINE_list("nets", list(nets.NETS), "Rungs to run, in order.")
flags.DEFINE_list("seeds", ["0"], "Seeds per rung; the table shows mean and spread.")
flags.DEFINE_bool("table_only", False, "Only read finished runs and write the table.")
flags.DEFINE_string("results", None, "Copy each finished run's small files under this folder.")

RESULT_FILES = ("summary.json", "config.json", "metrics.jsonl", "test_predictions.npy")


def keep_results(workdir: Path, results: Path) -> None:
    """Copy a finished run's small files (no checkpoints) to `results`, summary.json last,
    so a folder with a summary holds a whole run."""
    results.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:
        if (workdir / name).exists():
            shutil.copyfile(workdir / name, results / f".{name}.tmp")
            (results / f".{name}.tmp").replace(results / name)


def table(rows: list[dict]) -> str:
    lines = [
        "| rung | book | ours: test accuracy | seeds | epochs | wall time / run | device |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        acc = 100 * np.asarray(r["test"])
        ours = f"{acc.mean():.2f}%"
        if len(acc) > 1:
            ours += f" ± {acc.std(ddof=1):.2f} (min {acc.min():.2f}, max {acc.max():.2f})"
        lines.append(
            f"| {r['net']} | {r['book']:.2f}% | {ours} | {len(acc)} | {r['epochs']} | "
            f"{np.mean(r['wall']) / 60:.1f} min | {r['device']} |"
        )
    return "\n".join(lines)


def collect(root: Path, names: list[str], seeds: list[int]) -> list[dict]:
    rows = []
    for name in names:
        summaries = []
        for seed in seeds:
            path = root / name / f"seed={seed}" / "summary.json"
            if path.exists():
                summaries.append(json.loads(path.read_text()))
        if summaries:
            rows.append(
                {
                    "net": name,
                    "book": nets.RUNGS[name].book_accuracy,
                    "test": [s["test_accuracy"] for s in summaries],
                    "epochs": summaries[0]["epochs"],
                    "wall": [s["wall_time_s"] for s in summaries],
                    "device": summaries[0]["device"],
                }
            )
    return rows


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save lines out of the way
    root = Path(FLAGS.workdir or "runs/ladder")
    given = {
        name: FLAGS[name].value
        for name in mnist_convnet.FLAG_NAMES
        if FLAGS[name].present and name not in ("net", "seed", "workdir")
    }
    seeds = [int(s) for s in FLAGS.seeds]
    unknown = [n for n in FLAGS.nets if n not in nets.RUNGS]
    if unknown:
        sys.exit(f"error: unknown rung(s) {unknown}; choose from {', '.join(nets.NETS)}")
    if not FLAGS.table_only:
        for name in FLAGS.nets:
            for seed in seeds:
                workdir = root / name / f"seed={seed}"
                kept = Path(FLAGS.results) / name / f"seed={seed}" if FLAGS.results else None
                if (workdir / "summary.json").exists():
                    if kept is not None and not (kept / "summary.json").exists():
                        keep_results(workdir, kept)
                    continue
                print(f"== {name}, seed {seed} -> {workdir}", flush=True)
                config = {**given, "net": name, "seed": seed}
                summary = mnist_convnet.run(config, str(workdir))
                if not summary["finished"]:
                    sys.exit(f"stopped; run the same command again to resume from {workdir}")
                if kept is not None:
                    keep_results(workdir, kept)
    text = table(collect(root, FLAGS.nets, seeds))
    root.mkdir(parents=True, exist_ok=True)
    (root / "ladder.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    app.run(main)
