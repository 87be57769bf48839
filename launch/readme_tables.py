"""The README's tables of results, written from the small files the runs left in
results/ (never typed by hand), between markers such as

    <!-- autoencoders: results -->
    ...
    <!-- /autoencoders -->

    python -m launch.readme_tables                       # every table into README.md
    python -m launch.readme_tables --readme=/tmp/R.md --results=results --docs=/tmp

A table lists the finished runs there are; a topic with none says so. The expansion
study's tables also show a figure, drawn into --docs from the same files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from absl import flags

from experiments import common
from launch import results
from lib.core.errors import UserError, inside, storage_error

FLAGS = flags.FLAGS


def markers(name: str) -> tuple[str, str]:
    """The lines around block `name` ("ladder table", "autoencoders: results")."""
    return f"<!-- {name} -->\n", f"\n<!-- /{name.split(':')[0]} -->"


def put_block(markdown: Path, name: str, text: str) -> None:
    """Replace what lies between block `name`'s markers in `markdown` with `text`; blocks
    of one topic ("expanded: quick", "expanded: full") share their closing marker."""
    page = Path(markdown).read_text()
    Path(markdown).write_text(with_block(page, name, text, markdown))


def with_block(page: str, name: str, text: str, markdown: Path | str = "the page") -> str:
    """`page` with what lies between block `name`'s markers replaced by `text`."""
    first, last = markers(name)
    start = page.find(first)
    end = page.find(last, start) if start >= 0 else -1
    if end < 0:
        raise UserError(f"{markdown} has no '{first.strip()}' ... '{last.strip()}' markers")
    return page[: start + len(first)] + text + page[end:]


def finished(folder: Path) -> tuple[dict, dict] | None:
    """(summary, config) of the run in `folder` if it has finished, else None."""
    summary_file = Path(folder) / "summary.json"
    if not summary_file.exists():
        return None
    try:
        summary = json.loads(summary_file.read_text())
        if not summary.get("finished"):
            return None
        return summary, json.loads((Path(folder) / "config.json").read_text())
    except (ValueError, AttributeError) as e:
        raise UserError(
            f"{folder} holds a damaged summary.json or config.json ({e}); restore it from git "
            "or rerun that run"
        ) from None


def summaries(folder: Path) -> list[tuple[str, dict, dict]]:
    """(run name, summary, config) of each finished run under `folder`, by name."""
    runs = []
    for summary_file in sorted(Path(folder).glob("*/summary.json")):
        run = finished(summary_file.parent)
        if run is not None:
            runs.append((summary_file.parent.name, *run))
    return runs


def _time(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


# What each autoencoder reports, and how: (summary key, format).
REPORTED = {
    "pca": ("test_squared_error", "{:.2f}"),
    "logistic_pca": ("test_squared_error", "{:.2f}"),
    "deep": ("test_squared_error", "{:.2f}"),
    "deep_random": ("test_squared_error", "{:.2f}"),
    "codes2d": ("test_squared_error", "{:.2f}"),
    "denoising": ("test_squared_error", "{:.2f}"),
    "vae": ("test_negative_elbo", "{:.1f} nats"),
    "dbn_classifier": ("test_error", "{:.2%}"),
    "random_classifier": ("test_error", "{:.2%}"),
}


def autoencoders_table(folder: Path) -> str:
    runs = summaries(folder)
    if not runs:
        return "No run of the study has finished yet."
    lines = [
        "| run | model | net | ours | reference | epochs | wall time | device |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, summary, config in runs:
        key, form = REPORTED[config["model"]]
        reference = summary.get("reference")
        epochs = config["epochs"] if config["model"] != "pca" else "-"
        if config.get("pretrain_epochs"):
            epochs = f"{config['pretrain_epochs']} per RBM + {epochs}"
        lines.append(
            f"| {name} | `{config['model']}` | {'-'.join(map(str, config['layers']))} | "
            f"{form.format(summary[key])} | "
            f"{'-' if reference is None else form.format(reference)} | {epochs} | "
            f"{_time(summary['wall_time_s'])} | {summary['device']} |"
        )
    return "\n".join(lines)


def capsules_table(folder: Path) -> str:
    runs = summaries(folder)
    if not runs:
        return "No run of the table has finished yet."
    lines = [
        "| run | test error | paper | rotated / skewed accuracy | epochs | wall time | device |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, summary, _ in runs:
        paper = summary.get("paper_test_error_pct")
        lines.append(
            f"| {name} | {summary['test_error']:.2%} | "
            f"{'-' if paper is None else f'{paper:.2f}%'} | "
            f"{summary['test_rotated_accuracy']:.2%} / {summary['test_skewed_accuracy']:.2%} | "
            f"{summary['epochs']} | {_time(summary['wall_time_s'])} | {summary['device']} |"
        )
    return "\n".join(lines)


def activations_table(folder: Path) -> str:
    """The table the full activation study in `folder` wrote (`table.md`), once it has
    finished."""
    if finished(folder) is None:
        return "The full study has not finished yet."
    return (Path(folder) / "table.md").read_text().strip()


def activations_quick_table(folder: Path) -> str:
    """The quick activation study's own table (`table.md`), and what it ran."""
    run = finished(folder)
    if run is None:
        return "The quick study has not finished yet."
    summary, config = run
    seeds = summary["seeds"]
    return (
        activations_table(folder)
        + f"\n\n{summary['train_size']:,} training images, {summary['epochs']} epochs of "
        f"batch {config['batch_size']}, {len(seeds)} seed(s) ({', '.join(map(str, seeds))}), "
        f"validated on {summary['validation_size']:,} images and tested on "
        f"{summary['test_size']:,}; {_time(summary['train_time_s'])} of training on "
        f"{summary['device']}."
    )


def dropout_elastic_table(folder: Path) -> str:
    """Per setting (a folder of seed=<k> runs): each seed's run, and their vote."""
    from launch import vote  # launch.vote imports the experiments; only this table needs it

    tables = []
    for setting in sorted(p for p in Path(folder).glob("*") if p.is_dir()):
        runs = sorted(setting.glob("seed=*"), key=lambda p: int(p.name.removeprefix("seed=")))
        runs = [r for r in runs if (r / "summary.json").exists()]
        if runs:
            names = [f"{setting.name}/{run.name}" for run in runs]
            tables.append(vote.table(runs, vote.vote(runs), names))
    return "\n\n".join(tables) or "No run has finished yet."


def sweep_table(folder: Path) -> str:
    """The sweep in `folder` as `launch.results` ranks it, averaged over seeds when they were
    swept, and the training time its finished runs took on which devices."""
    try:
        runs, flag_names = results.load(str(folder))
    except FileNotFoundError:
        return "The sweep has not run yet."
    text = results.markdown_table(runs, flag_names)
    if "seed" in flag_names and len(flag_names) > 1:
        text += "\n\nAveraged over seeds:\n\n" + results.averaged_table(runs, flag_names, "seed")
    done = [run.summary for run in runs if run.status == results.DONE]
    if done:
        devices = ", ".join(sorted({summary["device"] for summary in done}))
        train_s = sum(summary["wall_time_s"] for summary in done)
        text += (
            f"\n\n{len(done)} of {len(runs)} runs finished; "
            f"{_time(train_s)} of training on {devices}."
        )
    return text


# Drawn into the docs folder from the same files as the tables, shown under them.
EXPANDED_FIGURE = "more_data_full.png"
EXPANDED_QUICK_FIGURE = "more_data_quick.png"


def _combined(parts: list[tuple[str, dict, dict]]) -> tuple[list, dict, dict]:
    """`parts` (name, summary, config) of one expansion study, and their combined
    (reports, config)."""
    from experiments import expanded_data  # defines the study's flags; only this needs it

    if not parts:
        return [], {}, {}
    reports, config = expanded_data.combine([(summary, config) for _, summary, config in parts])
    return parts, reports, config


def expanded_parts(folder: Path) -> tuple[list, dict, dict]:
    """The finished parts of the full expansion study under `folder` (one study each, say
    one expansion per session), and their combined (reports, config)."""
    return _combined(summaries(folder))


def expanded_quick(folder: Path) -> tuple[list, dict, dict]:
    """The quick expansion study in `folder` as a study of one part, once it has finished,
    and its (reports, config)."""
    run = finished(folder)
    return _combined([] if run is None else [(Path(folder).name, *run)])


def _took(parts: list, reports: dict, config: dict) -> str:
    """What the parts ran, and the time they took on which devices."""
    from experiments import expanded_data

    train_s = sum(summary["train_time_s"] for _, summary, _ in parts)
    devices = ", ".join(sorted({summary["device"] for _, summary, _ in parts}))
    return (
        f"{len(reports)} runs of {config['seeds']} seed(s), {expanded_data.epochs_note(config)}; "
        f"{_time(train_s)} of training on {devices}."
    )


def expanded_table(folder: Path) -> str:
    """The full expansion study, combined from its finished parts: final test accuracy,
    mean ± standard deviation over seeds, what the parts took, and the figure."""
    from experiments import expanded_data

    parts, reports, config = expanded_parts(folder)
    if not parts:
        return "No part of the full study has finished yet."
    return (
        expanded_data.table(reports, config)
        + f"\n\n{len(parts)} part(s) ({', '.join(name for name, _, _ in parts)}): "
        + _took(parts, reports, config)
        + f"\n\n![test accuracy against training images, the full study](docs/{EXPANDED_FIGURE})"
    )


def expanded_quick_table(folder: Path) -> str:
    """The quick expansion study: final test accuracy, what it took, and the figure."""
    from experiments import expanded_data

    parts, reports, config = expanded_quick(folder)
    if not parts:
        return "The quick study has not finished yet."
    return (
        expanded_data.table(reports, config)
        + "\n\n"
        + _took(parts, reports, config)
        + "\n\n![test accuracy against training images, quick CPU setting]"
        f"(docs/{EXPANDED_QUICK_FIGURE})"
    )


def _size_figure(study: tuple[list, dict, dict], path: Path) -> None:
    """A study's final test accuracy against training images, as `path`, if it has run."""
    from experiments import expanded_data

    parts, reports, config = study
    if parts:
        expanded_data.size_figure(reports, config, path)


def expanded_figure(folder: Path, docs: Path) -> None:
    """The combined parts' accuracy against training images, as docs/EXPANDED_FIGURE."""
    _size_figure(expanded_parts(folder), Path(docs) / EXPANDED_FIGURE)


def expanded_quick_figure(folder: Path, docs: Path) -> None:
    """The quick study's accuracy against training images, as docs/EXPANDED_QUICK_FIGURE."""
    _size_figure(expanded_quick(folder), Path(docs) / EXPANDED_QUICK_FIGURE)


TABLES: dict[str, tuple[str, Callable[[Path], str]]] = {
    "activations: full": ("activations/full", activations_table),
    "activations: quick": ("activations/quick", activations_quick_table),
    "autoencoders: results": ("autoencoders", autoencoders_table),
    "capsules: results": ("capsules", capsules_table),
    "dropout_elastic: results": ("dropout_elastic", dropout_elastic_table),
    "expanded: quick": ("expanded/quick", expanded_quick_table),
    "expanded: full": ("expanded/full", expanded_table),
    "sweep: mnist_lr_seed": ("sweep/mnist_lr_seed", sweep_table),
}
# The figures the tables show, each drawn from its topic's files into the docs folder.
FIGURES: dict[str, Callable[[Path, Path], None]] = {
    "expanded/full": expanded_figure,
    "expanded/quick": expanded_quick_figure,
}


def write_all(results: Path, readme: Path, docs: Path | None = None) -> None:
    """Every table into `readme`, and with `docs`, the figures the tables show. A `results`
    that is no folder is refused: its tables would all say that nothing has run. The page
    is written once, after every table is made: a table that fails leaves it as it was."""
    if not Path(results).is_dir():
        raise UserError(f"no folder {results}: name the folder of the runs' small files")
    page = Path(readme).read_text()
    for block, (topic, table) in TABLES.items():  # every table made before the page is written
        page = with_block(page, block, table(Path(results) / topic), readme)
    Path(readme).write_text(page)
    if docs is not None:
        for topic, figure in FIGURES.items():
            figure(Path(results) / topic, Path(docs))


def where_to_look(e: BaseException, named: dict[str, str]) -> UserError | None:
    """`storage_error` for `e`, suggesting the flag of `named` (flag: its file or folder)
    that holds the file `e` names, or none if none does."""
    file = getattr(e, "filename", None)
    holder = next((f for f, path in named.items() if file and inside(file, path)), None)
    return storage_error(e, holder)


def main() -> None:
    try:
        write_all(Path(FLAGS.results), Path(FLAGS.readme), Path(FLAGS.docs))
    except OSError as e:
        named = {"--readme": FLAGS.readme, "--docs": FLAGS.docs, "--results": FLAGS.results}
        raise where_to_look(e, named) or UserError(str(e)) from None
    print(f"wrote {', '.join(TABLES)} into {FLAGS.readme}")


if __name__ == "__main__":  # flags of the command only: launch.ladder imports put_block
    flags.DEFINE_string("results", "results", "Folder of the runs' small files, one per topic.")
    flags.DEFINE_string("readme", "README.md", "The markdown file whose tables are rewritten.")
    flags.DEFINE_string("docs", "docs", "Where the figures the tables show are drawn.")
    common.run_command(main)
