"""A stop asked of the blind-spot study while it trains its own targets: one that comes as a
target's run ends (too late to stop that run) starts no other run and no attack."""

import pytest

from experiments import adversarial as experiment
from lib.nielsen import train

# The quick recipe as the shallow net on few images, so each target trains in seconds.
RECIPE = {"net": "shallow", "batch_size": 50, "validation_size": 100, "test_size": 100}
SMALL = {"train_size": 200, "target_epochs": 1, "eps": (0.1,), "test_size": 20,
         "distortion_size": 2, "pgd_steps": 1, "lbfgs_iterations": 1}  # fmt: skip


@pytest.mark.parametrize("nets", [("none", "fgsm"), ("none",)])
def test_a_stop_as_a_target_finishes_starts_no_other_work(
    tmp_path, monkeypatch, nets, signalled_as_it_ends
):
    monkeypatch.setattr(experiment, "QUICK_RECIPE", RECIPE)
    monkeypatch.setattr(train, "train_and_evaluate", signalled_as_it_ends)
    stopped = experiment.run({**SMALL, "train": nets}, str(tmp_path), verbose=False)
    assert stopped == {"finished": False}
    assert (tmp_path / "target" / "summary.json").exists(), "the target that finished is kept"
    assert not (tmp_path / "target-fgsm").exists(), "the next target's run started"
    assert not (tmp_path / "targets").exists(), "the attacks started"
