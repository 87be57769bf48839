"""The vote of separately trained runs from their kept test predictions: the members' and
the vote's accuracy, and a clear refusal of runs that cannot be voted together."""

import json
from pathlib import Path

import numpy as np
import pytest
from commands import run_module

from launch import vote
from lib.core import data
from lib.core.errors import UserError

TRUTH = np.arange(100) % 10


def fake_run(folder: Path, predictions: np.ndarray, seed=0, split="book", dataset="mnist"):
    folder.mkdir(parents=True)
    accuracy = float((predictions == TRUTH).mean()) if predictions.shape[-1] == 100 else 0.5
    summary = {"best_val_accuracy": accuracy, "test_accuracy": accuracy, "epochs": 40,
               "wall_time_s": 600.0, "device": "cpu x1", "finished": True}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.json").write_text(
        json.dumps({"seed": seed, "split": split, "dataset": dataset})
    )
    np.save(folder / "test_predictions.npy", predictions.astype(np.uint8))


def wrong_on(indices) -> np.ndarray:
    guess = TRUTH.copy()
    guess[indices] = (TRUTH[indices] + 1) % 10
    return guess


def labels(split, dataset):
    return TRUTH


def test_three_nets_wrong_on_different_images_vote_right_everywhere(tmp_path):
    runs = []
    for seed in range(3):
        runs.append(tmp_path / f"seed={seed}")
        fake_run(runs[-1], wrong_on(np.arange(10 * seed, 10 * seed + 10)), seed)
    result = vote.vote(runs, labels)
    assert result["members"] == [0.9, 0.9, 0.9] and result["vote"] == 1.0
    text = vote.table(runs, result)
    assert "| members' mean (3) | | | 90.00% ± 0.00% |" in text
    assert text.splitlines()[-1].startswith("| majority vote of 3 | | | 100.00% |")


def test_nets_wrong_on_the_same_images_stay_wrong_and_ensemble_runs_vote_per_member(tmp_path):
    fake_run(tmp_path / "a", wrong_on(np.arange(20)))
    members = np.stack([wrong_on(np.arange(20)), TRUTH])  # a run of two members
    fake_run(tmp_path / "b", members)
    result = vote.vote([tmp_path / "a", tmp_path / "b"], labels)
    assert result["members"] == [0.8, 0.8, 1.0]
    assert result["vote"] == 0.8  # two of three agree on the wrong label


def test_runs_that_cannot_be_voted_together_are_refused_with_the_reason(tmp_path):
    fake_run(tmp_path / "book", TRUTH)
    fake_run(tmp_path / "tfds", TRUTH, split="tfds")
    with pytest.raises(UserError, match="different test sets"):
        vote.vote([tmp_path / "book", tmp_path / "tfds"], labels)
    fake_run(tmp_path / "short", TRUTH[:50])
    with pytest.raises(UserError, match="50 or 100 test predictions"):
        vote.vote([tmp_path / "book", tmp_path / "short"], labels)
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(
        UserError, match=r"unfinished has no summary\.json or config\.json or test_predictions"
    ):
        vote.vote([tmp_path / "book", tmp_path / "unfinished"], labels)
    with pytest.raises(UserError, match="no folder matches"):
        vote.expand([str(tmp_path / "nothing*")])
    with pytest.raises(UserError, match="book named more than once: each run votes once"):
        vote.vote([tmp_path / "book", tmp_path / "short" / ".." / "book"], labels)
    fake_run(tmp_path / "stopped", TRUTH)
    (tmp_path / "stopped" / "summary.json").write_text(json.dumps({"finished": False}))
    with pytest.raises(UserError, match="stopped is a run stopped before its end"):
        vote.vote([tmp_path / "book", tmp_path / "stopped"], labels)


def test_a_run_that_records_no_split_is_refused_not_scored_in_a_guessed_order(tmp_path):
    fake_run(tmp_path / "book", TRUTH)
    fake_run(tmp_path / "unknown", TRUTH)
    config = tmp_path / "unknown" / "config.json"
    config.write_text(json.dumps({"seed": 0, "dataset": "mnist"}))
    with pytest.raises(UserError, match=r"unknown/config\.json records no split"):
        vote.vote([tmp_path / "book", tmp_path / "unknown"], labels)


def test_the_command_votes_a_glob_of_runs_on_the_real_test_labels(tmp_path):
    truth = data.mnist(order="book").test.labels
    for seed in range(3):
        guess = truth.copy()
        guess[seed * 100 : seed * 100 + 100] = (guess[seed * 100 : seed * 100 + 100] + 1) % 10
        fake_run(tmp_path / f"seed={seed}", guess, seed)
    done = run_module("launch.vote", f"--runs={tmp_path}/seed=*")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "| majority vote of 3 | | | 100.00% | | | |"
    assert f"| {tmp_path}/seed=2 | 2 |" in done.stdout
    missing = run_module("launch.vote")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("error: flag --runs=None")
