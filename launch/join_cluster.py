"""Run a module as one process of a JAX cluster, for modules that do not join one themselves.

    python -m launch.join_cluster MODULE [flags for MODULE]

joins the cluster, then runs MODULE as `python -m MODULE` would. The cluster is
the one launch.local_cluster describes in JAX_* environment variables, or else
the one JAX detects by itself: a SLURM job step (srun), an Open MPI job (mpirun),
or the workers of a Cloud TPU pod.

    python -m launch.local_cluster --processes=2 --devices_per_process=4 \\
        launch.join_cluster experiments.mnist_convnet --workdir=runs/two_processes
    srun --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 \\
        python -m launch.join_cluster experiments.mnist_convnet --workdir=/shared/runs/x
"""

from __future__ import annotations

import os
import runpy
import sys

from launch.cli import module_exists
from lib.core.parallel import initialize_from_env


def join() -> None:
    if "JAX_NUM_PROCESSES" in os.environ:  # launch.local_cluster's, one process or more
        initialize_from_env()
        return
    import jax

    try:
        jax.distributed.initialize()  # SLURM, Open MPI and Cloud TPU fill in every argument
    except ValueError:
        print(
            "join_cluster: error: no cluster found; start the processes with "
            "launch.local_cluster, srun, mpirun, or on every worker of a TPU pod",
            file=sys.stderr,
        )
        sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1].startswith("-"):
        print(
            "join_cluster: error: give the module to run, e.g. experiments.mnist_convnet",
            file=sys.stderr,
        )
        sys.exit(2)
    module = argv[1]
    if not module_exists(module):
        print(f"join_cluster: error: no module named {module!r}", file=sys.stderr)
        sys.exit(2)
    join()
    sys.argv = [module, *argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv)
