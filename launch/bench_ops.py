"""The parts of the relu rung's training step, timed one by one: ms per call and share of the step.

    python -m launch.bench_ops                          # batch 10 and 100, every op
    python -m launch.bench_ops --batch_sizes=100 --ops=step,conv2_input_grad
    taskset -c 1 python -m launch.bench_ops             # one core of a 2-core CPU

The ops are those of the book's relu rung (`lib.nielsen.nets`: ConvPool 20 5x5 on
28x28x1, ConvPool 40 5x5 on 12x12x20, each pooling 2x2), in each formulation
`lib.nielsen.layers` has for them:

- conv1_forward, conv2_forward: the valid convolution (XLA's, in either formulation);
- conv1_kernel_grad, conv2_kernel_grad, conv2_input_grad: one gradient of `conv_valid`
  (`jax.vjp` with respect to the kernel or the input alone), "xla" (the convolutions XLA's
  autodiff makes) or "patches" (matrix products; the second layer's kernel gradient is
  XLA's in both). The first layer's input gradient is not needed in training;
- pool1, pool2: 2x2 max-pooling of conv1's output (24x24x20) and of conv2's (8x8x40),
  forward and backward, "window" or "mask" (`lib.nielsen.layers.max_pool`);
- step: one whole training step of one net, built and timed as `launch.benchmark
  --nets=relu` does (`lib.nielsen.timing.time_case`: the run's epoch driver and steps per
  call); its formulation is the one this process trains with (`resolve_conv`,
  `resolve_pool`, set by `lib.core.xla_cpu`).

Each op (`lib.nielsen.timing.parts`) is jitted alone, with random normal float32 inputs of
its shapes already on the device; it compiles once, then `--steps` calls are timed
`--repeats` times, blocking on the last result, and the fastest is kept (other work on
the machine only ever slows a timing down). "share of step" is an op's ms over the
step's at that batch size ("-" when --ops leaves the step out).

On a 2-core CPU, pin it to one core (`taskset -c 1 python -m launch.bench_ops`) to time
the parts as one net's training runs them on one core, as the README's speed section did.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import jax
from absl import flags

from experiments import common
from launch import timing_flags
from lib.core import xla_cpu
from lib.core.errors import UserError
from lib.nielsen import layers, timing

OPS = ("step", *timing.PARTS)

FLAGS = flags.FLAGS
flags.DEFINE_list("ops", list(OPS), f"Ops to time, of {', '.join(OPS)}.")


def step_ms(batch: int, steps: int, repeats: int) -> float:
    """ms per training step of one relu net, timed as `launch.benchmark` times it."""
    case = timing.time_case(timing.PARTS_NET, batch, 1, "auto", steps, "auto", repeats)
    return case["ms_per_step"]


def rows(
    batch_sizes: Sequence[int], names: Sequence[str], steps: int, repeats: int
) -> Iterator[dict]:
    """A row per op and formulation at each batch size, the step first (the shares need it)."""
    for batch in batch_sizes:
        step = step_ms(batch, steps, repeats) if "step" in names else None
        if step is not None:
            how = f"{layers.resolve_conv('auto')}, {layers.resolve_pool('auto')}"
            yield {"op": "step", "formulation": how, "batch": batch, "ms": step, "share": None}
        for op in timing.parts(batch, names):
            ms = timing.fastest_ms(op.fn, op.args, steps, repeats)
            share = 100 * ms / step if step else None
            yield {
                "op": op.name,
                "formulation": op.formulation,
                "batch": batch,
                "ms": ms,
                "share": share,
            }


def check_flags() -> None:
    for name in FLAGS.ops:
        if name not in OPS:
            raise UserError(f"unknown op '{name}'; choose from {', '.join(OPS)}")
    if not FLAGS.ops:
        raise UserError(f"--ops takes at least one of {', '.join(OPS)}")
    timing_flags.check()


def bench_ops() -> None:
    check_flags()
    steps = timing_flags.steps()
    timed = rows(timing_flags.batch_sizes(), FLAGS.ops, steps, FLAGS.repeats)
    if FLAGS.jsonl:
        for row in timed:
            print(json.dumps(row), flush=True)
        return
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), the fastest of "
        f"{FLAGS.repeats} timings of {steps} calls per case; cores this process may use: "
        f"{xla_cpu.cores()}\n"
    )
    print("| op | formulation | batch | ms | share of step |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in timed:
        share = "-" if r["share"] is None else f"{r['share']:.1f}%"
        print(
            f"| {r['op']} | {r['formulation']} | {r['batch']} | {r['ms']:.3f} | {share} |",
            flush=True,
        )


if __name__ == "__main__":
    common.run_command(bench_ops)
