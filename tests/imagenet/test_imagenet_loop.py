"""The ImageNet-scale run as a library call, without the command line: it trains, writes
its files, reports progress through the caller, stops on request and resumes to the same end.

resnet_tiny on 512 MNIST images at 32x32, batch 16, eight steps: a second of training per
run on two cores. The runs have the same settings, so they share one compilation
(`loop.compiled_programs`), which takes most of the module's time.
"""

import json
import math

import numpy as np
import pytest
from commands import imagenet_result
from fake_tfds import prepared_copy

from lib.core import metrics
from lib.core.errors import ConfigError, DivergedError, UserError
from lib.imagenet import loop

SMALL = {"model": "resnet_tiny", "dataset": "mnist", "train_split": "train[:512]",
         "eval_split": "test[:64]", "image_size": 32, "batch_size": 16, "steps": 8,
         "eval_every": 4, "log_every": 3, "learning_rate": 0.1, "warmup_epochs": 0.0,
         "workers": 0, "num_devices": 1, "dtype": "float32"}  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted run, its settings as a ConfigDict (as Flax's examples pass them)."""
    workdir = tmp_path_factory.mktemp("finished")
    lines = []
    summary = loop.train_and_evaluate(loop.get_config(**SMALL), workdir, report=lines.append)
    return workdir, summary, lines


def test_a_run_trains_and_writes_its_files(finished):
    workdir, summary, _ = finished
    assert summary["finished"] and summary["steps"] == 8 and summary["model"] == "resnet_tiny"
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert (workdir / name).exists(), name
    assert json.loads((workdir / "summary.json").read_text()) == pytest.approx(summary)
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["total_steps"] == 8 and saved["workdir"] == str(workdir)
    history = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [4, 8]
    assert all(0 <= h["eval_top1"] <= h["eval_top5"] <= 1 for h in history)
    assert all(math.isfinite(h["train_loss"]) for h in history)
    # The cosine schedule reaches zero at the last step (learning is the command line's test).
    assert history[0]["learning_rate"] > history[-1]["learning_rate"] > 0
    assert summary["final_top1"] == history[-1]["eval_top1"]


def test_progress_reaches_the_caller_not_stdout(finished, capsys):
    _, _, lines = finished
    assert lines[0].startswith("resnet_tiny: ") and lines[0].endswith("start")
    progress = [line for line in lines if line.startswith("  step ")]
    assert [line.split()[1] for line in progress] == ["3/8", "4/8", "6/8", "8/8"]
    assert all("images/s" in line and "ETA" in line for line in progress)
    assert lines[-1].startswith("done: top-1 ")
    assert capsys.readouterr().out == ""


def test_a_stopped_run_resumes_to_the_same_end(finished, tmp_path):
    """Stopped at step 6, between two evaluations, so the resumed run must also carry on
    the training metrics of the steps it took before the stop."""
    lines = []
    stopped = loop.train_and_evaluate(
        SMALL, tmp_path, report=lines.append, should_stop=lambda: "  step 6/8" in lines[-1]
    )
    assert not stopped["finished"] and stopped["steps"] == 6
    assert not (tmp_path / "summary.json").exists()
    assert lines[-1] == f"stopped at step 6; run again with --workdir={tmp_path} to resume"

    lines = []
    resumed = loop.train_and_evaluate(SMALL, tmp_path, report=lines.append)
    assert resumed["finished"] and "resuming at step 6" in lines[0]
    assert imagenet_result(tmp_path) == imagenet_result(finished[0])


def test_a_run_stopped_inside_a_caller_leaves_the_resume_line_to_it(tmp_path):
    """SIGTERM to a run whose own stop is nested in a caller's (a sweep's, in one process):
    the run saves and stops, and the caller, not the run, says how to go on."""
    import os
    import signal

    from lib.core.stop import GracefulStop

    lines = []

    def report(line):
        lines.append(line)
        if "  step 6/8" in line:
            os.kill(os.getpid(), signal.SIGTERM)

    with GracefulStop() as caller:
        stopped = loop.train_and_evaluate(SMALL, tmp_path, report=report)
    assert not stopped["finished"] and caller()
    assert not any(line.startswith("stopped at step") for line in lines), lines


def test_settings_are_resolved_and_checked_before_anything_is_written(tmp_path):
    resolved = loop.resolve({"model": "inception_v3", "batch_size": 512})
    assert resolved["image_size"] == 299 and resolved["learning_rate"] == pytest.approx(0.2)
    assert resolved["epochs"] == 90 and resolved["eval_batch_size"] == 512
    workdir = tmp_path / "never"
    for bad, message in [
        ({"no_such_setting": 1}, "unknown setting no_such_setting"),
        ({"model": "resnet51"}, "unknown model 'resnet51'"),
        ({"image_size": 0}, "--image_size must be positive, got 0"),
        ({"dtype": "float16"}, "--dtype=float16 must be one of bfloat16, float32"),
        ({"steps": 8, "epochs": 1}, "give --epochs or --steps, not both"),
    ]:
        with pytest.raises(ConfigError, match=message):
            loop.train_and_evaluate({**SMALL, "steps": None, **bad}, workdir)
    assert not workdir.exists()


def test_a_warmup_as_long_as_the_run_is_refused(tmp_path):
    """The learning rate would rise for the whole run: never at its peak, never decayed."""
    imagenet = 1_281_167  # 5,004 steps of the default batch per epoch
    for given in ({"steps": 300}, {"epochs": 5}):  # the default warm-up is 5 epochs
        with pytest.raises(ConfigError, match=r"not fewer than the run's .* lower --warmup_epochs"):
            loop.schedule_steps(loop.resolve(given), imagenet)
    fits = loop.resolve({"steps": 300, "warmup_epochs": 0.01})
    assert loop.schedule_steps(fits, imagenet) == (5004, 300, 50)
    # SMALL has 32 steps per epoch: a quarter epoch is its 8 steps.
    workdir = tmp_path / "never"
    with pytest.raises(ConfigError, match=r"--warmup_epochs=0.25 is 8 steps, not fewer than"):
        loop.train_and_evaluate({**SMALL, "warmup_epochs": 0.25}, workdir)
    assert not workdir.exists()


@pytest.mark.parametrize(
    ("name", "value"),
    [("weight_decay", 0.0), ("momentum", 0.5), ("label_smoothing", 0.0), ("aux_weight", 1.0)],
)
def test_a_resume_with_another_loss_or_optimizer_setting_is_refused(name, value, tmp_path):
    saved = {**loop.resolve(SMALL), "workdir": str(tmp_path), "total_steps": 8, "processes": 1}
    metrics.write_json(tmp_path / "config.json", saved)
    loop.check_same_run(tmp_path, saved)  # the same settings resume
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(UserError, match=f"other settings: {name}=.* use another --workdir"):
        loop.train_and_evaluate({**SMALL, name: value}, tmp_path)
    assert (tmp_path / "config.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "config.json"]


def test_an_evaluation_split_the_dataset_lacks_is_named(tmp_path):
    workdir = tmp_path / "never"
    with pytest.raises(
        ConfigError,
        match=r"--eval_split=validation\[:64\]: dataset 'mnist' has no split 'validation' "
        r"\(its splits: test, train\).*--eval_split='train\[95%:\]'",
    ):
        loop.train_and_evaluate({**SMALL, "eval_split": "validation[:64]"}, workdir)
    assert not workdir.exists()


def test_a_dataset_without_validation_or_test_split_asks_for_eval_split(tmp_path):
    data_dir = prepared_copy(tmp_path / "tfds", "mnist", train=64, test=1)
    folder = data_dir / "mnist" / "3.0.1"
    info = json.loads((folder / "dataset_info.json").read_text())
    info["splits"] = [s for s in info["splits"] if s["name"] == "train"]
    (folder / "dataset_info.json").write_text(json.dumps(info))
    for path in folder.glob("mnist-test.*"):
        path.unlink()
    config = {**SMALL, "data_dir": str(data_dir), "train_split": "train", "eval_split": None}
    with pytest.raises(ConfigError, match=r"no validation or test split \(its splits: train\)"):
        loop.train_and_evaluate(config, tmp_path / "never")
    # The split it suggests works.
    config["train_split"], config["eval_split"] = "train[:95%]", "train[95%:]"
    assert len(loop.Dataset(loop.resolve(config)).eval) == 3


def test_evaluation_with_worker_processes_is_one_padded_pass():
    """Each Grain worker batches and pads its own share: 40 images in batches of 16 over two
    workers are 2 + 2 batches, one more than 40 images over one process would take."""
    config = loop.resolve({**SMALL, "eval_split": "test[:40]", "workers": 2})
    batches = list(loop.Dataset(config).eval_batches(16))
    assert [int(b["mask"].sum()) for b in batches] == [16, 16, 4, 4]


def test_divergence_advice_names_a_new_workdir():
    """The advised changes are RUN_IDENTITY settings, which the same workdir refuses."""
    assert {"learning_rate", "warmup_epochs"} <= set(loop.RUN_IDENTITY)
    record = {"partial": loop._empty_partial(), "throughput": {}, "wall_time_s": 0.0}
    meter = loop._Meter(record, batch_size=16, steps_per_epoch=32, step=40)
    meter.add({"loss": np.float32(np.nan), "top1": np.float32(0.0)})
    with pytest.raises(DivergedError, match=r"step 41 \(epoch 2\).* in a new --workdir with a"):
        meter.flush()
