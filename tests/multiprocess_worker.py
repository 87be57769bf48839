"""A few data-parallel SGD steps of a tiny softmax regression, as one process of a cluster.

Run by tests/test_multiprocess.py, either alone with eight simulated devices or as
one of two processes with four each (through launch.local_cluster). Every process
draws the same global batches, keeps only the rows its own devices hold, and
feeds that share; parameters are replicated. Process 0 alone writes the final
parameters to OUT_DIR/params.npz. Every process hands each step's loss to the project's
MetricsWriter (which lets process 0 alone write OUT_DIR/metrics.jsonl) and leaves a mark
in OUT_DIR/ran/ that it got this far.

    python tests/multiprocess_worker.py OUT_DIR
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib.core.parallel import initialize_from_env

STEPS = 4
GLOBAL_BATCH = 32
FEATURES = 6
CLASSES = 3


def process_rows(sharding, global_shape) -> slice:
    """The contiguous block of batch rows that this process's devices hold."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        rows = index[0]
        starts.append(rows.start or 0)
        stops.append(global_shape[0] if rows.stop is None else rows.stop)
    return slice(min(starts), max(stops))


def main(out_dir: str) -> None:
    initialize_from_env()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lib.core import parallel
    from lib.core.metrics import MetricsWriter

    mesh = parallel.make_mesh()
    data_sharding = parallel.batch_sharding(mesh)
    replicated = parallel.replicated(mesh)

    rng = np.random.default_rng(0)
    params = {
        "w": rng.normal(size=(FEATURES, CLASSES)).astype(np.float32),
        "b": np.zeros((CLASSES,), np.float32),
    }
    params = parallel.put_replicated(params, mesh)

    def loss_fn(params, x, y):
        logits = x @ params["w"] + params["b"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    def step(params, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        return jax.tree.map(lambda p, g: p - 0.5 * g, params, grads), loss

    step = jax.jit(step, out_shardings=(replicated, replicated))
    rows = process_rows(data_sharding, (GLOBAL_BATCH, FEATURES))
    writer = MetricsWriter(out_dir)
    for k in range(STEPS):
        x = rng.normal(size=(GLOBAL_BATCH, FEATURES)).astype(np.float32)
        y = rng.integers(0, CLASSES, size=(GLOBAL_BATCH,)).astype(np.int32)
        x, y = parallel.put_process_batch((x[rows], y[rows]), mesh)
        params, loss = step(params, x, y)
        writer.write({"epoch": k + 1, "loss": float(loss.addressable_data(0))})
    writer.close()
    os.makedirs(os.path.join(out_dir, "ran"), exist_ok=True)
    open(os.path.join(out_dir, "ran", f"process_{jax.process_index()}"), "w").close()

    if jax.process_index() == 0:
        # Replicated arrays are whole on every process, so no gather is needed.
        host = {k: np.asarray(v.addressable_data(0)) for k, v in params.items()}
        np.savez(
            os.path.join(out_dir, "params.npz"),
            loss=np.asarray(loss.addressable_data(0)),
            num_processes=jax.process_count(),
            num_devices=jax.device_count(),
            **host,
        )


if __name__ == "__main__":
    main(sys.argv[1])
