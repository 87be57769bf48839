"""A workdir holds one run: other settings are refused, and so is a second process."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from commands import assert_refused, run_module, start_module

from lib.core import config as config_lib
from lib.core import metrics

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--train_size=200", "--batch_size=20", "--num_devices=1", "--validation_size=500",
        "--test_size=500"]  # fmt: skip
TIMING = ("epoch_time_s", "examples_per_s")
HOLD = (  # holds the workdir argv[1] until killed
    "import sys, time\n"
    "from lib.core import metrics\n"
    "held = metrics.hold_workdir(sys.argv[1])\n"
    "held.__enter__()\n"
    "print('held', flush=True)\n"
    "time.sleep(300)\n"
)


def convnet(*args):
    return run_module("experiments.mnist_convnet", *TINY, *args, timeout=180)


def snapshot(workdir: Path) -> dict:
    """What a refused run must leave as it was."""
    return {
        name: (workdir / name).read_bytes()
        for name in ("config.json", "metrics.jsonl", "summary.json", "test_predictions.npy")
        if (workdir / name).exists()
    }


def epochs(workdir: Path) -> list[dict]:
    lines = metrics.read_jsonl(workdir / "metrics.jsonl")
    return [{k: v for k, v in line.items() if k not in TIMING} for line in lines]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Finished runs of the ReLU rung on 200 images, one and two epochs (side by side)."""
    workdirs = {n: tmp_path_factory.mktemp(f"epochs{n}") for n in (1, 2)}
    runs = {
        n: start_module("experiments.mnist_convnet", *TINY, f"--epochs={n}", f"--workdir={w}")
        for n, w in workdirs.items()
    }
    for run in runs.values():
        _, stderr = run.communicate(timeout=180)
        assert run.returncode == 0, stderr
    return workdirs


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--epochs=3", "--batch_size=50"], ["batch_size=20 (now 50)"]),
        (["--epochs=2", "--net=conv1"], ["net=relu (now conv1)", "activation=relu (now sigmoid)"]),
        (
            ["--epochs=1", "--schedule=cosine"],
            ["schedule=constant (now cosine)", "epochs=2 (now 1)"],
        ),
    ],
)
def test_resume_with_other_settings_is_refused(finished, args, named):
    workdir = finished[2]
    before = snapshot(workdir)
    done = convnet(*args, f"--workdir={workdir}")
    assert_refused(done, *named, "another --workdir")
    assert snapshot(workdir) == before


def test_a_held_workdir_is_refused_and_more_epochs_go_on_after_its_holder_is_killed(finished):
    """A second process is refused, naming the first's pid; once that one is killed, the
    run goes on to more epochs (with other program settings) and ends as the run of that
    many epochs that never stopped."""
    workdir, whole = finished[1], finished[2]
    before = snapshot(workdir)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        done = convnet("--epochs=2", f"--workdir={workdir}")
        assert_refused(done, f"pid {holder.pid}", "another --workdir")
        assert snapshot(workdir) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    done = convnet("--epochs=2", "--driver=loop", "--ensemble_layout=vmap", f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr
    assert "resuming at step 10" in done.stdout
    assert [line["epoch"] for line in epochs(workdir)] == [1, 2]
    assert epochs(workdir) == epochs(whole)
    keys = ("epochs", "best_epoch", "best_val_accuracy", "test_accuracy", "final_val_accuracy")
    extended, uninterrupted = (
        json.loads((d / "summary.json").read_text()) for d in (workdir, whole)
    )
    assert {k: extended[k] for k in keys} == {k: uninterrupted[k] for k in keys}
    np.testing.assert_array_equal(
        np.load(workdir / "test_predictions.npy"), np.load(whole / "test_predictions.npy")
    )
    config = json.loads((workdir / "config.json").read_text())
    assert (config["epochs"], config["driver"], config["ensemble_layout"]) == (2, "loop", "vmap")


def study_config(module: str, config: dict) -> dict:
    """What the study's run writes to config.json for these settings."""
    if module == "activations":
        from experiments import activations as study
    else:
        from experiments import expanded_data as study
    return config_lib.as_dict(study.resolve(config))


STUDIES = [
    (
        "activations",
        {"preset": "quick", "variants": ["relu"], "seeds": 1, "epochs": 2, "train_size": 200},
        ["--seeds=2"],
        ["seeds=1 (now 2)"],
    ),
    (
        "expanded_data",
        {"preset": "quick", "expansions": ["none"], "train_sizes": [200], "epochs": 2},
        ["--expansions=none,fixed", "--epochs=1"],
        ["expansions=none (now none,fixed)", "epochs=2 (now 1)"],
    ),
]


@pytest.mark.parametrize(("module", "first", "args", "named"), STUDIES)
def test_studies_refuse_other_settings(module, first, args, named, tmp_path):
    config = study_config(module, {**first, "workdir": str(tmp_path)})
    metrics.write_json(tmp_path / "config.json", config)
    before = snapshot(tmp_path)
    flags = [
        f"--{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in first.items()
    ]
    done = run_module(f"experiments.{module}", *flags, *args, f"--workdir={tmp_path}", timeout=120)
    assert_refused(done, *named, "another --workdir")
    assert snapshot(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == [".lock", "config.json"]


def test_imagenet_run_refuses_other_identity(tmp_path):
    """Only the settings that make the run (RUN_IDENTITY) are compared there."""
    metrics.write_json(tmp_path / "config.json", {"model": "resnet_tiny", "batch_size": 64,
                                                  "log_every": 5})  # fmt: skip
    before = snapshot(tmp_path)
    done = run_module(
        "experiments.imagenet_nets",
        "--model=resnet_tiny",
        "--dataset=mnist",
        "--train_split=train[:256]",
        "--eval_split=test[:64]",
        "--image_size=32",
        "--batch_size=32",
        "--workers=0",
        "--num_devices=1",
        f"--workdir={tmp_path}",
        timeout=120,
    )
    assert_refused(done, "batch_size=64 (now 32)", "another --workdir")
    assert "log_every" not in done.stderr
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("experiments.activations", ["--preset=quick"]),
        ("experiments.expanded_data", ["--preset=quick"]),
        ("experiments.imagenet_nets", ["--model=resnet_tiny", "--dataset=mnist", "--workers=0"]),
        ("experiments.adversarial", []),
        ("experiments.autoencoders", ["--model=pca"]),
        ("experiments.capsules", []),
    ],
)
def test_every_experiment_refuses_a_held_workdir(module, args, tmp_path):
    with metrics.hold_workdir(tmp_path):
        done = run_module(module, *args, f"--workdir={tmp_path}", timeout=120)
    assert_refused(done, f"pid {os.getpid()}", "another --workdir")
    assert sorted(os.listdir(tmp_path)) == [".lock"]
    with metrics.hold_workdir(tmp_path):  # released at the end of the block, so free again
        pass


def ladder(root: Path, *args: str):
    return run_module("launch.ladder", *TINY, "--nets=shallow", f"--workdir={root}", *args)


def test_the_ladder_reuses_a_finished_run_only_with_the_settings_given_now(tmp_path):
    """Run again with its settings, a finished rung is tabled as it is; with other settings
    it is refused, and with more epochs it goes on (the book's constant schedule)."""
    run = tmp_path / "shallow" / "seed=0"
    done = ladder(tmp_path, "--epochs=1")
    assert done.returncode == 0, done.stderr
    assert "== shallow, seed 0" in done.stdout
    before = snapshot(run)
    done = ladder(tmp_path, "--epochs=1")
    assert done.returncode == 0, done.stderr
    assert "== shallow" not in done.stdout and "| shallow |" in done.stdout
    assert snapshot(run) == before
    done = ladder(tmp_path, "--epochs=1", "--learning_rate=0.5")
    assert_refused(done, "learning_rate=0.1 (now 0.5)", "another --workdir")
    assert snapshot(run) == before
    done = ladder(tmp_path, "--epochs=2")
    assert done.returncode == 0, done.stderr
    assert [line["epoch"] for line in epochs(run)] == [1, 2]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


@pytest.mark.parametrize(
    "module, args, kept",
    [
        ("experiments.circuits", [], "main"),
        ("experiments.svm", ["--nomnist"], "circuits"),
        (
            "experiments.mnist_convnet",
            ["--net=shallow", "--epochs=1", "--train_size=200"],
            "circuits",
        ),
    ],
)
def test_a_workdir_holding_another_commands_run_is_refused_and_left_alone(
    module, args, kept, tmp_path
):
    """The settings both runs record may agree (a seed, a workdir); the others' tell."""
    workdir = tmp_path / kept
    workdir.mkdir()
    for name in ("config.json", "summary.json"):
        (workdir / name).write_bytes((ROOT / "results" / kept / name).read_bytes())
    before = {p.name: p.read_bytes() for p in workdir.iterdir()}
    done = run_module(module, *args, f"--workdir={workdir}")
    assert_refused(done, "holds a run of another command", "use another --workdir")
    after = {p.name: p.read_bytes() for p in workdir.iterdir() if p.name != ".lock"}
    assert after == before  # (.lock: the empty file a run holds its workdir by)
