"""The model-table command: a row per model; it and the other ImageNet-scale tools refuse
bad input in one clear line."""

from __future__ import annotations

import pytest
from commands import assert_refused, run_module

from launch import model_table


def test_row_reports_count_match_and_multiply_adds():
    row = model_table.table_row("alexnet")
    assert row["params"] == row["reference_params"] == 61_100_840
    assert 0.6 < row["gmacs_xla"] < row["gmacs_layers"]  # XLA skips the padding
    assert abs(row["gmacs_layers"] - row["reference_gmacs"]) < 0.01
    line = model_table.format_row(row)
    assert line.startswith("| alexnet | 224 | 61,100,840 | 61,100,840 | ✓ |")


@pytest.mark.parametrize(
    "module, flag, message",
    [
        ("launch.model_table", "--models=resnet51", "unknown model 'resnet51'"),
        ("launch.model_table", "--models=alexnet --resolution=32", "too small for alexnet"),
        ("launch.bench_imagenet", "--models=resnet51", "unknown model 'resnet51'"),
        ("launch.bench_imagenet", "--steps=-1", "--steps and --batch_size must be positive"),
        ("launch.bench_input", "--workers=two", "--workers must be integers"),
        ("launch.bench_input", "--modes=test", "--modes takes train and/or eval"),
    ],
)
def test_the_imagenet_tools_refuse_bad_input_in_one_line(module, flag, message):
    """As every command does: 'error: ...' on one line, status 1, no traceback."""
    assert_refused(run_module(module, *flag.split()), message)
