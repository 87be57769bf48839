"""What a run writes to its workdir: config.json, metrics.jsonl, summary.json, TensorBoard events.

Only process 0 of a multi-process run writes; the others get a writer that
does nothing, so callers need no `if`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lib.errors import UserError


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, data: Mapping) -> None:
    """Write atomically: a reader (or a killed run) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def prepare_workdir(workdir: str | Path) -> Path:
    """Create the run's folder and make sure it can be written, or say what to do."""
    path = Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"cannot write to workdir {workdir} ({e.strerror}); choose another --workdir"
        ) from None
    return path


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsWriter:
    """metrics.jsonl plus TensorBoard scalars for one run."""

    def __init__(self, workdir: str | Path, enabled: bool | None = None):
        self.workdir = Path(workdir)
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None

    def _tensorboard(self, purge_step: int | None = None):
        if self._tb is None and self.enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=purge_step)
        return self._tb

    def reset(self, records: Iterable[Mapping], step_key: str = "epoch") -> None:
        """Rewrite metrics.jsonl to `records` (a resumed run's history at its checkpoint).

        TensorBoard events after the last record's `step_key` are dropped.
        """
        if not self.enabled:
            return
        records = list(records)
        lines = "".join(json.dumps(_jsonable(r), sort_keys=True) + "\n" for r in records)
        path = self.workdir / "metrics.jsonl"
        tmp = path.with_name(".metrics.jsonl.tmp")
        tmp.write_text(lines)
        os.replace(tmp, path)
        last = records[-1][step_key] if records else 0
        self._tensorboard(purge_step=last + 1)

    def write(self, record: Mapping, step_key: str = "epoch") -> None:
        if not self.enabled:
            return
        with open(self.workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable(record), sort_keys=True) + "\n")
        tb = self._tensorboard()
        step = int(record[step_key])
        for key, value in record.items():
            if key != step_key and isinstance(value, (int, float)) and not isinstance(value, bool):
                tb.add_scalar(key, value, step)
        tb.flush()

    def write_json(self, name: str, data: Mapping) -> None:
        if self.enabled:
            write_json(self.workdir / name, data)

    def write_array(self, name: str, array: np.ndarray) -> None:
        """`workdir/name` (.npy), written atomically."""
        if self.enabled:
            path = self.workdir / name
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                np.save(f, array)
            os.replace(tmp, path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
