"""Save and resume training with Orbax.

A checkpoint is the train state (a pytree of arrays) plus a JSON record of the
run so far. Orbax writes each checkpoint to a temporary folder and renames it
when complete, so a run killed mid-write leaves the previous checkpoint intact.
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

    def save(self, step: int, state: Any, record: dict) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(self, state_like: Any, step: int | None = None) -> tuple[Any, dict]:
        """The state (with the shapes, dtypes and shardings of `state_like`) and record."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.record

    def close(self) -> None:
        self._manager.close()
