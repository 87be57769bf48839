"""Running the project's command lines from tests, as a user would from the repository root."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_module(
    module: str, *args: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m module args...` in the repository root, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


MNIST_RESULT = ("best_epoch", "best_val_accuracy", "test_accuracy", "final_val_accuracy")
MNIST_TIMING = ("epoch_time_s", "examples_per_s")
IMAGENET_RESULT = ("steps", "final_top1", "final_top5", "best_top1", "final_train_loss", "params")
IMAGENET_TIMING = ("eval_time_s",)


def result(workdir: Path, keys=MNIST_RESULT, timing=MNIST_TIMING) -> dict:
    """A finished run's summary (`keys` of it) and metrics lines less the `timing` fields,
    to compare runs: an MNIST run's by default."""
    summary = json.loads((workdir / "summary.json").read_text())
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    timeless = [{k: v for k, v in line.items() if k not in timing} for line in lines]
    return {"summary": {k: summary[k] for k in keys}, "metrics": timeless}


def imagenet_result(workdir: Path) -> dict:
    """`result` of a finished ImageNet-scale run."""
    return result(workdir, IMAGENET_RESULT, IMAGENET_TIMING)
