"""The README's tables of the new topics are what `launch.readme_tables` writes from
results/, and that writes each finished run's numbers."""

import json
import shutil
from pathlib import Path

import pytest

from launch import readme_tables
from lib.core.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_holds_the_tables_the_results_make(tmp_path):
    copy = tmp_path / "README.md"
    shutil.copyfile(ROOT / "README.md", copy)
    readme_tables.write_all(ROOT / "results", copy)
    assert copy.read_text() == (ROOT / "README.md").read_text(), (
        "run `python -m launch.readme_tables` to bring the README up to date"
    )


def write_run(folder: Path, summary: dict, config: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"finished": True, **summary}))
    (folder / "config.json").write_text(json.dumps(config))


def test_tables_show_each_finished_run(tmp_path):
    write_run(
        tmp_path / "autoencoders" / "pca",
        {"test_squared_error": 13.8661, "reference": 13.87, "wall_time_s": 42.0,
         "device": "cpu x1"},
        {"model": "pca", "layers": [30], "epochs": None, "pretrain_epochs": None},
    )  # fmt: skip
    write_run(
        tmp_path / "autoencoders" / "dbn",
        {"test_error": 0.0123, "reference": 0.012, "wall_time_s": 7200.0, "device": "gpu x1"},
        {"model": "dbn_classifier", "layers": [500, 500, 2000], "epochs": 50,
         "pretrain_epochs": 50},
    )  # fmt: skip
    (tmp_path / "autoencoders" / "unfinished").mkdir()
    table = readme_tables.autoencoders_table(tmp_path / "autoencoders")
    assert "| pca | `pca` | 30 | 13.87 | 13.87 | - | 42 s | cpu x1 |" in table
    assert "| dbn | `dbn_classifier` | 500-500-2000 | 1.23% | 1.20% | 50 per RBM + 50 | 2.0 h" in (
        table
    )
    assert "unfinished" not in table
    assert "No run" in readme_tables.capsules_table(tmp_path / "capsules")


def test_a_page_without_the_markers_is_named(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("no tables here\n")
    with pytest.raises(UserError, match="has no '<!-- capsules: results -->'"):
        readme_tables.put_block(page, "capsules: results", "| x |")


def test_blocks_of_one_topic_share_their_closing_marker(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- expanded: quick -->\nold quick\n<!-- /expanded -->\n"
        "<!-- expanded: full -->\nold full\n<!-- /expanded -->\n"
    )
    readme_tables.put_block(page, "expanded: full", "new full")
    readme_tables.put_block(page, "expanded: quick", "new quick")
    assert page.read_text() == (
        "<!-- expanded: quick -->\nnew quick\n<!-- /expanded -->\n"
        "<!-- expanded: full -->\nnew full\n<!-- /expanded -->\n"
    )
    page.write_text("<!-- /expanded -->\n<!-- expanded: full -->\nno end\n")
    with pytest.raises(UserError, match="has no '<!-- expanded: full -->'"):
        readme_tables.put_block(page, "expanded: full", "new full")


def test_the_activation_tables_are_the_finished_studies_own(tmp_path):
    full, quick = tmp_path / "activations" / "full", tmp_path / "activations" / "quick"
    assert readme_tables.activations_table(full) == "The full study has not finished yet."
    assert readme_tables.activations_quick_table(quick) == "The quick study has not finished yet."
    write_run(full, {"wall_time_s": 60.0}, {"preset": "full"})
    (full / "table.md").write_text("| variant |\n| --- |\n| tanh |\n")
    assert readme_tables.activations_table(full) == "| variant |\n| --- |\n| tanh |"
    summary = {"train_size": 5000, "validation_size": 2000, "test_size": 10000, "epochs": 8,
               "seeds": [0, 1], "train_time_s": 415.0, "device": "cpu x1"}  # fmt: skip
    write_run(quick, summary, {"preset": "quick", "batch_size": 10})
    (quick / "table.md").write_text("| variant |\n| --- |\n| sigmoid |\n")
    assert readme_tables.activations_quick_table(quick) == (
        "| variant |\n| --- |\n| sigmoid |\n\n"
        "5,000 training images, 8 epochs of batch 10, 2 seed(s) (0, 1), validated on 2,000 "
        "images and tested on 10,000; 7 min of training on cpu x1."
    )


def test_the_expansion_study_table_combines_its_parts_and_refuses_other_studies(tmp_path):
    from experiments import expanded_data
    from lib.core import config as config_lib

    def part(name, expansions, sizes, accuracy, **overrides):
        config = config_lib.as_dict(
            expanded_data.resolve(
                {"preset": "full", "expansions": expansions, "train_sizes": sizes, **overrides}
            )
        )
        runs = {
            f"{e}/n{n}": {
                "expansion": e,
                "train_size": n,
                "final_test": {"mean": accuracy, "std": 0.001},
                "final_test_per_seed": [accuracy - 0.001, accuracy, accuracy + 0.001],
            }
            for e in config["expansions"]
            for n in sizes
        }
        summary = {"train_time_s": 1800.0, "device": "cpu x2", "runs": runs}
        write_run(tmp_path / "full" / name, summary, config)

    part("a_fixed", ["fixed"], [1000], 0.97)
    part("b_none", ["none"], [1000, 50000], 0.95)
    text = readme_tables.expanded_table(tmp_path / "full")
    lines = text.splitlines()
    assert lines[0] == "| expansion | 1,000 | 50,000 |"
    assert lines[2] == "| no expansion | 95.00 ± 0.10% | 95.00 ± 0.10% |"
    assert lines[3] == "| one-pixel shifts (5x) | 97.00 ± 0.10% | - |"
    assert lines[-3] == (
        "2 part(s) (a_fixed, b_none): 3 runs of 3 seed(s), 60 epochs; 60 min of training on cpu x2."
    )
    assert lines[-1].endswith(f"(docs/{readme_tables.EXPANDED_FIGURE})")
    readme_tables.expanded_figure(tmp_path / "full", tmp_path)
    assert (tmp_path / readme_tables.EXPANDED_FIGURE).stat().st_size > 10_000
    part("c_elastic", ["elastic"], [1000], 0.97, elastic_alpha=8.0)
    with pytest.raises(UserError, match="different elastic_alpha"):
        readme_tables.expanded_table(tmp_path / "full")
    shutil.rmtree(tmp_path / "full" / "c_elastic")
    part("c_again", ["none"], [1000], 0.95)
    with pytest.raises(UserError, match="none/n1000 was run by two parts"):
        readme_tables.expanded_table(tmp_path / "full")
    assert "No part" in readme_tables.expanded_table(tmp_path / "nothing")


def test_the_quick_expansion_table_is_its_one_study_with_its_figure(tmp_path):
    from experiments import expanded_data
    from lib.core import config as config_lib

    folder = tmp_path / "quick"
    assert readme_tables.expanded_quick_table(folder) == "The quick study has not finished yet."
    readme_tables.expanded_quick_figure(folder, tmp_path)
    assert not (tmp_path / readme_tables.EXPANDED_QUICK_FIGURE).exists()
    config = config_lib.as_dict(expanded_data.resolve({"preset": "quick"}))
    runs = {
        f"{e}/n{n}": {
            "expansion": e,
            "train_size": n,
            "final_test": {"mean": 0.9 + i / 100, "std": 0.0},
            "final_test_per_seed": [0.9 + i / 100],
        }
        for i, e in enumerate(config["expansions"])
        for n in config["train_sizes"]
    }
    write_run(folder, {"train_time_s": 400.0, "device": "cpu x1", "runs": runs}, config)
    lines = readme_tables.expanded_quick_table(folder).splitlines()
    assert lines[:3] == [
        "| expansion | 500 | 1,000 | 2,000 | 5,000 |",
        "| --- | ---: | ---: | ---: | ---: |",
        "| no expansion | 90.00% | 90.00% | 90.00% | 90.00% |",
    ]
    assert lines[4] == "| elastic α=34, σ=4 | 92.00% | 92.00% | 92.00% | 92.00% |"
    assert lines[-3] == (
        "12 runs of 1 seed(s), ≥3 epochs and ≥2,500 steps; 7 min of training on cpu x1."
    )
    assert lines[-1].endswith(f"(docs/{readme_tables.EXPANDED_QUICK_FIGURE})")
    readme_tables.expanded_quick_figure(folder, tmp_path)
    assert (tmp_path / readme_tables.EXPANDED_QUICK_FIGURE).stat().st_size > 10_000


def test_the_readme_shows_the_kept_sweep_and_smoke_run():
    readme = (ROOT / "README.md").read_text()
    sweep = readme_tables.sweep_table(ROOT / "results" / "sweep" / "mnist_lr_seed")
    assert "4 of 4 runs finished" in sweep
    assert f"<!-- sweep: mnist_lr_seed -->\n{sweep}\n<!-- /sweep -->" in readme
    summary = json.loads((ROOT / "results" / "imagenet" / "smoke" / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == 300
    top1, seconds = f"{summary['final_top1']:.1%} top-1", f"{summary['wall_time_s']:.0f} s"
    row = f"| {top1} on 1,000 MNIST test images (300 steps, {seconds}; `results/imagenet/smoke/`) |"
    assert row in readme
    assert f"A CPU smoke run ({top1} on 1,000 MNIST test images after {seconds} of" in readme


def test_the_sweep_table_ranks_the_runs_and_averages_over_seeds(tmp_path):
    folder = tmp_path / "sweep"
    assert readme_tables.sweep_table(folder) == "The sweep has not run yet."
    names = ["lr=0.1,seed=0", "lr=0.1,seed=1", "lr=0.3,seed=0", "lr=0.3,seed=1"]
    record = {"module": "m", "fixed_flags": [], "runs": {}}
    for name in names:
        lr, seed = (part.split("=")[1] for part in name.split(","))
        record["runs"][name] = {"lr": lr, "seed": seed}
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps(record))
    for name, val in zip(names[:3], [0.9, 0.8, 0.95], strict=True):
        summary = {"best_val_accuracy": val, "test_accuracy": val - 0.01, "wall_time_s": 40.0,
                   "device": "cpu x1"}  # fmt: skip
        write_run(folder / name, summary, {})
    lines = readme_tables.sweep_table(folder).splitlines()
    assert lines[2:6] == [
        "| 1 | 0.3 | 0 | 0.9500 | 0.9400 | 40.0 | finished |",
        "| 2 | 0.1 | 0 | 0.9000 | 0.8900 | 40.0 | finished |",
        "| 3 | 0.1 | 1 | 0.8000 | 0.7900 | 40.0 | finished |",
        "| - | 0.3 | 1 | - | - | - | new |",
    ]
    assert lines[7] == "Averaged over seeds:"
    assert lines[11:13] == [
        "| 0.3 | 0.9500 | 0.9400 | 1 / 2 |",
        "| 0.1 | 0.8500 ± 0.0707 | 0.8400 ± 0.0707 | 2 / 2 |",
    ]
    assert lines[-1] == "3 of 4 runs finished; 2 min of training on cpu x1."


def test_a_storage_error_suggests_the_flag_that_names_the_file():
    import errno

    named = {"--readme": "README.md", "--docs": "docs", "--results": "results"}

    def line(path):
        error = OSError(errno.ENOSPC, "No space left on device", path)
        return str(readme_tables.where_to_look(error, named))

    assert line("README.md").endswith("free some space or choose another --readme")
    assert line("docs/more_data_full.png").endswith("choose another --docs")
    assert line("/tmp/elsewhere").endswith("; free some space")
    assert readme_tables.where_to_look(ValueError("no OSError"), named) is None


def test_every_kept_file_and_figure_the_readme_names_is_there():
    """The README cites results/ folders and files for its numbers, and shows figures from
    docs/: each one it names exists (a pattern such as seed=<k> stands for at least one)."""
    import glob
    import re

    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"`(results/[^`\s]*)`", readme))
    named |= set(re.findall(r"\]\((docs/[^)\s]+)\)", readme))
    assert len(named) > 20, "the README names its kept results and figures"
    missing = [
        path for path in sorted(named) if not glob.glob(str(ROOT / re.sub(r"<[^>]+>", "*", path)))
    ]
    assert not missing, f"the README names files that are not in the repository: {missing}"


def test_a_results_folder_that_is_not_there_leaves_the_readme_alone(tmp_path):
    page = tmp_path / "README.md"
    page.write_text("<!-- capsules: results -->\n| kept |\n<!-- /capsules -->\n")
    with pytest.raises(UserError, match=r"no folder .*nowhere: name the folder"):
        readme_tables.write_all(tmp_path / "nowhere", page)
    assert "| kept |" in page.read_text()


def test_a_page_missing_one_block_is_left_as_it_was(tmp_path):
    """Every block is made before the page is written: a missing marker changes nothing."""
    page = tmp_path / "README.md"
    whole = (ROOT / "README.md").read_text()
    page.write_text(whole.replace("<!-- /capsules -->", ""))
    before = page.read_text()
    (tmp_path / "results").mkdir()  # no runs: every table would change
    with pytest.raises(UserError, match=r"no '<!-- capsules: results -->' \.\.\. "):
        readme_tables.write_all(tmp_path / "results", page)
    assert page.read_text() == before


def test_a_damaged_summary_is_named_in_one_error(tmp_path):
    run = tmp_path / "capsules" / "r3"
    run.mkdir(parents=True)
    (run / "summary.json").write_text('{"finished": tr')
    with pytest.raises(UserError, match=r"r3 holds a damaged summary\.json or config\.json"):
        readme_tables.finished(run)
