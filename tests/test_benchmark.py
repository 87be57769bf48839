"""The MNIST speed benchmark: its table, every ensemble layout, and a clear line for bad input."""

from commands import run_module


def table_rows(stdout: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # without the header lines


def test_benchmark_prints_a_row_per_case_and_layout():
    done = run_module(
        "launch.benchmark",
        "--nets=shallow",
        "--batch_sizes=10",
        "--ensemble=1,2",
        "--ensemble_layouts=vmap,unrolled",
        "--steps=5",
    )
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert [(r[0], r[2], r[3]) for r in rows] == [
        ("shallow", "1", "-"),
        ("shallow", "2", "vmap"),
        ("shallow", "2", "unrolled"),
    ]
    for row in rows:
        assert float(row[5]) > 0 and float(row[8]) > 0  # ms/step, s/epoch


def test_benchmark_refuses_an_unknown_layout():
    done = run_module("launch.benchmark", "--nets=shallow", "--ensemble_layouts=pmap")
    assert done.returncode != 0
    assert "unknown layout 'pmap'" in done.stderr and "Traceback" not in done.stderr
