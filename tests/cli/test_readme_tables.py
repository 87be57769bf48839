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


def test_the_activation_table_is_the_finished_studys_own(tmp_path):
    folder = tmp_path / "activations"
    assert readme_tables.activations_table(folder) == "The full study has not finished yet."
    write_run(folder / "full", {"wall_time_s": 60.0}, {"preset": "full"})
    (folder / "full" / "table.md").write_text("| variant |\n| --- |\n| tanh |\n")
    assert readme_tables.activations_table(folder) == "| variant |\n| --- |\n| tanh |"


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
