"""The ImageNet-scale run as a library call, without the command line: it trains, writes
its files, reports progress through the caller, stops on request and resumes to the same end.

resnet_tiny on 512 MNIST images at 32x32, batch 16, eight steps: a second of training per
run on two cores. The runs have the same settings, so they share one compilation
(`loop.compiled_programs`), which takes most of the module's time.
"""

import json
import math

import pytest
from commands import imagenet_result

from lib.core.errors import ConfigError
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
