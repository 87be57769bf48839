"""Run a module as `python -m` does, pinned to some cores first (as `taskset -c` would):

    python -m launch.pinned CORES MODULE [ARGS...]      # CORES: e.g. 1 or 0,1

The pinning comes before the module, and `lib` with it, is imported: importing `lib` sets
XLA's CPU device count from the cores the process may use (`lib.core.xla_cpu`).
`launch.benchmark`'s processes layout starts its processes this way.
"""

from __future__ import annotations

import os
import runpy
import sys

from launch.cli import module_exists


def usage_error(message: str) -> None:
    """As `launch.join_cluster`, the other command that runs a module: one line, status 2."""
    print(f"pinned: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        usage_error("give the cores and the module to run, e.g. 1 launch.benchmark")
    cores, module, *args = argv
    try:
        os.sched_setaffinity(0, {int(core) for core in cores.split(",")})
    except (ValueError, OSError) as e:
        usage_error(f"cannot pin to cores '{cores}': {e}")
    if not module_exists(module):
        usage_error(f"no module named {module!r}")
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
