"""Save and resume training with Orbax, checking what comes back.

A checkpoint is the train state (a pytree of arrays) plus a JSON record of the
run so far, and optionally the position of a Grain data iterator (one small file
per process, since each host reads its own share of the data). Orbax writes each
checkpoint to a temporary folder and renames it when complete, so a run killed
mid-write leaves the previous checkpoint intact.

Each save also stores, in the record, a SHA-256 over the bytes of every leaf of
the state (computed on the host) and over the record itself. A restore of the
latest checkpoint tries the steps newest first and takes the first one that
loads and matches its checksum; the steps it passed over come back with the
reason, for the caller to report. A read that fails for what says nothing of the
step's files (no permission, no memory, an I/O error) raises instead, so that no
intact step is passed over, nor replaced by the next save. A save that fails (a full
disk) removes what it had written, so only complete checkpoints are ever found.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import logging
import re
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from lib.core.errors import DENIED_ERRNOS, FULL_ERRNOS, UserError

CHECKSUM_KEY = "_sha256"  # in the saved record: the checksum of the state and the record


class DiskFullError(UserError):
    """No space left where the checkpoint was being written; the earlier ones are kept."""


class Damaged(Exception):
    """A checkpoint step that cannot be read or does not match its checksum."""


# The OS errors of a read that mean a file of the step is gone: the step is damaged. Any
# other (no permission, an I/O error) says nothing of the step's files.
_MISSING = (errno.ENOENT, errno.ENOTDIR)
# TensorStore's errors are ValueErrors "STATUS: ...", ending "[os_error_code='13']" where
# an OS error caused them. These statuses, too, say nothing of the files.
_TENSORSTORE_STATUS = re.compile(r"([A-Z_]+): ")
_TENSORSTORE_ERRNO = re.compile(r"\[os_error_code='?(\d+)'?\]")
_TRANSIENT = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED", "ABORTED")


class Restored(NamedTuple):
    state: Any
    record: dict
    step: int
    skipped: tuple[tuple[int, str], ...] = ()  # (step, why), newest first: damaged steps

    @property
    def notice(self) -> str | None:
        """One line on the damaged steps passed over, or None when there were none."""
        if not self.skipped:
            return None
        steps = ", ".join(str(step) for step, _ in self.skipped)
        why = "; ".join(why for _, why in self.skipped)
        noun, verb = ("step", "is") if len(self.skipped) == 1 else ("steps", "are")
        return f"checkpoint {noun} {steps} {verb} damaged ({why}); resuming from step {self.step}"


def _host_array(x: Any) -> np.ndarray | None:
    """The value of a leaf on this host; None for an array sharded over other hosts."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.sharding.is_fully_replicated:
            return None
        x = x.addressable_data(0)
    return np.asarray(jax.device_get(x))


def checksum(state: Any, record: dict) -> str | None:
    """SHA-256 over the dtype, shape and bytes of each leaf of `state`, then over `record`
    as canonical JSON; None when part of the state lives only on other hosts."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        value = _host_array(leaf)
        if value is None:
            return None
        digest.update(f"{value.dtype.str}{value.shape};".encode())
        digest.update(np.ascontiguousarray(value).reshape(-1).view(np.uint8))
    digest.update(json.dumps(record, sort_keys=True).encode())
    return digest.hexdigest()


def _causes(e: BaseException) -> Iterator[BaseException]:
    """`e`, the exceptions it was raised from or during, and those of an exception group."""
    seen: set[int] = set()
    todo = [e]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


def _os_error_code(cause: BaseException) -> int | None:
    """The OS error number behind `cause`: an OSError's, or the one a TensorStore error
    (a ValueError "STATUS: ... [os_error_code='28']") names; None if neither."""
    if isinstance(cause, OSError):
        return cause.errno
    found = _TENSORSTORE_ERRNO.search(str(cause))
    return int(found[1]) if found else None


def _status(cause: BaseException) -> str | None:
    """The status a TensorStore error starts with ("PERMISSION_DENIED", ...); None for
    any other exception."""
    found = _TENSORSTORE_STATUS.match(str(cause))
    return found[1] if found else None


def _disk_full(e: BaseException) -> bool:
    """Whether `e` or an exception behind it says the disk or the quota is full."""
    return any(
        _os_error_code(cause) in FULL_ERRNOS or "No space left on device" in str(cause)
        for cause in _causes(e)
    )


def _denied(cause: BaseException) -> bool:
    """Whether `cause` is a permission denied or a read-only file system (an OSError's or
    TensorStore's)."""
    return _os_error_code(cause) in DENIED_ERRNOS or _status(cause) == "PERMISSION_DENIED"


def _read_failure(e: BaseException) -> str:
    """What a failed read of a checkpoint step says of it: "damaged" when its files are
    truncated, corrupt or missing; "denied" for a permission denied; "other" for a failure
    that says nothing of the files (no memory, an I/O error)."""
    for cause in _causes(e):
        if _denied(cause):
            return "denied"
        code = _os_error_code(cause)
        if (
            isinstance(cause, MemoryError)
            or code not in (None, *_MISSING)
            or _status(cause) in _TRANSIENT
        ):
            return "other"
    return "damaged"


def _short(e: BaseException) -> str:
    """A short reason for an exception: the first line of the one at the root of it (for
    TensorStore's, the array and what is wrong with it), at most 120 characters."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = str(e).strip().splitlines()
    first = lines[0] if lines else type(e).__name__
    tensorstore = re.match(r'[A-Z_]+: Error reading "([^"]*)".*?: (\S.*)$', first)
    first = f"{tensorstore[1]}: {tensorstore[2]}" if tensorstore else f"{type(e).__name__}: {first}"
    return first if len(first) <= 120 else first[:117] + "..."


@contextlib.contextmanager
def _quiet_unraisable() -> Iterator[Callable[[], None]]:
    """Keep the coroutines that a failed Orbax read leaves behind from printing their
    exceptions as they are collected ("Exception ignored in ..."): the failure itself
    is reported by the caller. The caller calls what this yields once a read has
    failed, to collect them while they are quiet; an intact read leaves none, and spares
    the collection (most of a second in a process holding many objects)."""
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        yield gc.collect
    finally:
        sys.unraisablehook = previous


@contextlib.contextmanager
def _held_orbax_errors() -> Iterator[list[logging.LogRecord]]:
    """Hold back the errors Orbax's writer threads log while a save runs: the same errors
    reach the caller as the save's exception. The caller re-emits them (`_emit`) unless
    it reports that exception in their stead."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "orbax" in record.pathname:
            held.append(record)
            return False
        return True

    logger = logging.getLogger("absl")
    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


def _emit(records: list[logging.LogRecord]) -> None:
    for record in records:
        logging.getLogger(record.name).handle(record)


def _join_orbax_writers(timeout: float = 60.0) -> None:
    """Wait for Orbax's writer threads still running after a failed save."""
    from orbax.checkpoint._src.futures import future

    kind = getattr(future, "_SignalingThread", None)
    for thread in threading.enumerate():
        if kind is not None and isinstance(thread, kind) and thread.is_alive():
            threading.Thread.join(thread, timeout)


class Checkpointer:
    """The latest few checkpoints of one run, numbered by training step."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=False,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, record: dict, data: Any = None) -> None:
        """`data`: an iterator with Grain's `get_state() -> bytes`, saved beside the state.

        Steps at or after `step` (damaged ones that a restore passed over) are deleted
        first, so the new checkpoint is the latest. Raises DiskFullError, a UserError,
        when the disk is full; what this save had written is removed then (as after any
        failed save), and the earlier checkpoints are left as they were.
        """
        for later in self.all_steps():
            if later >= step:
                self._manager.delete(later)
        digest = checksum(state, record)
        saved = record if digest is None else {**record, CHECKSUM_KEY: digest}
        items = {"state": ocp.args.StandardSave(state), "record": ocp.args.JsonSave(saved)}
        if data is not None:
            import grain  # registers its iterator handler with Orbax

            items["data"] = grain.checkpoint.CheckpointSave(data)
        kept = self.latest_step()
        self._discard(step)  # the temporary folder of an earlier failed save, if any
        with _held_orbax_errors() as held:
            try:
                self._manager.save(step, args=ocp.args.Composite(**items), force=True)
                self._manager.wait_until_finished()
                failure = None
            except Exception as e:
                _join_orbax_writers()
                failure = e
        if failure is None:
            _emit(held)
            return
        self._discard(step)
        denied = [cause for cause in _causes(failure) if _denied(cause)]
        if denied:
            what = (
                "read-only file system"
                if any(_os_error_code(cause) == errno.EROFS for cause in denied)
                else "permission denied"
            )
            raise UserError(
                f"{what} writing checkpoint step {step} in {self.directory}; "
                "check the folder's permissions and run the same command again to resume"
            ) from None
        if not _disk_full(failure):
            _emit(held)
            raise failure
        kept_text = (
            f"the last good checkpoint, step {kept}, is kept"
            if kept is not None
            else "no earlier checkpoint was saved"
        )
        raise DiskFullError(
            f"no space left on the device holding {self.directory} while saving checkpoint "
            f"step {step}; {kept_text}. Free some space and run the same command again "
            "to resume"
        ) from None

    def _discard(self, step: int) -> None:
        """Remove what a failed save of `step` left: its temporary folder, or the step.

        Only called when `step` is no checkpoint to keep (`save` deleted any such first).
        """
        leftovers = [*self.directory.glob(f"{step}.orbax-checkpoint-tmp*")]
        if (self.directory / str(step)).exists():
            leftovers.append(self.directory / str(step))
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        if leftovers:
            self._manager.reload()

    def _restore_step(self, step: int, state_like: Any, data: Any) -> tuple[Any, dict]:
        """The state and record of `step`, checked against the checksum saved with them;
        Damaged, with the reason, when they cannot be read or do not match it. A failure
        that says nothing of the step's files is raised as it is (a permission denied as
        a UserError), never as Damaged."""
        with _quiet_unraisable() as collect:
            restored = self._read_step(step, state_like, data)
            if isinstance(restored, Exception):
                collect()
        if isinstance(restored, Exception):
            raise restored
        return restored

    def _failed(self, step: int, what: str, e: Exception) -> Exception:
        """What the failed read `e` of `what` ("its record") of `step` raises (see
        `_read_failure`): Damaged, a UserError or `e` itself."""
        failure = _read_failure(e)
        if failure == "denied":
            return UserError(
                f"permission denied reading checkpoint step {step} in {self.directory}; "
                "check the folder's permissions and run the same command again"
            )
        return Damaged(f"{what} cannot be read, {_short(e)}") if failure == "damaged" else e

    def _read_step(self, step: int, state_like: Any, data: Any) -> tuple[Any, dict] | Exception:
        """`_restore_step`'s reading, returning what to raise instead of raising (so that
        nothing holds on to the failed reads of a damaged step once it returns)."""
        composite = ocp.args.Composite
        try:
            record = self._manager.restore(step, args=composite(record=ocp.args.JsonRestore()))
            record = record.record
        except Exception as e:
            return self._failed(step, "its record", e)
        if not isinstance(record, dict):
            return Damaged("its record is not a JSON object")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        try:
            args = composite(state=ocp.args.StandardRestore(abstract))
            state = self._manager.restore(step, args=args).state
        except Exception as e:
            return self._failed(step, "its arrays", e)
        record = dict(record)
        expected = record.pop(CHECKSUM_KEY, None)
        if expected is not None and checksum(state, record) not in (expected, None):
            return Damaged("its contents do not match the checksum saved with them")
        if data is not None:
            import grain

            try:
                args = composite(data=grain.checkpoint.CheckpointRestore(data))
                self._manager.restore(step, args=args)
            except Exception as e:
                return self._failed(step, "its data position", e)
        return state, record

    def restore_latest(self, state_like: Any, data: Any = None) -> Restored | None:
        """The newest intact checkpoint (see `restore`), the step it is, and the newer
        steps passed over as damaged, with why; None when there is no checkpoint.

        Raises UserError when no step is intact.
        """
        skipped: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                state, record = self._restore_step(step, state_like, data)
            except Damaged as e:
                skipped.append((step, str(e)))
                continue
            return Restored(state, record, step, tuple(skipped))
        if not skipped:
            return None
        reasons = "; ".join(f"step {step}: {why}" for step, why in skipped)
        raise UserError(
            f"no intact checkpoint in {self.directory} ({reasons}); delete that folder, or "
            "use another workdir, to start over"
        )

    def restore(
        self, state_like: Any, step: int | None = None, data: Any = None
    ) -> tuple[Any, dict]:
        """The state (with the shapes, dtypes and shardings of `state_like`) and record.

        `data`: a Grain DataLoader iterator, moved to the position saved with the state.
        Without `step`, the newest intact step (`restore_latest`); a given step that is
        damaged raises UserError.
        """
        if step is None:
            restored = self.restore_latest(state_like, data)
            if restored is None:
                raise UserError(f"no checkpoint in {self.directory} to resume from")
            return restored.state, restored.record
        try:
            return self._restore_step(step, state_like, data)
        except Damaged as e:
            where = f"checkpoint step {step} in {self.directory}"
            raise UserError(f"{where} is damaged ({e})") from None

    def close(self) -> None:
        self._manager.close()
