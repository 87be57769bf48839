"""A study stopped part-way (SIGTERM's graceful stop) and run again ends exactly as one that
was never stopped: the finished runs are kept, the stopped one resumes from its checkpoint,
and a stop that comes as a run ends starts no other."""

import json

import pytest

from experiments import activations, expanded_data
from lib.core.stop import GracefulStop
from lib.nielsen import train

STUDIES = {
    "activations": (
        activations,
        {"preset": "quick", "train_size": 200, "epochs": 2, "seeds": 2,
         "variants": ["tanh", "relu"]},
    ),
    "expanded_data": (
        expanded_data,
        {"preset": "quick", "train_sizes": [100, 200], "epochs": 2, "min_steps": 0,
         "expansions": ["shift"], "seeds": 2},
    ),
}  # fmt: skip
SMALL = {"num_devices": 1, "validation_size": 200, "test_size": 200, "ensemble_layout": "vmap"}


def stop_on_call(k):
    """A GracefulStop asked to stop from its k-th question on, as if SIGTERM came then."""

    class Stop(GracefulStop):
        asked = 0

        def __call__(self):
            Stop.asked += 1
            return Stop.asked >= k

    return Stop


def timeless(path):
    drop = ("epoch_time_s", "examples_per_s", "wall_time_s", "train_time_s")
    return [
        {k: v for k, v in json.loads(line).items() if k not in drop}
        for line in path.read_text().splitlines()
    ]


@pytest.mark.parametrize("name", list(STUDIES))
def test_a_stopped_study_resumes_as_if_never_stopped(tmp_path, monkeypatch, name):
    module, config = STUDIES[name]
    config = {**config, **SMALL}
    whole = module.run(config, workdir=str(tmp_path / "whole"), verbose=False)

    with monkeypatch.context() as patch:
        # asked before each run and after each of its epochs: the fifth question ends the
        # second run's first epoch
        patch.setattr(module, "GracefulStop", stop_on_call(5))
        stopped = module.run(config, workdir=str(tmp_path / "split"), verbose=False)
    assert stopped == {"finished": False}
    kept = [p.parent for p in (tmp_path / "split").rglob("summary.json")]
    assert len(kept) == 1, "the first of the study's two runs had finished before the stop"
    done = {p: p.stat().st_mtime_ns for p in kept[0].glob("checkpoints/**/*") if p.is_file()}
    assert done
    saved = [p for p in (tmp_path / "split").rglob("checkpoints/*") if p.parent.parent != kept[0]]
    assert saved, "the stopped run saved a checkpoint to resume from"

    resumed = module.run(config, workdir=str(tmp_path / "split"), verbose=False)
    assert {p: p.stat().st_mtime_ns for p in done} == done  # the finished run is not trained again
    runs = "variants" if name == "activations" else "runs"
    drop = ("wall_time_s", "train_time_s", "examples_per_s", "device")
    for key, row in whole[runs].items():
        again = resumed[runs][key]
        assert {k: v for k, v in again.items() if k not in drop} == {
            k: v for k, v in row.items() if k not in drop
        }, key
    assert timeless(tmp_path / "split" / "metrics.jsonl") == timeless(
        tmp_path / "whole" / "metrics.jsonl"
    )


@pytest.mark.parametrize("name", list(STUDIES))
def test_a_stop_as_a_run_ends_starts_no_other_run(
    tmp_path, monkeypatch, name, signalled_as_it_ends
):
    module, config = STUDIES[name]
    monkeypatch.setattr(train, "train_and_evaluate", signalled_as_it_ends)
    stopped = module.run({**config, **SMALL}, workdir=str(tmp_path), verbose=False)
    assert stopped == {"finished": False}
    started = [p.parent for p in tmp_path.rglob("settings.json")]
    assert len(started) == 1, "a run started after the stop"
    assert (started[0] / "summary.json").exists(), "the run that finished is kept"
