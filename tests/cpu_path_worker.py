"""Trains rungs of the ladder for a few hundred steps and saves their parameters, so a
test can compare the CPU paths of `lib.core.xla_cpu`, each of which a process fixes at start.

    python tests/cpu_path_worker.py OUT.npz conv2,relu,dropout STEPS [SNAPSHOT,...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHUNK = 20  # steps per call of the runner


def train_params(
    rung: str, steps: int, nudge: bool = False, snapshots: tuple[int, ...] = (), **net
) -> dict:
    """The parameters of `rung` after `steps` of the book's training (batch 10, plain SGD,
    its lambda and dropout, the expanded set where the rung has it) on 2,000 images (at
    most one epoch: a rung without the expanded set stops after 200 steps),
    keyed by their path; `net` overrides fields of the rung's BookNet; "init/..." keys
    hold the parameters before training and "at<s>/..." those after step s of
    `snapshots` (the run goes on unchanged: a step's randomness follows its number).
    `nudge` moves every initial weight by one unit in the last place, to measure how far
    float32 rounding alone carries a run."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lib.core import data
    from lib.nielsen import nets, train

    spec = nets.RUNGS[rung]
    model = nets.create(rung, **net)
    images = data.mnist(train_size=2000).train
    n = 5 * len(images) if spec.expanded else len(images)
    optimizer = train.make_optimizer("sgd", spec.learning_rate)
    step = train.make_train_step(
        model, optimizer, 0.5 * spec.l2 / (n // 10), train.make_batch_fn(spec.expanded)
    )
    runner = train.EpochRunner(step, "loop")
    init_key, shuffle_key, step_key = train.run_keys(0)
    state = train.init_state(model, optimizer, init_key, jnp.asarray(images.images[:1]))
    batch = {"images": jnp.asarray(images.images), "labels": jnp.asarray(images.labels)}
    idx = train.epoch_indices(shuffle_key, 0, n, 10)[:steps]
    steps = len(idx)  # at most one epoch: 200 steps for a rung without the expanded set
    if nudge:
        nudged = jax.tree.map(lambda w: np.nextafter(w, np.float32(np.inf)), state.params)
        state = state._replace(params=jax.tree.map(jnp.asarray, nudged))
    kept = {"init/": jax.device_get(state.params)}
    # Calls of CHUNK steps each: one shape of index block, so one program per rung (the
    # runner compiles for each length of block it is given).
    if steps % CHUNK or any(s % CHUNK for s in snapshots):
        raise ValueError(f"steps and snapshots must be multiples of {CHUNK}")
    for end in range(CHUNK, steps + 1, CHUNK):
        state, _ = runner(state, batch, idx[end - CHUNK : end], step_key)
        if end == steps:
            kept[""] = jax.device_get(state.params)
        elif end in snapshots:
            kept[f"at{end}/"] = jax.device_get(state.params)
    out = {}
    for prefix, params in kept.items():
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            out[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)
    return out


def main(out: str, rungs: str, steps: str, snapshots: str = "") -> None:
    import numpy as np

    arrays = {}
    at = tuple(int(s) for s in snapshots.split(",") if s)
    for rung in rungs.split(","):
        for name, value in train_params(rung, int(steps), snapshots=at).items():
            arrays[f"{rung}{name}"] = value
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:])
