"""A stand-in experiment for the sweep tests: the experiment contract without training.

It keeps the contract every module in experiments/ keeps: its settings declared once as
`SETTINGS` (lib.core.config), one absl flag per setting, `--workdir`, config.json and
metrics.jsonl during the run, summary.json only at the end, a "checkpoint" it resumes
from, and `run(overrides, workdir) -> summary` for sweeps that run in one process,
taking the settings given over the defaults. Its accuracies are a known function of the
settings, and the test accuracy runs opposite to the validation accuracy, so a ranking
that looked at the test numbers would come out reversed.

    python -m tests.fake_experiment --workdir=/tmp/fake --learning_rate=0.01 --seed=1
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

from absl import app, flags
from ml_collections import ConfigDict

from experiments import common
from lib.core import config as config_lib
from lib.core import metrics
from lib.core.config import AT_LEAST_1, Setting

SETTINGS = (
    Setting("workdir", None, "Where the run writes its files.", kind=str),
    Setting("learning_rate", 0.1, "Pretend learning rate; validation peaks at 0.01."),
    Setting("seed", 0, "Pretend seed; nudges the accuracies."),
    Setting("epochs", 3, "Pretend epochs; each one is checkpointed.", AT_LEAST_1),
    Setting("sleep_s", 0.0, "Seconds each epoch takes."),
    Setting("fail_above", math.inf, "Raise an error when learning_rate exceeds this."),
    Setting("stop_until", "", "On SIGTERM, keep 'saving' until this file exists (60 s at most)."),
    Setting("stop_after", 0, "Stop as if signalled after this many epochs (0: never)."),
)
common.define_setting_flags(SETTINGS)

CALLS_IN_THIS_PROCESS = 0


def accuracies(learning_rate: float, seed: int) -> tuple[float, float]:
    val = 0.9 - 0.05 * abs(math.log10(learning_rate) + 2) + 0.001 * seed
    return val, 1.5 - val


class _StopOnSigterm:
    """Like a real experiment: SIGTERM asks the run to save and stop after this epoch."""

    requested = False

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)


def get_config() -> ConfigDict:
    """Every setting at its default."""
    return config_lib.defaults(SETTINGS)


def run(overrides: Mapping[str, Any], workdir: str) -> dict:
    """One pretend run in `workdir`, with the given settings over the defaults."""
    config = config_lib.override(get_config(), {**overrides, "workdir": workdir})
    config_lib.check(config, SETTINGS, prefix="--")
    config = config_lib.as_dict(config)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, metrics.LOCK), "a+") as in_use:
        try:  # two processes in one workdir would be a launcher bug
            fcntl.flock(in_use, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{workdir} is in use by another process") from None
        in_use.truncate(0)  # the holder's pid, as lib.core.metrics.hold_workdir writes it
        in_use.write(f"{os.getpid()}\n")
        in_use.flush()
        with _StopOnSigterm() as stop:
            return _run(config, workdir, stop)


def _run(config: dict, workdir: str, stop: _StopOnSigterm) -> dict:
    global CALLS_IN_THIS_PROCESS
    CALLS_IN_THIS_PROCESS += 1
    start = time.time()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config, f, default=str)
    attempts_path = os.path.join(workdir, "attempts")
    attempts = int(open(attempts_path).read()) + 1 if os.path.exists(attempts_path) else 1
    with open(attempts_path, "w") as f:
        f.write(str(attempts))
    with open(os.path.join(workdir, "pid"), "w") as f:
        f.write(str(os.getpid()))

    checkpoint = os.path.join(workdir, "checkpoint")
    first_epoch = int(open(checkpoint).read()) if os.path.exists(checkpoint) else 0
    if config["learning_rate"] > config["fail_above"]:
        raise FloatingPointError(f"loss is nan at epoch {first_epoch}, step 7")
    val, test = accuracies(config["learning_rate"], config["seed"])
    for epoch in range(first_epoch, config["epochs"]):
        time.sleep(config["sleep_s"])
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"epoch": epoch, "val_accuracy": val}) + "\n")
        with open(checkpoint + ".tmp", "w") as f:
            f.write(str(epoch + 1))
        os.replace(checkpoint + ".tmp", checkpoint)
        stop.requested |= epoch + 1 == config["stop_after"]
        if stop.requested and epoch + 1 < config["epochs"]:
            deadline = time.monotonic() + 60
            while config["stop_until"] and not os.path.exists(config["stop_until"]):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{config['stop_until']} never appeared")
                time.sleep(0.01)
            return {"finished": False}

    summary = {
        "best_val_accuracy": val,
        "test_accuracy": test,
        "wall_time_s": time.time() - start,
        "device": "none",
        "finished": True,
        "resumed_from_epoch": first_epoch,
        "attempts": attempts,
        "pid": os.getpid(),
        "calls_in_process": CALLS_IN_THIS_PROCESS,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f)
    return summary


def main(argv):
    if not flags.FLAGS.workdir:
        print("fake_experiment: error: --workdir is required", file=sys.stderr)
        sys.exit(2)
    common.run_from_flags(argv, lambda given: run(given, given["workdir"]), SETTINGS)


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
