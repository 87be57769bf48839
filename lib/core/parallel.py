"""Data parallelism: a device mesh with a `data` axis, batch sharded, parameters replicated.

`jax.jit` over arrays laid out with these shardings is all it takes: XLA partitions
the step and inserts the gradient all-reduce. The same code runs on one CPU, on
simulated devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`), on a GPU,
or across hosts joined by `jax.distributed.initialize()`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lib.core.errors import UserError

DATA_AXIS = "data"


def initialize_from_env() -> int:
    """Joins the cluster that JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID
    describe (as launch.local_cluster sets them); returns the process count.

    Does nothing (and returns 1) when JAX_NUM_PROCESSES is unset or 1, so a module
    can call it unconditionally. The CPU backend needs no extra setting: JAX's
    default cross-process CPU collectives (gloo over TCP) carry the all-reduce.
    """
    num_processes = int(os.environ.get("JAX_NUM_PROCESSES", "1"))
    if num_processes <= 1:
        return 1
    if jax.distributed.is_initialized():
        return num_processes
    missing = [v for v in ("JAX_COORDINATOR_ADDRESS", "JAX_PROCESS_ID") if v not in os.environ]
    if missing:
        raise UserError(
            f"JAX_NUM_PROCESSES={num_processes} but {' and '.join(missing)} unset: set them "
            "for every process, or start the processes with launch.local_cluster"
        )
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=num_processes,
        process_id=int(os.environ["JAX_PROCESS_ID"]),
        # Explicit values must win over a SLURM or MPI environment this may run inside.
        cluster_detection_method="deactivate",
    )
    return num_processes


def join_cluster() -> int:
    """Joins a multi-host JAX cluster when the environment describes one; returns the
    process count.

    Explicit JAX_* variables (`initialize_from_env`) win; otherwise an srun step, an
    mpirun job or a GKE TPU slice (TPU_WORKER_HOSTNAMES) is left to
    `jax.distributed.initialize` to read. Elsewhere (a Cloud TPU pod on GCE) start the
    run under launch.join_cluster, which joins first.
    """
    env = os.environ
    if jax.distributed.is_initialized():
        return jax.process_count()
    if "JAX_COORDINATOR_ADDRESS" in env:
        return initialize_from_env()
    in_slurm_step = "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1
    in_mpi = int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    in_tpu_pod = "," in env.get("TPU_WORKER_HOSTNAMES", "")
    if in_slurm_step or in_mpi or in_tpu_pod:
        jax.distributed.initialize()
    return jax.process_count()


class DeviceCountError(UserError, ValueError):
    """More devices asked for than there are."""


def check_device_count(num_devices: int | None) -> None:
    """Refuses a `--num_devices` this machine cannot give (None: let the mesh choose)."""
    count = jax.device_count()
    if num_devices is not None and not 0 < num_devices <= count:
        raise DeviceCountError(
            f"--num_devices={num_devices}, but this machine has {count} "
            f"{jax.default_backend()} device(s); give at most {count}"
        )


def make_mesh(num_devices: int | None = None, batch_size: int | None = None) -> Mesh:
    """A 1-D mesh over `num_devices` devices (by default all of them, but one CPU).

    With `batch_size` given and `num_devices` not, the mesh takes the largest number
    of devices that divides the batch, so the book's batch of 10 still runs on a
    machine with eight accelerators (on two of them). A single process's CPU devices
    are its cores (`lib.core.xla_cpu`): XLA runs a batch split over them slower than on
    one, so by default they serve whole nets instead (`train.resolve_layout`).
    """
    devices = jax.devices()
    check_device_count(num_devices)
    if num_devices is None and jax.default_backend() == "cpu" and jax.process_count() == 1:
        num_devices = 1
    if num_devices is None:
        num_devices = len(devices)
        if batch_size is not None:
            while batch_size % num_devices:
                num_devices -= 1
    return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Shards axis `batch_axis` of an array over the mesh's data axis."""
    return NamedSharding(mesh, P(*([None] * batch_axis), DATA_AXIS))


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Every leaf copied whole to every device of the mesh (works across processes)."""
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def put_process_batch(tree: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
    """Assemble a global batch from each process's share along `batch_axis`."""
    sharding = batch_sharding(mesh, batch_axis)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
    )
