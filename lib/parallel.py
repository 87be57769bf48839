"""Data parallelism: a device mesh with a `data` axis, batch sharded, parameters replicated.

`jax.jit` over arrays laid out with these shardings is all it takes: XLA partitions
the step and inserts the gradient all-reduce. The same code runs on one CPU, on
simulated devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`), on a GPU,
or across hosts joined by `jax.distributed.initialize()`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None, batch_size: int | None = None) -> Mesh:
    """A 1-D mesh over `num_devices` devices (all of them by default).

    With `batch_size` given and `num_devices` not, the mesh takes the largest number
    of devices that divides the batch, so the book's batch of 10 still runs on a
    machine with eight accelerators (on two of them).
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
        if batch_size is not None:
            while batch_size % num_devices:
                num_devices -= 1
    if not 0 < num_devices <= len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}")
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
