"""The model-table command: a row per model, and one clear line for a bad name."""

from __future__ import annotations

import subprocess
import sys

from launch import model_table


def test_row_reports_count_match_and_multiply_adds():
    row = model_table.table_row("alexnet")
    assert row["params"] == row["reference_params"] == 61_100_840
    assert 0.6 < row["gmacs_xla"] < row["gmacs_layers"]  # XLA skips the padding
    assert abs(row["gmacs_layers"] - row["reference_gmacs"]) < 0.01
    line = model_table.format_row(row)
    assert line.startswith("| alexnet | 224 | 61,100,840 | 61,100,840 | ✓ |")


def test_unknown_model_is_one_line_and_exit_code_2():
    result = subprocess.run(
        [sys.executable, "-m", "launch.model_table", "--models=resnet51"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    message = [line for line in result.stderr.splitlines() if "model_table:" in line]
    assert len(message) == 1 and "unknown model 'resnet51'" in message[0]
    assert "Traceback" not in result.stderr
