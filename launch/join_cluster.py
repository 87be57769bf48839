"""Run a module as one process of a JAX cluster, for modules that do not join one themselves.

    python -m launch.local_cluster --processes=2 --devices_per_process=4 \\
        launch.join_cluster experiments.mnist_convnet --workdir=runs/two_processes ...

joins the cluster that the JAX_* environment variables of launch.local_cluster
describe, then runs MODULE as `python -m MODULE` would, with the rest of the
command line as its arguments.
"""

from __future__ import annotations

import runpy
import sys

from launch.local_cluster import initialize_from_env


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1].startswith("-"):
        print("join_cluster: error: give the module to run, e.g. experiments.mnist_convnet",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    initialize_from_env()
    module = argv[1]
    sys.argv = [module, *argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv)
