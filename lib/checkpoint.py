"""Save and resume training with Orbax.

A checkpoint is the train state (a pytree of arrays) plus a JSON record of the
run so far, and optionally the position of a Grain data iterator (one small file
per process, since each host reads its own share of the data). Orbax writes each
checkpoint to a temporary folder and renames it when complete, so a run killed
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """The latest few checkpoints of one run, numbered by training step."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self._manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=False,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, record: dict, data: Any = None) -> None:
        """`data`: an iterator with Grain's `get_state() -> bytes`, saved beside the state."""
        items = {"state": ocp.args.StandardSave(state), "record": ocp.args.JsonSave(record)}
        if data is not None:
            import grain  # registers its iterator handler with Orbax

            items["data"] = grain.checkpoint.CheckpointSave(data)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()

    def restore(
        self, state_like: Any, step: int | None = None, data: Any = None
    ) -> tuple[Any, dict]:
        """The state (with the shapes, dtypes and shardings of `state_like`) and record.

        `data`: a Grain DataLoader iterator, moved to the position saved with the state.
        """
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        items = {"state": ocp.args.StandardRestore(abstract), "record": ocp.args.JsonRestore()}
        if data is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointRestore(data)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored.state, restored.record

    def close(self) -> None:
        self._manager.close()
