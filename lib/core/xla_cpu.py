"""How XLA runs the project on CPUs, settled before JAX starts its backends.

Importing `lib` calls `configure()`, which adds two XLA flags to `XLA_FLAGS` unless
the environment already sets them (a flag given by the user always wins):

- `--xla_cpu_experimental_ynn_fusion_type=` turns off XLA's YNNPACK fusions. This
  jaxlib routes every convolution through them, and for the small convolutions of
  the book's nets, their kernel gradients above all, they are several times slower
  than XLA's own CPU kernels (`python -m launch.benchmark --paths=fast,reference`).
- `--xla_force_host_platform_device_count=<cores>` makes each core a JAX device, so
  several nets (an ensemble's members, a study's seeds) run one per core at once
  (`lib.nielsen.train.resolve_layout`'s "devices" layout); one net's batch stays on one device.

`CLASSIC_NETS_CPU_PATH=reference` keeps XLA's defaults and the `reduce_window`
max-pool: the formulation the project used before, kept so the comparison can be
rerun. It must be set before the process starts JAX.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

ENV = "CLASSIC_NETS_CPU_PATH"
PATHS = ("fast", "reference")
YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type="
DEVICE_COUNT = "--xla_force_host_platform_device_count"


def path(env: MutableMapping[str, str] = os.environ) -> str:
    """The CPU formulation this process runs: "fast" (the default) or "reference"."""
    value = env.get(ENV, "fast")
    if value not in PATHS:
        raise ValueError(f"{ENV}={value!r}; choose from {', '.join(PATHS)}")
    return value


def fast_path() -> bool:
    """Whether this process computes on a CPU by the project's own formulations (its
    pooling and convolution gradients): on CPU backends, unless the reference path runs."""
    import jax

    return jax.default_backend() == "cpu" and path() == "fast"


def cores() -> int:
    """The cores this process may run on (a `taskset` mask counts, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_added: list[str] = []  # the flags `configure` added to this process's own XLA_FLAGS


def configure(env: MutableMapping[str, str] = os.environ) -> None:
    """Add the project's XLA CPU flags to `env["XLA_FLAGS"]`, keeping any the user set."""
    flags = env.get("XLA_FLAGS", "").split()
    added = []
    if path(env) == "fast":
        if not any(f.startswith("--xla_cpu_experimental_ynn_fusion_type") for f in flags):
            added.append(YNN_OFF)
        if not any(f.startswith(DEVICE_COUNT) for f in flags):
            added.append(f"{DEVICE_COUNT}={cores()}")
    env["XLA_FLAGS"] = " ".join(flags + added)
    if env is os.environ:
        _added[:] = added


def child_environment(cpu_path: str) -> dict[str, str]:
    """This process's environment for a child process that runs CPU path `cpu_path`: the
    user's XLA flags without those `configure` added here, so that the child's own
    `configure` decides (a reference child gets XLA's defaults, YNNPACK included)."""
    path({ENV: cpu_path})  # refuses an unknown path
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f not in _added]
    return {**os.environ, ENV: cpu_path, "XLA_FLAGS": " ".join(flags)}
