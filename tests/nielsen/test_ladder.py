"""The ladder's table from kept result files: mean and spread over seeds, the ensemble as
the vote of separately trained dropout runs, and the README's table matching the files."""

import json
from pathlib import Path

import numpy as np
import pytest
from commands import ROOT, run_module

from launch import ladder
from lib.core import data
from lib.nielsen import nets


def fake_run(folder: Path, accuracy: float, predictions=None, split="book", wall=60.0):
    folder.mkdir(parents=True)
    summary = {"test_accuracy": accuracy, "epochs": 40, "wall_time_s": wall, "device": "cpu x1"}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.json").write_text(json.dumps({"split": split}))
    if predictions is not None:
        np.save(folder / "test_predictions.npy", predictions.astype(np.uint8))


def test_the_table_reports_mean_spread_and_rungs_not_run(tmp_path):
    for seed, acc in enumerate([0.9780, 0.9790, 0.9800]):
        fake_run(tmp_path / "shallow" / f"seed={seed}", acc, wall=120.0)
    (tmp_path / "conv1" / "seed=0").mkdir(parents=True)  # unfinished: no summary
    for seed, wall in enumerate([1200.0, 3990.0]):  # made on machines of different speeds
        fake_run(tmp_path / "relu" / f"seed={seed}", 0.99, wall=wall)
    text = ladder.table(ladder.collect(tmp_path, ["shallow", "conv1", "relu"]))
    lines = text.splitlines()
    assert lines[2] == (
        "| shallow | 97.80% | 97.90% ± 0.10 (min 97.80, max 98.00) | 0,1,2 | 40 | 2.0 min "
        "| cpu x1 |"
    )
    assert lines[3] == "| conv1 | 98.78% | not run yet | - | - | - | - |"
    assert "| 0,1 | 40 | 20.0-66.5 min | cpu x1 |" in lines[4]


def test_the_ensemble_is_the_vote_of_the_dropout_runs(tmp_path):
    truth = np.arange(100) % 10
    for seed in range(5):  # each member wrong on its own 10 examples: the vote is never wrong
        guess = truth.copy()
        wrong = np.arange(10 * seed, 10 * seed + 10)
        guess[wrong] = (truth[wrong] + 1) % 10
        fake_run(tmp_path / "dropout" / f"seed={seed}", float((guess == truth).mean()), guess)
    row = ladder.ensemble_row(
        ladder.finished(tmp_path, "dropout"), labels=lambda split, dataset: truth
    )
    assert row["test"] == [1.0] and row["seeds"] == [0, 1, 2, 3, 4]
    assert np.mean(row["members"]) == pytest.approx(0.9)
    assert "| ensemble | 99.67% | 100.00% (vote; members' mean 90.00%) | 0,1,2,3,4 |" in (
        ladder.table([row])
    )


def test_runs_on_different_splits_are_not_voted_together(tmp_path):
    guess = np.zeros(100)
    fake_run(tmp_path / "dropout" / "seed=0", 0.1, guess, split="book")
    fake_run(tmp_path / "dropout" / "seed=1", 0.1, guess, split="tfds")
    done = run_module("launch.ladder", "--table_only", f"--workdir={tmp_path}")
    assert done.returncode != 0
    assert "different test sets" in done.stderr.strip().splitlines()[-1]


def test_table_only_votes_with_the_real_test_labels_and_draws_the_figure(tmp_path):
    truth = data.mnist(order="book").test.labels
    wrong = truth.copy()
    wrong[:100] = (truth[:100] + 1) % 10
    fake_run(tmp_path / "dropout" / "seed=0", 0.99, wrong)
    fake_run(tmp_path / "dropout" / "seed=1", 1.0, truth)
    figure = tmp_path / "ladder.png"
    done = run_module(
        "launch.ladder", "--table_only", f"--workdir={tmp_path}", f"--figure={figure}"
    )
    assert done.returncode == 0, done.stderr
    # two members: the tie on the first 100 goes to the smaller label, right or wrong
    right = (np.minimum(wrong[:100], truth[:100]) == truth[:100]).sum()
    vote = 100 * (9900 + right) / 10_000
    assert f"| ensemble | 99.67% | {vote:.2f}% (vote; members' mean 99.50%) | 0,1 |" in done.stdout
    assert figure.stat().st_size > 10_000
    assert (tmp_path / "ladder.md").read_text().strip() == done.stdout.strip()


def test_the_readme_table_is_the_kept_results_table():
    readme = (ROOT / "README.md").read_text()
    expected = ladder.table(ladder.collect(ROOT / "results" / "ladder", list(nets.NETS)))
    assert ladder.MARKERS[0] + expected + ladder.MARKERS[1] in readme, (
        "regenerate: python -m launch.ladder --table_only --workdir=results/ladder "
        "--figure=docs/ladder.png --readme=README.md"
    )


def test_the_readme_gets_the_table_between_its_markers_or_a_clear_error(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{ladder.MARKERS[0]}old\n{ladder.MARKERS[1]}\nend\n")
    ladder.put_table(page, "| new |")
    assert page.read_text() == f"intro\n{ladder.MARKERS[0]}| new |{ladder.MARKERS[1]}\nend\n"
    page.write_text("no markers\n")
    with pytest.raises(ladder.UserError, match="markers"):
        ladder.put_table(page, "| new |")


def test_short_runs_train_as_before_settings_were_declared(tmp_path):
    """Two short runs (conv2 and the dropout rung, 300 images, one epoch, seed 0) end with
    the parameters that the code of commit 8da9180 gave them, before each experiment was
    declared by its SETTINGS: tests/data/short_runs_reference.json holds, per parameter,
    its sum, its sum of squares and its first six values, as that code computed them."""
    import jax

    from experiments import mnist_convnet
    from experiments.adversarial import Target

    reference = json.loads((ROOT / "tests" / "data" / "short_runs_reference.json").read_text())
    seen = set()
    for net in ("conv2", "dropout"):
        workdir = tmp_path / net
        config = {"net": net, "train_size": 300, "epochs": 1, "seed": 0, "validation_size": 100,
                  "test_size": 100}  # fmt: skip
        mnist_convnet.run(config, str(workdir), verbose=False)
        params = Target(workdir).params
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            name = net + jax.tree_util.keystr(path)
            value, want = np.asarray(leaf, np.float64).ravel(), reference[name]
            np.testing.assert_allclose(value[:6], want["first"], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(value.sum(), want["sum"], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose((value**2).sum(), want["sum_sq"], rtol=1e-5)
            seen.add(name)
    assert seen == set(reference)


def test_a_copy_killed_midway_leaves_no_summary_and_is_redone(tmp_path, monkeypatch):
    run, kept = tmp_path / "run", tmp_path / "kept"
    fake_run(run, 0.9, np.zeros(100))
    copy = ladder.shutil.copyfile

    def killed_after_one_file(source, target):
        monkeypatch.setattr(ladder.shutil, "copyfile", broken)
        return copy(source, target)

    def broken(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(ladder.shutil, "copyfile", killed_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        ladder.keep_results(run, kept)
    assert not (kept / "summary.json").exists()
    assert not ladder.kept_already(run, kept)
    monkeypatch.setattr(ladder.shutil, "copyfile", copy)
    ladder.keep_results(run, kept)
    assert ladder.kept_already(run, kept)
    # the run went on (more epochs): its new summary differs from the kept one
    (run / "summary.json").write_text(json.dumps({"test_accuracy": 0.95, "epochs": 60}))
    assert not ladder.kept_already(run, kept)


def test_a_cloud_storage_folder_is_refused_in_one_line(tmp_path):
    done = run_module(
        "launch.ladder", "--table_only", f"--workdir={tmp_path}", "--results=gs://bucket/kept"
    )
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--results=gs://bucket/kept: cloud storage paths are not supported" in done.stderr


def test_a_table_of_a_workdir_that_is_not_there_leaves_the_readme_alone(tmp_path):
    page = tmp_path / "README.md"
    page.write_text("<!-- ladder table -->\n| kept |\n<!-- /ladder table -->\n")
    done = run_module(
        "launch.ladder", "--table_only", f"--workdir={tmp_path}/nowhere", f"--readme={page}"
    )
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"no folder {tmp_path}/nowhere: --table_only tables the finished runs" in done.stderr
    assert "| kept |" in page.read_text()


def test_a_kept_run_with_other_settings_is_not_replaced(tmp_path):
    """--results keeping the 60-epoch shallow run: a 1-epoch run on 200 images would
    replace it; the ladder refuses before training, in one line, and leaves it alone."""
    kept = tmp_path / "kept" / "shallow" / "seed=0"
    kept.mkdir(parents=True)
    for name in ("config.json", "summary.json"):
        (kept / name).write_bytes((ROOT / "results/ladder/shallow/seed=0" / name).read_bytes())
    before = (kept / "summary.json").read_bytes()
    done = run_module(
        "launch.ladder",
        "--nets=shallow",
        "--seeds=0",
        "--epochs=1",
        "--train_size=200",
        f"--workdir={tmp_path}/runs",
        f"--results={tmp_path}/kept",
    )
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "keeps a run with other settings (epochs=60 (this run 1)" in done.stderr
    assert "keep these runs under another --results" in done.stderr
    assert (kept / "summary.json").read_bytes() == before
    assert not (tmp_path / "runs").exists()


def test_a_figure_that_names_a_folder_is_refused(tmp_path):
    done = run_module(
        "launch.ladder", "--table_only", f"--workdir={tmp_path}", f"--figure={tmp_path}"
    )
    assert done.returncode == 1 and f"--figure={tmp_path} is a folder" in done.stderr
    assert not (tmp_path.parent / f"{tmp_path.name}.png").exists()
