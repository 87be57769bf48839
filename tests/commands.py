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


def result(workdir: Path) -> dict:
    """A finished MNIST run's summary and metrics lines, less the timings, to compare runs."""
    summary = json.loads((workdir / "summary.json").read_text())
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    timeless = [
        {k: v for k, v in line.items() if k not in ("epoch_time_s", "examples_per_s")}
        for line in lines
    ]
    keys = ("best_epoch", "best_val_accuracy", "test_accuracy", "final_val_accuracy")
    return {"summary": {k: summary[k] for k in keys}, "metrics": timeless}
