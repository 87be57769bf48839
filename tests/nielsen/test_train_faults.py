"""Training's faults: test_predictions.npy holds a best epoch that a saved checkpoint
records, a diverged run says how to go on, and the processes of a run stop together."""

import numpy as np
import pytest

from lib.core import checkpoint
from lib.nielsen import nets, train


def test_a_failed_save_writes_no_predictions(mnist_small, tmp_path, monkeypatch):
    splits = mnist_small._replace(
        train=mnist_small.train.take(100),
        validation=mnist_small.validation.take(100),
        test=mnist_small.test.take(100),
    )
    config = train.TrainConfig(epochs=1, batch_size=20, learning_rate=0.1, num_devices=1)

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # as if killed while saving

    monkeypatch.setattr(checkpoint.Checkpointer, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(nets.create("shallow"), splits, config, tmp_path)
    assert not (tmp_path / "test_predictions.npy").exists()
    monkeypatch.undo()
    train.train_and_evaluate(nets.create("shallow"), splits, config, tmp_path)
    assert (tmp_path / "test_predictions.npy").exists()


def test_a_diverged_run_says_to_rerun_in_a_new_workdir(mnist_small, tmp_path):
    splits = mnist_small._replace(
        train=mnist_small.train.take(100),
        validation=mnist_small.validation.take(100),
        test=mnist_small.test.take(100),
    )
    config = train.TrainConfig(epochs=1, batch_size=10, learning_rate=1e12, num_devices=1)
    with pytest.raises(train.DivergedError, match="lower --learning_rate in a new --workdir"):
        train.train_and_evaluate(nets.create("relu"), splits, config, tmp_path)


def test_processes_agree_to_stop_when_any_of_them_is_asked(monkeypatch):
    from jax.experimental import multihost_utils

    others = []  # the flags of the other processes

    def allgather(flag):
        return np.asarray([*others, flag])

    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    asked_here = False
    stop = train.agreed_stop(lambda: asked_here)
    others[:] = [False]
    assert not stop()
    others[:] = [True]  # a signal reached another process only
    assert stop()
    others[:], asked_here = [False], True
    assert stop()
