"""The results of a sweep: results.csv, a ranked markdown table, and plots.

    python -m launch.results runs/lr_seed

reads the workdirs of the sweep in runs/lr_seed and writes there

    results.csv                   one row per run: swept flags, status, the summary's numbers
    results.md                    the table printed here, best run first
    plots/<metric>_vs_<flag>.png  the ranking metric against each swept flag

Runs are ranked by validation accuracy (`best_val_accuracy`). The test accuracy
(measured at the epoch of best validation accuracy) is shown beside it and never
used to rank: choosing by test accuracy would make it a second validation set.
When `seed` is swept, a second table averages over seeds (--average_over).
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from launch.cli import OneLineParser, UsageError
from lib.core.errors import storage_error

SWEEP_RECORD = "sweep.json"
SUMMARY = "summary.json"
FAILED = "failed.json"
LOG = "log.txt"
VALIDATION = "best_val_accuracy"
TEST = "test_accuracy"

DONE, FAILED_STATUS, UNFINISHED, NEW = "finished", "failed", "unfinished", "new"


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_status(workdir: str) -> str:
    if os.path.exists(os.path.join(workdir, SUMMARY)):
        return DONE
    if os.path.exists(os.path.join(workdir, FAILED)):
        return FAILED_STATUS
    return UNFINISHED if os.path.isdir(workdir) else NEW


def check_metric(metric: str) -> None:
    if "test" in metric.lower():
        raise UsageError(
            f"--metric={metric}: ranking by a test metric picks the model on the test set; "
            f"rank by a validation metric such as {VALIDATION}"
        )


def format_number(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


@dataclass
class Run:
    name: str
    flags: dict[str, str]
    status: str
    summary: dict = field(default_factory=dict)
    error: str = ""

    def metric(self, name: str) -> float | None:
        value = self.summary.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None


def load(sweep_dir: str) -> tuple[list[Run], list[str]]:
    """The runs of a sweep, in the order they were planned, and the swept flag names."""
    record = read_json(os.path.join(sweep_dir, SWEEP_RECORD))
    if record is None:
        raise FileNotFoundError(f"{sweep_dir} holds no {SWEEP_RECORD}: is it a sweep directory?")
    runs, flag_names = [], []
    for name, flags in record["runs"].items():
        for flag in flags:
            if flag not in flag_names:
                flag_names.append(flag)
        workdir = os.path.join(sweep_dir, name)
        status = run_status(workdir)
        summary = read_json(os.path.join(workdir, SUMMARY)) or {}
        failure = read_json(os.path.join(workdir, FAILED)) or {}
        error = failure.get("error", "") if status == FAILED_STATUS else ""
        runs.append(Run(name, flags, status, summary, error))
    return runs, flag_names


def rank(runs: Sequence[Run], metric: str = VALIDATION) -> list[Run]:
    """Finished runs by `metric`, best first (ties by name); then the rest, as they came."""
    check_metric(metric)
    scored = [r for r in runs if r.status == DONE and r.metric(metric) is not None]
    scored.sort(key=lambda r: (-r.metric(metric), r.name))
    return scored + [r for r in runs if r not in scored]


def _cell(text: str) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 90 else text[:87] + "..."


def _status_cell(run: Run) -> str:
    return f"failed: {run.error}" if run.status == FAILED_STATUS else run.status


def markdown_table(runs: Sequence[Run], flag_names: Sequence[str], metric: str = VALIDATION) -> str:
    ranked = rank(runs, metric)
    header = ["rank", *flag_names, metric, TEST, "wall_time_s", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for position, run in enumerate(ranked, 1):
        ranked_here = run.status == DONE and run.metric(metric) is not None
        row = [
            str(position) if ranked_here else "-",
            *(run.flags.get(name, "") for name in flag_names),
            format_number(run.summary.get(metric)),
            format_number(run.summary.get(TEST)),
            format_number(run.summary.get("wall_time_s"), 1),
            _status_cell(run),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format_number(values[0])
    return f"{format_number(statistics.mean(values))} ± {format_number(statistics.stdev(values))}"


def averaged_table(
    runs: Sequence[Run], flag_names: Sequence[str], over: str, metric: str = VALIDATION
) -> str:
    """Mean ± std over the values of flag `over` (the seeds), ranked by the mean of `metric`."""
    check_metric(metric)
    keys = [name for name in flag_names if name != over]
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.flags.get(k, "") for k in keys), []).append(run)

    def values(group, name):
        return [r.metric(name) for r in group if r.status == DONE and r.metric(name) is not None]

    order = sorted(
        groups,
        key=lambda k: (
            not values(groups[k], metric),
            -statistics.mean(values(groups[k], metric) or [0.0]),
            k,
        ),
    )
    header = [*keys, f"mean {metric}", f"mean {TEST}", f"finished / runs over {over}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in order:
        group = groups[key]
        row = [
            *key,
            _mean_std(values(group, metric)),
            _mean_std(values(group, TEST)),
            f"{sum(r.status == DONE for r in group)} / {len(group)}",
        ]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def write_csv(path: str, runs: Sequence[Run], flag_names: Sequence[str], metric: str) -> None:
    first = [metric, TEST, "wall_time_s", "device"]
    extra = sorted(
        {
            k
            for r in runs
            for k, v in r.summary.items()
            if k not in first and isinstance(v, str | int | float | bool)
        }
    )
    ranked = rank(runs, metric)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "run", "status", *flag_names, *first, *extra, "error"])
        for position, run in enumerate(ranked, 1):
            ranked_here = run.status == DONE and run.metric(metric) is not None
            writer.writerow(
                [
                    position if ranked_here else "",
                    run.name,
                    run.status,
                    *(run.flags.get(name, "") for name in flag_names),
                    *(run.summary.get(k, "") for k in (*first, *extra)),
                    run.error,
                ]
            )


def _as_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def plot(runs: Sequence[Run], flag_names: Sequence[str], metric: str, out_dir: str) -> list[str]:
    """One PNG per swept flag: each finished run's metric at its value of the flag."""
    from lib.core.plots import subplots  # here, not at the top: matplotlib is slow to import

    done = [r for r in runs if r.status == DONE and r.metric(metric) is not None]
    if not done:
        return []
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name in flag_names:
        texts = [r.flags.get(name, "") for r in done]
        numbers = [_as_number(t) for t in texts]
        fig, ax = subplots(figsize=(5, 3.5))
        ys = [r.metric(metric) for r in done]
        if all(n is not None for n in numbers):
            ax.scatter(numbers, ys, alpha=0.7)
            means = {}
            for x, y in zip(numbers, ys, strict=True):
                means.setdefault(x, []).append(y)
            xs = sorted(means)
            ax.plot(xs, [statistics.mean(means[x]) for x in xs], "-", alpha=0.5, label="mean")
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
        else:
            categories = list(dict.fromkeys(texts))
            ax.scatter([categories.index(t) for t in texts], ys, alpha=0.7)
            ax.set_xticks(range(len(categories)), categories, rotation=30)
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{metric}_vs_{name}.png")
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def report(
    sweep_dir: str, metric: str = VALIDATION, average_over: str | None = "seed", plots: bool = True
) -> str:
    """Writes results.csv, results.md and the plots; returns the markdown it wrote."""
    runs, flag_names = load(sweep_dir)
    done = [r for r in runs if r.status == DONE]
    if done and all(r.metric(metric) is None for r in done):  # a misspelt --metric
        numbers = sorted(
            k for r in done for k in r.summary if r.metric(k) is not None and "test" not in k
        )
        raise UsageError(
            f"--metric={metric}: no finished run's summary has it; choose one of "
            f"{', '.join(dict.fromkeys(numbers))}"
        )
    write_csv(os.path.join(sweep_dir, "results.csv"), runs, flag_names, metric)
    text = markdown_table(runs, flag_names, metric)
    groups = {tuple(v for k, v in r.flags.items() if k != average_over) for r in runs}
    if average_over in flag_names and len(flag_names) > 1 and len(groups) < len(runs):
        text += f"\n\nAveraged over {average_over}:\n\n"
        text += averaged_table(runs, flag_names, average_over, metric)
    with open(os.path.join(sweep_dir, "results.md"), "w") as f:
        f.write(text + "\n")
    if plots:
        plot(runs, flag_names, metric, os.path.join(sweep_dir, "plots"))
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m launch.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("--metric", default=VALIDATION, help="what ranks the runs (validation)")
    parser.add_argument("--average_over", default="seed", help="flag to average over ('' for none)")
    parser.add_argument("--no_plots", action="store_true")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        check_metric(args.metric)
        print(report(args.sweep_dir, args.metric, args.average_over or None, not args.no_plots))
    except (UsageError, FileNotFoundError) as e:
        print(f"results: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        error = storage_error(e, None)
        if error is None:
            raise
        print(f"results: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
