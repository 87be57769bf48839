"""Training speed of the MNIST ladder: ms/step, examples/s, GFLOP/s and seconds per epoch.

    python -m launch.benchmark                                  # every rung, batch 10 and 100
    python -m launch.benchmark --nets=relu,dropout --paths=fast,reference
    python -m launch.benchmark --nets=dropout --batch_sizes=10 --ensemble=1,2,5 \
        --ensemble_layouts=devices,unrolled,vmap
    python -m launch.benchmark --nets=relu --batch_sizes=10 --ensemble=1,2 \
        --ensemble_layouts=devices,processes                    # against their floor

Data are random arrays of MNIST's shape living on the device (speed does not
depend on pixel values). Each case compiles, warms up, then times `--steps`
training steps `--repeats` times and keeps the fastest (other work on the machine
only ever slows a timing down), with the epoch driver the run would use (lax.scan
on accelerators, a host loop on CPU; `--driver` forces one). Seconds per epoch
are for the rung's real epoch: 50,000 images, or 250,000 for the expanded set.
An ensemble is timed in each of `--ensemble_layouts` (`lib.nielsen.train.resolve_layout`);
"vs 1 net" is its time per step over one net's, where that case is in the table. The
layout "processes" is the benchmark's own: each net in a process of its own pinned to a
core (net m to core m of those this process may use, cycling through them), the processes
starting each timing together; its row is the slowest process's step. No run trains this
way (the nets could not vote without gathering); it is the floor for the in-process
layouts: as fast as nets side by side go when they share nothing but the machine.

`--paths` times the CPU formulations of `lib.core.xla_cpu` side by side, each in a
process of its own (XLA reads its flags once per process): "fast" (the default)
and "reference", the formulation the project used before.

GFLOP/s counts each example's training work as 3 x 2 x its forward multiply-adds
(`lib.nielsen.nets.forward_macs`; a forward pass, then the gradients with respect
to activations and to weights, each about as costly) x examples per second. The
machine's float32 peak is cores x clock x FLOPs per cycle per core, read off this
machine: the cores this process may use, the clock /proc/cpuinfo reports, and
2 FMA units x 2 FLOPs x the vector lanes (16 float32 with AVX-512, 8 with AVX2;
AMD's Zen 4, CPU family 25, executes 512-bit operations as two 256-bit halves, so
8). On accelerators, or where these cannot be read, `--peak_gflops` gives it.

Targets on one H100/H200 for the dropout rung on the expanded set: at most
3.3 s per epoch at batch 10 and 0.65 s at batch 100, and the five-net ensemble
trained as one program in at most twice one net's time.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

import jax
from absl import flags

from experiments import common
from launch import timing_flags
from lib.core import xla_cpu
from lib.core.errors import UserError
from lib.nielsen import nets, train
from lib.nielsen.timing import time_case

# The layouts a run trains in, and the benchmark's own: separate processes, one per core.
LAYOUTS = (*train.LAYOUTS, "processes")

FLAGS = flags.FLAGS
flags.DEFINE_list("nets", list(nets.NETS[:-1]), "Rungs to time (the ensemble is --ensemble).")
flags.DEFINE_list("ensemble", ["1"], "Numbers of nets trained at once.")
flags.DEFINE_list(
    "ensemble_layouts", ["auto"], f"Ensemble layouts to time, of {', '.join(LAYOUTS)}."
)
flags.DEFINE_enum("driver", "auto", train.DRIVERS, "Epoch driver.")
flags.DEFINE_list(
    "steps_per_call",
    ["auto"],
    "Steps per call to time (whole numbers): the host loop's block of steps, or the length "
    "of each of the scan driver's scans; or auto: what a run uses (1000 for the scan driver).",
)
flags.DEFINE_list(
    "paths", [], f"CPU formulations to time, of {', '.join(xla_cpu.PATHS)}; default: this one."
)
flags.DEFINE_float("peak_gflops", None, "The device's float32 peak; default: read off the CPU.")
flags.DEFINE_bool(
    "wait_for_go",
    False,
    "Before each timing, print 'ready' and wait for a line on standard input (how the "
    "processes layout starts its processes' timings together).",
)


def cpu_peak_gflops() -> tuple[float, str] | None:
    """(peak GFLOP/s, how it was computed) for this process's CPU cores, or None."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return None

    def field(name: str) -> str:
        for line in info.splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
        return ""

    cpu_flags, mhz = field("flags").split(), field("cpu MHz")
    if not mhz:
        return None
    lanes = 16 if "avx512f" in cpu_flags else 8 if "avx2" in cpu_flags else 4
    if lanes == 16 and field("vendor_id") == "AuthenticAMD" and field("cpu family") == "25":
        lanes = 8  # Zen 4: 512-bit operations in two 256-bit halves
    cores = xla_cpu.cores()
    per_cycle = 2 * 2 * lanes
    peak = cores * float(mhz) / 1e3 * per_cycle
    return peak, f"{cores} cores x {float(mhz) / 1e3:.2f} GHz x {per_cycle} FLOP/cycle"


def check_flags() -> None:
    if not FLAGS.nets:
        raise UserError(f"--nets takes at least one of {', '.join(nets.NETS[:-1])}")
    for name in FLAGS.nets:
        if name not in nets.RUNGS:
            raise UserError(f"unknown net '{name}'; choose from {', '.join(nets.NETS)}")
    for layout in FLAGS.ensemble_layouts:
        if layout not in LAYOUTS:
            raise UserError(f"unknown layout '{layout}'; choose from {', '.join(LAYOUTS)}")
    for path in FLAGS.paths:
        if path not in xla_cpu.PATHS:
            raise UserError(f"unknown path '{path}'; choose from {', '.join(xla_cpu.PATHS)}")
    timing_flags.check()
    if FLAGS.peak_gflops is not None and FLAGS.peak_gflops <= 0:
        raise UserError(f"--peak_gflops must be positive, got {FLAGS.peak_gflops}")
    common.positive_ints("ensemble")
    if "processes" in FLAGS.ensemble_layouts and not hasattr(os, "sched_setaffinity"):
        raise UserError("the processes layout pins a process to each core, which needs Linux")
    blocks()


def blocks() -> list[int | None]:
    """--steps_per_call as whole numbers, None for auto."""
    if FLAGS.steps_per_call == ["auto"]:
        return [None]
    try:
        values = [int(v) for v in FLAGS.steps_per_call]
    except ValueError:
        got = ",".join(FLAGS.steps_per_call)
        raise UserError(f"--steps_per_call takes auto or whole numbers, got {got}") from None
    if not values or min(values) < 1:
        raise UserError("--steps_per_call takes auto or whole numbers of at least 1")
    return values


def cases_here(steps: int) -> Iterator[dict]:
    before_each = wait_for_go if FLAGS.wait_for_go else None
    for name in FLAGS.nets:
        for batch in timing_flags.batch_sizes():
            for members in common.positive_ints("ensemble"):
                for layout in FLAGS.ensemble_layouts if members > 1 else ["auto"]:
                    for block in blocks():
                        if layout == "processes":
                            yield processes_case(name, batch, members, steps, block)
                            continue
                        yield time_case(
                            name,
                            batch,
                            members,
                            layout,
                            steps,
                            FLAGS.driver,
                            FLAGS.repeats,
                            block,
                            before_each=before_each,
                        )


def wait_for_go() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


def processes_case(name: str, batch: int, members: int, steps: int, block: int | None) -> dict:
    """`members` nets as separate processes, process m pinned to this process's core
    m % cores, each timing one net's steps at the same moments as the others (each timing
    starts when all are ready): as fast as nets side by side can go without sharing a
    process, the floor for the in-process layouts. The row is the slowest process's."""
    cores = sorted(os.sched_getaffinity(0))
    argv = [
        *("launch.benchmark", f"--nets={name}", f"--batch_sizes={batch}"),
        *("--ensemble=1", f"--steps={steps}", f"--repeats={FLAGS.repeats}"),
        *(f"--driver={FLAGS.driver}", f"--steps_per_call={block or 'auto'}"),
        *(f"--paths={xla_cpu.path()}", "--jsonl", "--wait_for_go"),
    ]
    with contextlib.ExitStack() as stack:
        children = []
        for m in range(members):
            errors = stack.enter_context(tempfile.TemporaryFile("w+"))
            core = str(cores[m % len(cores)])
            child = subprocess.Popen(
                [sys.executable, "-m", "launch.pinned", core, *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                env=xla_cpu.child_environment(xla_cpu.path()),
            )
            stack.callback(child.wait)
            stack.callback(child.kill)  # at the end, or at a failure: none is left running
            children.append((child, errors))
        for _ in range(FLAGS.repeats):
            for child, errors in children:
                next_line(child, errors, "ready")
            for child, _ in children:
                child.stdin.write("go\n")
                child.stdin.flush()
        rows = [json.loads(next_line(child, errors, "{")) for child, errors in children]
    slowest = max(rows, key=lambda row: row["ms_per_step"])
    return {
        **slowest,
        "members": members,
        "layout": "processes",
        "examples_per_s": members * slowest["examples_per_s"],
        "gflops": members * slowest["gflops"],
    }


def next_line(child: subprocess.Popen, errors: IO[str], start: str) -> str:
    """The child's next line of output that starts with `start`; a UserError with its last
    line of errors if it ends first."""
    for line in child.stdout:
        if line.startswith(start):
            return line
    child.wait()
    errors.seek(0)
    last = (errors.read().strip().splitlines() or ["no output"])[-1]
    raise UserError(f"a process of the processes layout failed: {last}")


def cases_in_process(path: str) -> list[dict]:
    """The same cases timed by a process of its own running CPU path `path`."""
    argv = [a for a in sys.argv[1:] if not a.startswith(("--paths", "--jsonl"))]
    done = subprocess.run(
        [sys.executable, "-m", "launch.benchmark", *argv, f"--paths={path}", "--jsonl"],
        env=xla_cpu.child_environment(path),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"the {path} path's benchmark failed: {last}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def benchmark() -> None:
    check_flags()
    steps = timing_flags.steps()
    paths = FLAGS.paths or [xla_cpu.path()]
    if FLAGS.jsonl:
        for row in cases_here(steps):
            print(json.dumps(row), flush=True)
        return
    print_header(steps)
    if paths == [xla_cpu.path()]:
        rows = cases_here(steps)
    else:
        rows = (row for path in paths for row in cases_in_process(path))
    print_table(rows)


def print_header(steps: int) -> None:
    device = jax.devices()[0].device_kind
    peak = peak_gflops()
    how = f"peak {peak[0]:,.0f} GFLOP/s float32 ({peak[1]})" if peak else "peak unknown"
    print(
        f"device: {device} ({jax.default_backend()}), the fastest of {FLAGS.repeats} timings "
        f"of {steps} steps per case; {how}\n"
    )


def peak_gflops() -> tuple[float, str] | None:
    if FLAGS.peak_gflops:
        return FLAGS.peak_gflops, "--peak_gflops"
    return cpu_peak_gflops() if jax.default_backend() == "cpu" else None


def print_table(rows: Iterable[dict]) -> None:
    """The table, a row as each case is timed; "vs 1 net" needs that case's row before."""
    peak = peak_gflops()
    one: dict[tuple, float] = {}
    print(
        "| path | net | batch | nets | layout | driver | steps/call | ms/step | vs 1 net "
        "| examples/s | GFLOP/s | % of peak | epoch | s/epoch |"
    )
    print("| --- | --- |" + " ---: |" * 2 + " --- |" * 2 + " ---: |" * 8)
    for r in rows:
        case = (r["path"], r["net"], r["batch"], r.get("steps_per_call", 1))
        if r["members"] == 1:
            one[case] = r["ms_per_step"]
        single = one.get(case)
        ratio = f"{r['ms_per_step'] / single:.2f}x" if single and r["members"] > 1 else "-"
        share = f"{100 * r['gflops'] / peak[0]:.1f}" if peak else "-"
        print(
            f"| {r['path']} | {r['net']} | {r['batch']} | {r['members']} | {r['layout']} "
            f"| {r['driver']} | {r.get('steps_per_call', 1)} | {r['ms_per_step']:.3f} | {ratio} "
            f"| {r['examples_per_s']:,.0f} "
            f"| {r['gflops']:.1f} | {share} | {r['epoch_examples']:,} | {r['s_per_epoch']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    common.run_command(benchmark)
