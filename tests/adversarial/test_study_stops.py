"""A stop asked of the blind-spot study while it trains its own targets: one that comes as a
target's run ends (too late to stop that run) starts no other run and no attack."""

import os
import signal

import pytest

from experiments import adversarial as experiment
from lib.nielsen import train

# The quick recipe as the shallow net on few images, so each target trains in seconds.
RECIPE = {"net": "shallow", "batch_size": 50, "validation_size": 100, "test_size": 100}
SMALL = {"train_size": 200, "target_epochs": 1, "eps": (0.1,), "test_size": 20,
         "distortion_size": 2, "pgd_steps": 1, "lbfgs_iterations": 1}  # fmt: skip


@pytest.mark.parametrize("nets", [("none", "fgsm"), ("none",)])
def test_a_stop_as_a_target_finishes_starts_no_other_work(
    tmp_path, monkeypatch, nets, signalled_as_it_ends, capsys
):
    monkeypatch.setattr(experiment, "QUICK_RECIPE", RECIPE)
    monkeypatch.setattr(train, "train_and_evaluate", signalled_as_it_ends)
    stopped = experiment.run({**SMALL, "train": nets}, str(tmp_path))
    assert stopped == {"finished": False}
    out = capsys.readouterr().out  # the study's line, not the target run's too
    assert out.count("stopped; run again") == 1 and f"--workdir={tmp_path} " in out, out
    assert (tmp_path / "target" / "summary.json").exists(), "the target that finished is kept"
    assert not (tmp_path / "target-fgsm").exists(), "the next target's run started"
    assert not (tmp_path / "targets").exists(), "the attacks started"


def test_a_stop_during_an_attack_keeps_it_and_the_same_command_goes_on(
    tmp_path, monkeypatch, capsys
):
    """SIGTERM while the first target is attacked: that attack ends and is kept, the
    second does not start, one line tells how to resume, and the same study then attacks
    only the second."""
    monkeypatch.setattr(experiment, "QUICK_RECIPE", RECIPE)
    config = {**SMALL, "train": ("none", "fgsm")}
    attack = experiment.attack

    def attack_then_signal(*args, **kwargs):
        result = attack(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    with monkeypatch.context() as patch:
        patch.setattr(experiment, "attack", attack_then_signal)
        stopped = experiment.run(config, str(tmp_path))
    assert stopped == {"finished": False}
    out = capsys.readouterr().out
    assert out.count("stopped; run again") == 1, out
    assert sorted(p.name for p in (tmp_path / "targets").glob("*.json")) == ["0.json"]
    first = (tmp_path / "targets" / "0.json").read_bytes()
    summary = experiment.run(config, str(tmp_path))
    assert summary["finished"] and len(summary["targets"]) == 2
    assert "done before" in capsys.readouterr().out
    assert (tmp_path / "targets" / "0.json").read_bytes() == first
