"""What a run writes to its workdir: config.json, metrics.jsonl, summary.json, TensorBoard events.

Only process 0 of a multi-process run writes; the others get a writer that
does nothing, so callers need no `if`. A run holds its workdir (`hold_workdir`) and
resumes there only with the settings it started with (`accept_resume`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import sys
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lib.core.errors import UserError


def _process_index() -> int:
    """This process's index among JAX's processes; 0 where JAX is not in use (the command
    lines that train nothing do not import it)."""
    jax = sys.modules.get("jax")
    return jax.process_index() if jax is not None else 0


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


def refuse_url(folder: str | Path, flag: str = "--workdir") -> None:
    """UserError for a URL such as gs://bucket/run, which Path would fold into a local
    folder gs:/bucket/run."""
    if "://" in str(folder):
        raise UserError(
            f"{flag}={folder}: cloud storage paths are not supported; give a local or "
            "mounted folder"
        )


def prepare_workdir(workdir: str | Path) -> Path:
    """Create the run's folder and make sure it can be written, or say what to do."""
    refuse_url(workdir)
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


LOCK = ".lock"  # in the workdir: the pid of the process that holds it


def _lock_holder(f) -> str:
    """The pid written in an open lock file (its holder writes it just after locking)."""
    for _ in range(20):
        f.seek(0)
        pid = f.read().strip()
        if pid:
            return pid
        time.sleep(0.05)
    return "?"


@contextlib.contextmanager
def hold_workdir(workdir: str | Path, enabled: bool | None = None) -> Iterator[Path]:
    """Hold `workdir` for this process while the block runs, or UserError naming the process
    that holds it. The lock is an flock on workdir/.lock, which holds the holder's pid; the
    kernel drops it when its holder ends, killed or not, so a killed run never blocks its
    resume. Only process 0 of a multi-process run (or `enabled`) takes it."""
    path = Path(workdir)
    if not (_process_index() == 0 if enabled is None else enabled):
        yield path
        return
    try:
        f = open(path / LOCK, "a+")
    except OSError as e:
        raise UserError(
            f"cannot write to workdir {workdir} ({e.strerror}); choose another --workdir"
        ) from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"workdir {workdir} is in use by another run (pid {_lock_holder(f)}); "
                "wait for it to end, or use another --workdir"
            ) from None
        except OSError as e:
            raise UserError(
                f"cannot lock workdir {workdir} ({e.strerror}); use a workdir on a filesystem "
                "with file locks"
            ) from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield path
        finally:
            f.truncate(0)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(none)"
    return "none" if value is None else str(value)


def refuse_other_command(workdir: str | Path, config: Mapping) -> None:
    """UserError when workdir/config.json records settings `config` does not have: a run
    of another command, which a run of this one would write over or mix with."""
    path = Path(workdir) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # none, or not a run's: nothing of a run to protect
    if isinstance(saved, dict):
        _refuse_foreign(workdir, saved, config, ())


def _refuse_foreign(
    workdir: str | Path, saved: Mapping, config: Mapping, ignore: Collection[str]
) -> None:
    foreign = sorted(set(saved) - set(config) - set(ignore))
    if foreign:  # the settings both record may well agree
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise UserError(
            f"{workdir} holds a run of another command (its settings {shown} are not this "
            "one's); use another --workdir"
        )


def setting_changes(
    saved: Mapping,
    now: Mapping,
    names: Iterable[str],
    ignore: Collection[str] = (),
    may_grow: Collection[str] = (),
) -> tuple[list[tuple[str, Any, Any]], list[str]]:
    """How the settings `names` of `now` differ from those `saved` (JSON values): the
    (name, saved, now) of each that changed, and the names of those in `may_grow` that only
    grew (a larger number, or a list extended with the same items first); `ignore`d ones
    are left out."""
    changed, grown = [], []
    for name in names:
        before, after = saved[name], now[name]
        if name in ignore or before == after:
            continue
        numbers = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in (before, after)
        )
        extended = (
            isinstance(before, list) and isinstance(after, list) and after[: len(before)] == before
        )
        if name in may_grow and ((numbers and after > before) or extended):
            grown.append(name)
        else:
            changed.append((name, before, after))
    return changed, grown


def accept_resume(
    workdir: str | Path,
    config: Mapping,
    keys: Collection[str] | None = None,
    ignore: Collection[str] = (),
    may_grow: Collection[str] = (),
) -> list[str]:
    """UserError when workdir/config.json records a run with other settings than `config`,
    or (unless `keys` are given) settings `config` does not have, a run of another command:
    resuming it would mix two runs. Compared are `keys` (default: every setting both record)
    less `ignore` (how a run executes, not what it computes); a setting in `may_grow` may be
    larger than before (more epochs: the run goes on from where it ended), or, for a list,
    longer with the same items first (more variants of a study: those done are kept). Call
    it before writing to the workdir, while holding it (`hold_workdir`).

    Returns the settings that grew; the workdir's summary.json, which describes the shorter
    run, is then removed, since the run is unfinished again.
    """
    path = Path(workdir) / "config.json"
    if not path.exists():
        return []
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot read {path} ({e}); use another --workdir, or delete that one to start again"
        ) from None
    now = json.loads(json.dumps(_jsonable(dict(config))))
    if keys is None:
        _refuse_foreign(workdir, saved, now, ignore)
    names = [k for k in (keys if keys is not None else now) if k in saved and k in now]
    differ, grown = setting_changes(saved, now, names, ignore, may_grow)
    changed = [f"{name}={_show(before)} (now {_show(after)})" for name, before, after in differ]
    if changed:
        growable = f" ({', '.join(may_grow)} may grow)" if may_grow else ""
        raise UserError(
            f"{workdir} holds a run with other settings: {', '.join(changed)}; resume it with "
            f"the same settings{growable}, or use another --workdir"
        )
    if grown:
        with contextlib.suppress(FileNotFoundError):
            (Path(workdir) / "summary.json").unlink()
    return grown


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, records: Iterable[Mapping]) -> None:
    """`records` as a JSON-lines file, one sorted-key object a line, replaced atomically."""
    lines = "".join(json.dumps(_jsonable(r), sort_keys=True) + "\n" for r in records)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(lines)
    os.replace(tmp, path)


class MetricsWriter:
    """metrics.jsonl plus TensorBoard scalars for one run."""

    def __init__(self, workdir: str | Path, enabled: bool | None = None):
        self.workdir = Path(workdir)
        self.enabled = _process_index() == 0 if enabled is None else enabled
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
        write_jsonl(self.workdir / "metrics.jsonl", records)
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


def count_params(params: Any) -> int:
    """Scalars in a parameter pytree (arrays or ShapeDtypeStructs)."""
    import jax

    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))
