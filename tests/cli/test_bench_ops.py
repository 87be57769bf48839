"""The relu step's parts timed one by one: every op's row in each formulation, the step's
row, a clear line for bad input, and formulations that compute the same numbers."""

from commands import run_module

ROWS = [
    ("step", None),
    ("conv1_forward", "xla"),
    ("conv1_kernel_grad", "xla"),
    ("conv1_kernel_grad", "patches"),
    ("pool1", "window"),
    ("pool1", "mask"),
    ("conv2_forward", "xla"),
    ("conv2_kernel_grad", "xla"),
    ("conv2_kernel_grad", "patches"),
    ("conv2_input_grad", "xla"),
    ("conv2_input_grad", "patches"),
    ("pool2", "window"),
    ("pool2", "mask"),
]


def table_rows(stdout: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # without the header lines


def test_bench_ops_prints_a_row_per_op_and_formulation_and_the_step():
    done = run_module("launch.bench_ops", "--batch_sizes=2", "--steps=3", "--repeats=1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("device: ") and "3 calls per case" in done.stdout
    rows = table_rows(done.stdout)
    assert [(r[0], r[1]) for r in rows[1:]] == ROWS[1:]
    assert rows[0][0] == "step" and rows[0][4] == "-"
    for row in rows:
        assert row[2] == "2" and float(row[3]) > 0
    for row in rows[1:]:
        assert row[4].endswith("%") and float(row[4][:-1]) > 0


def test_bench_ops_refuses_an_unknown_op_in_one_line():
    done = run_module("launch.bench_ops", "--ops=nonsense")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: unknown op 'nonsense'; choose from step, conv1_forward, conv1_kernel_grad, "
        "pool1, conv2_forward, conv2_kernel_grad, conv2_input_grad, pool2"
    ]


def test_the_formulations_timed_compute_the_same_numbers():
    """The patches and xla gradients, and the window and mask pooling, of the very inputs
    the command times."""
    import jax
    import numpy as np

    from lib.nielsen import timing

    parts = {(op.name, op.formulation): op for op in timing.parts(3)}
    pairs = {"conv1_kernel_grad": ("xla", "patches"), "conv2_kernel_grad": ("xla", "patches"),
             "conv2_input_grad": ("xla", "patches"), "pool1": ("window", "mask"),
             "pool2": ("window", "mask")}  # fmt: skip
    for name, (a, b) in pairs.items():
        want, got = (jax.tree.leaves(parts[name, f].fn(*parts[name, f].args)) for f in (a, b))
        assert len(want) == len(got) == (2 if name.startswith("pool") else 1), name
        for w, g in zip(want, got, strict=True):
            w, g = np.asarray(w), np.asarray(g)
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max(), err_msg=name)
