"""Run the chapter-6 ladder and write its table: the book's accuracy beside ours.

    python -m launch.ladder --workdir=runs/ladder                       # all rungs (GPU)
    python -m launch.ladder --nets=shallow,conv1,conv2,relu --epochs=3 --workdir=runs/ladder-cpu
    python -m launch.ladder --nets=relu --seeds=0,1,2 --workdir=runs/ladder
    python -m launch.ladder --table_only --workdir=results/ladder --figure=docs/ladder.png \
        --readme=README.md

Each (rung, seed) trains in WORKDIR/<rung>/seed=<seed> through
`experiments.mnist_convnet`; a finished one (summary.json present) made with the
settings given now is not run again, an unfinished one resumes, and a finished one
made with other settings goes on to more --epochs (under the constant schedule) or is
refused. Any of that module's flags given here (--epochs, --batch_size,
--train_size, ...) applies to every rung. Validation is
the book's: the last 10,000 of MNIST's original training images (`--split=tfds`
for the last 10,000 in TFDS's stored order). With `--results=DIR`, each finished
run's small files (summary.json, config.json, metrics.jsonl, test_predictions.npy)
are copied to DIR/<rung>/seed=<seed> as soon as it ends, to be kept with the code;
checkpoints stay in WORKDIR. The table goes to WORKDIR/ladder.md and stdout.

`--dataset=fashion_mnist` (or any TFDS image classification dataset of small images)
climbs the same ladder on other images, in runs/ladder-<dataset> by default; the
book's column is then empty, its numbers being MNIST's.

The table reads only the finished runs under WORKDIR (every seed it finds, so
`--table_only --workdir=DIR` tables what `--results=DIR` kept): per rung the mean
test accuracy ± its standard deviation over seeds, with min and max. The book's
ensemble was five dropout nets trained separately, then a vote: the `ensemble`
row trains nothing of its own; it is the majority vote of the finished `dropout`
runs' kept test predictions (ties to the smallest label), beside those members'
mean accuracy. Rungs with no finished run show "not run yet".
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from experiments import common, mnist_convnet
from launch import readme_tables, vote
from lib.core import config as config_lib
from lib.core import metrics, plots
from lib.core.errors import UserError
from lib.core.stop import GracefulStop
from lib.nielsen import nets, train

FLAGS = flags.FLAGS
flags.DEFINE_list("nets", list(nets.NETS), "Rungs to run, in order.")
flags.DEFINE_list("seeds", ["0"], "Seeds per rung; the table shows mean and spread.")
flags.DEFINE_bool("table_only", False, "Only read finished runs and write the table.")
flags.DEFINE_string("results", None, "Copy each finished run's small files under this folder.")
flags.DEFINE_string("figure", None, "Also draw the table as a PNG here (e.g. docs/ladder.png).")
flags.DEFINE_string(
    "readme", None, "Also put the table in this Markdown file, between its ladder-table markers."
)

MARKERS = readme_tables.markers("ladder table")

# summary.json last: a kept folder with the run's summary holds the whole run
RESULT_FILES = ("config.json", "metrics.jsonl", "test_predictions.npy", "summary.json")
VOTERS = "dropout"  # the ensemble row is the vote of this rung's finished seeds


def keep_results(workdir: Path, results: Path) -> None:
    """Copy a finished run's small files (no checkpoints) to `results`, summary.json last,
    so a folder with a summary holds a whole run."""
    results.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:
        if (workdir / name).exists():
            shutil.copyfile(workdir / name, results / f".{name}.tmp")
            (results / f".{name}.tmp").replace(results / name)


def check_kept(results: Path, config: dict) -> None:
    """UserError if `results` keeps a run with other settings than `config` (the resolved
    settings of the run that would be kept there): keeping this one would replace it. The
    same run gone on for more epochs may replace it."""
    path = results / "config.json"
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot read {path} ({e}); keep the runs under another --results"
        ) from None
    now = json.loads(json.dumps(config, default=str))
    ignore = {"workdir", *common.PROGRAM_DEFAULTS}
    names = sorted(saved.keys() & now.keys())
    differ, _ = metrics.setting_changes(saved, now, names, ignore, may_grow={"epochs"})
    changed = [f"{k}={before!r} (this run {after!r})" for k, before, after in differ]
    if changed:
        raise UserError(
            f"{results} keeps a run with other settings ({', '.join(changed)}); keep these "
            "runs under another --results, or remove that folder"
        )


def kept_already(workdir: Path, results: Path) -> bool:
    """Whether `results` holds the whole of the finished run in `workdir`: its summary.json,
    copied last, is the workdir's."""
    kept = results / "summary.json"
    return kept.exists() and kept.read_bytes() == (workdir / "summary.json").read_bytes()


def finished(root: Path, name: str) -> list[tuple[int, Path]]:
    """(seed, folder) of every finished run of rung `name` under root, by seed."""
    runs = []
    for folder in (root / name).glob("seed=*"):
        seed = folder.name.removeprefix("seed=")
        if seed.isdigit() and (folder / "summary.json").exists():
            runs.append((int(seed), folder))
    return sorted(runs)


def done(workdir: Path, config: dict) -> bool:
    """Whether workdir holds a finished run (summary.json) whose config.json records the
    settings that `mnist_convnet.run(config, workdir)` would train with now. A run with
    other settings is that function's to go on with (more epochs, constant schedule) or
    to refuse."""
    if not (workdir / "summary.json").exists():
        return False
    now = config_lib.as_dict(mnist_convnet.resolve({**config, "workdir": str(workdir)}))
    try:  # nothing may grow here, so nothing in the workdir changes
        metrics.accept_resume(workdir, now, ignore={"workdir", *common.PROGRAM_DEFAULTS})
    except UserError:
        return False
    return True


def _dataset(summaries: list[dict]) -> str:
    """The one dataset of a rung's runs (runs before --dataset were MNIST's)."""
    names = {s.get("dataset", "mnist") for s in summaries}
    if len(names) > 1:
        raise UserError(f"runs of one rung on several datasets: {', '.join(sorted(names))}")
    return names.pop() if names else "mnist"


def rung_row(name: str, runs: list[tuple[int, Path]]) -> dict:
    summaries = [json.loads((folder / "summary.json").read_text()) for _, folder in runs]
    dataset = _dataset(summaries)
    return {
        "net": name,
        "dataset": dataset,
        "book": nets.RUNGS[name].book_accuracy if dataset == "mnist" else None,
        "seeds": [seed for seed, _ in runs],
        "test": [s["test_accuracy"] for s in summaries],
        "epochs": sorted({s["epochs"] for s in summaries}),
        "wall": [s["wall_time_s"] for s in summaries],
        "device": sorted({s["device"] for s in summaries}),
    }


def ensemble_row(runs: list[tuple[int, Path]], labels=vote.test_labels) -> dict:
    """The vote of the finished dropout runs that kept their test predictions, as the book
    did (five nets trained separately), with the members' own accuracies beside it."""
    voters = [(seed, f) for seed, f in runs if (f / vote.PREDICTIONS).exists()]
    row = rung_row(VOTERS, voters)
    row["net"] = "ensemble"
    row["book"] = nets.RUNGS["ensemble"].book_accuracy if row["dataset"] == "mnist" else None
    row["members"], row["wall"] = row.pop("test"), []
    if voters:
        row["test"] = [vote.vote([f for _, f in voters], labels)["vote"]]
    else:
        row["test"] = []
    return row


def collect(root: Path, names: list[str]) -> list[dict]:
    """A row per rung in `names` from the finished runs under root (every seed found)."""
    rows = []
    for name in names:
        if name == "ensemble":
            rows.append(ensemble_row(finished(root, VOTERS)))
        else:
            rows.append(rung_row(name, finished(root, name)))
    return rows


def put_table(markdown: Path, text: str) -> None:
    """Replace the ladder's table in `markdown` with `text`."""
    readme_tables.put_block(markdown, "ladder table", text)


def wall_cell(walls: list[float]) -> str:
    """The runs' mean wall time in minutes, or their range where they differ by more than
    a fifth (runs of one rung made on other machines or paths)."""
    if not walls:
        return "-"
    low, high = min(walls) / 60, max(walls) / 60
    if high > 1.2 * low:
        return f"{low:.1f}-{high:.1f} min"
    return f"{np.mean(walls) / 60:.1f} min"


def table(rows: list[dict]) -> str:
    lines = [
        "| rung | book | ours: test accuracy | seeds | epochs | wall time / run | device |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        acc = 100 * np.asarray(r["test"])
        if not len(acc):
            ours = "not run yet"
        elif "members" in r:
            members = 100 * np.asarray(r["members"])
            ours = f"{acc[0]:.2f}% (vote; members' mean {members.mean():.2f}%)"
        else:
            ours = f"{acc.mean():.2f}%"
            if len(acc) > 1:
                ours += f" ± {acc.std(ddof=1):.2f} (min {acc.min():.2f}, max {acc.max():.2f})"
        seeds = ",".join(map(str, r["seeds"])) or "-"
        epochs = "/".join(map(str, r["epochs"])) or "-"
        wall = wall_cell(r["wall"])
        device = ", ".join(r["device"]) or "-"
        book = "-" if r["book"] is None else f"{r['book']:.2f}%"
        lines.append(f"| {r['net']} | {book} | {ours} | {seeds} | {epochs} | {wall} | {device} |")
    return "\n".join(lines)


def main(argv):
    del argv  # common.parse_flags refuses positional arguments
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save lines out of the way
    dataset = FLAGS.dataset.replace("/", "_")
    root = Path(FLAGS.workdir or ("runs/ladder" + ("" if dataset == "mnist" else f"-{dataset}")))
    try:
        for flag in ("workdir", "results"):
            if FLAGS[flag].value:
                metrics.refuse_url(FLAGS[flag].value, f"--{flag}")
        ladder(root)
    except (UserError, train.DivergedError) as e:
        common.fail(str(e))
    except OSError as e:
        common.fail_on_storage_error(e, "--workdir", root)


def ladder(root: Path) -> None:
    """Train the missing runs of --nets x --seeds under `root` (unless --table_only), then
    write the table from every finished run there."""
    given = common.given_settings(mnist_convnet.SETTINGS)
    given = {k: v for k, v in given.items() if k not in ("net", "seed", "workdir")}
    try:
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError:
        raise UserError(f"--seeds must be integers, got {','.join(FLAGS.seeds)}") from None
    unknown = [n for n in FLAGS.nets if n not in nets.RUNGS]
    if unknown:
        raise UserError(f"unknown rung(s) {unknown}; choose from {', '.join(nets.NETS)}")
    for name in FLAGS.nets:  # every setting checked before any run starts
        mnist_convnet.resolve({**given, "net": name, "seed": min(seeds, default=0)})
    if FLAGS.figure and Path(FLAGS.figure).is_dir():
        raise UserError(f"--figure={FLAGS.figure} is a folder; name a PNG file")
    if FLAGS.table_only and not root.is_dir():  # its table would say that nothing has run
        raise UserError(f"no folder {root}: --table_only tables the finished runs in --workdir")
    if not FLAGS.table_only:
        trained = [n for n in FLAGS.nets if n != "ensemble"]
        if "ensemble" in FLAGS.nets and VOTERS not in trained:
            trained.append(VOTERS)  # the ensemble is the vote of these runs
        if FLAGS.results and Path(FLAGS.results).exists() and not Path(FLAGS.results).is_dir():
            raise UserError(f"--results={FLAGS.results} is a file; name a folder to keep runs in")
        for name in trained if FLAGS.results else ():  # before any run starts
            for seed in seeds:
                workdir = str(root / name / f"seed={seed}")
                config = {**given, "net": name, "seed": seed, "workdir": workdir}
                now = config_lib.as_dict(mnist_convnet.resolve(config))
                check_kept(Path(FLAGS.results) / name / f"seed={seed}", now)
        # Each run's own stop passes a signal that came too late to stop it on to this one.
        with GracefulStop() as stop:
            for name in trained:
                for seed in seeds:
                    workdir = root / name / f"seed={seed}"
                    kept = Path(FLAGS.results) / name / f"seed={seed}" if FLAGS.results else None
                    config = {**given, "net": name, "seed": seed}
                    if done(workdir, config):
                        if kept is not None and not kept_already(workdir, kept):
                            keep_results(workdir, kept)
                        continue
                    if stop():
                        print("stopped; run the same command again to go on", flush=True)
                        sys.exit(common.STOPPED)
                    print(f"== {name}, seed {seed} -> {workdir}", flush=True)
                    summary = mnist_convnet.run(config, str(workdir))
                    if not summary["finished"]:
                        print(f"stopped; run the same command again to resume from {workdir}")
                        sys.exit(common.STOPPED)
                    if kept is not None:
                        keep_results(workdir, kept)
    rows = collect(root, FLAGS.nets)
    text = table(rows)
    if FLAGS.readme:
        put_table(Path(FLAGS.readme), text)
    root.mkdir(parents=True, exist_ok=True)
    (root / "ladder.md").write_text(text + "\n")
    if FLAGS.figure:
        plots.ladder(rows, FLAGS.figure)
    print(text)


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
