"""The MNIST speed benchmark: its table, every ensemble layout and CPU path, and a clear
line for bad input."""

import subprocess
import sys

import pytest
from commands import ROOT, run_module


def table_rows(stdout: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # without the header lines


def test_benchmark_prints_a_row_per_case_layout_and_path():
    done = run_module(
        "launch.benchmark",
        "--nets=shallow",
        "--batch_sizes=10",
        "--ensemble=1,2",
        "--ensemble_layouts=devices",
        "--paths=fast,reference",
        "--steps_per_call=2",
        "--steps=4",
        "--repeats=1",
    )
    assert done.returncode == 0, done.stderr
    assert "peak" in done.stdout and "GFLOP/s" in done.stdout
    rows = table_rows(done.stdout)
    assert [(r[0], r[1], r[3], r[4], r[6]) for r in rows] == [
        (path, "shallow", members, layout, block)
        for path in ("fast", "reference")
        for members, layout in (("1", "-"), ("2", "devices"))
        for block in ("2",)
    ]
    for row in rows:
        assert float(row[7]) > 0 and float(row[13]) > 0  # ms/step, s/epoch
        assert float(row[10]) > 0 and float(row[11]) > 0  # GFLOP/s, % of peak
        assert row[8] == "-" if row[3] == "1" else row[8].endswith("x")  # vs 1 net


@pytest.mark.parametrize(
    "flag, message",
    [
        (
            "--ensemble_layouts=pmap",
            "unknown layout 'pmap'; choose from auto, vmap, unrolled, devices, processes",
        ),
        ("--steps=-1", "--steps must be at least 1"),
        ("--batch_sizes=0", "--batch_sizes takes whole numbers of at least 1"),
        ("--batch_sizes=50001", "--batch_sizes must be at most 50,000"),
        ("--paths=fastest", "unknown path 'fastest'"),
        ("--nets=", "--nets takes at least one of shallow, conv1"),
        ("--steps_per_call=0", "--steps_per_call takes auto or whole numbers of at least 1"),
    ],
)
def test_benchmark_refuses_bad_input_in_one_line(flag, message):
    done = run_module("launch.benchmark", "--nets=shallow", flag)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr


def test_the_timed_steps_go_on_through_as_many_epochs_as_they_take():
    """`step_indices` gives every step asked for, beyond one epoch's, for one net and for a
    stack of member keys."""
    import numpy as np

    from lib.nielsen import train
    from lib.nielsen.timing import step_indices

    for members, shape in ((1, (7, 3)), (2, (7, 2, 3))):
        key = train.run_keys(0, members)[1]
        idx = np.asarray(step_indices(key, 10, 3, 7))
        epochs = [np.asarray(train.epoch_indices(key, e, 10, 3)) for e in range(3)]
        assert idx.shape == shape, idx.shape
        np.testing.assert_array_equal(idx, np.concatenate(epochs)[:7])
        assert not np.array_equal(epochs[0], epochs[1])


def test_the_processes_layout_times_nets_in_pinned_processes_at_once():
    """One row per ensemble size: the slowest process's step, every net's examples, and
    the step against one net's."""
    done = run_module(
        "launch.benchmark",
        "--nets=shallow",
        "--batch_sizes=10",
        "--ensemble=1,3",
        "--ensemble_layouts=processes",
        "--steps=4",
        "--repeats=2",
    )
    assert done.returncode == 0, done.stderr
    assert "fork" not in done.stderr, done.stderr
    one, three = table_rows(done.stdout)
    assert (three[3], three[4]) == ("3", "processes")
    ms, examples = float(three[7]), float(three[9].replace(",", ""))
    assert examples == pytest.approx(3 * 10 / ms * 1e3, rel=0.01)
    assert float(three[8].removesuffix("x")) == pytest.approx(ms / float(one[7]), rel=0.03)


def test_a_failing_process_of_the_processes_layout_is_one_line():
    code = """
import subprocess, sys, tempfile
from launch import benchmark
from lib.core.errors import UserError
errors = tempfile.TemporaryFile("w+")
child = subprocess.Popen(
    [sys.executable, "-c", "import sys; print('ready'); sys.exit('out of memory')"],
    stdout=subprocess.PIPE, stderr=errors, text=True,
)
assert benchmark.next_line(child, errors, "ready") == "ready\\n"
try:
    benchmark.next_line(child, errors, "{")
except UserError as e:
    print(e)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "a process of the processes layout failed: out of memory"


@pytest.mark.parametrize(
    "args, message",
    [
        (["0"], "pinned: error: give the cores and the module"),
        (["9999", "x"], "cannot pin"),
        (["0", "launch.nope"], "pinned: error: no module named 'launch.nope'"),
    ],
)
def test_pinned_refuses_bad_input_in_one_line(args, message):
    done = subprocess.run(
        [sys.executable, "-m", "launch.pinned", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
