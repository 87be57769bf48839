"""The errors a run raises on purpose; the mains print each as one line, not a traceback."""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """A bad setting, a missing dataset, an unwritable folder; the message says what to do."""


class ConfigError(UserError, ValueError):
    """A setting that cannot work; the message says which and why."""


class DataError(UserError):
    """A dataset that cannot be found, prepared or read; the message says what to do."""


class DivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""

    @classmethod
    def at(cls, loss, epoch: int, step: int, steps: int) -> DivergedError:
        """The error for a `loss` at step `step` of the `steps` of epoch `epoch` (from 1)."""
        return cls(
            f"loss became {loss} at epoch {epoch}, step {step} of {steps}; the last good "
            "checkpoint is kept; rerun with a lower --learning_rate in a new --workdir."
        )


# The OS errors that the machine causes, not the code, and what to do about each.
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DENIED_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
# A path of the wrong kind: a file where a folder goes, or a folder where a file does.
PATH_ERRNOS = (errno.ENOTDIR, errno.EISDIR, errno.EEXIST)


def storage_error(
    e: BaseException, flag: str | None = "--workdir", folder: str | os.PathLike | None = None
) -> UserError | None:
    """The UserError to report in place of `e` when it is an OSError of a full disk or
    quota, a permission denied, a read-only file system or a path of the wrong kind (a file
    where a folder goes, or the reverse), naming the file and what to do
    (`flag`: the option that names another folder, if any, suggested only for a file
    inside `folder`, the one it names now, when that is known); None for any other
    exception, a bug to raise as it is."""
    if not isinstance(e, OSError) or e.errno not in (*FULL_ERRNOS, *DENIED_ERRNOS, *PATH_ERRNOS):
        return None
    cause = (e.strerror or os.strerror(e.errno)).lower()
    file = f" for {e.filename}" if e.filename is not None else ""
    todo = {**dict.fromkeys(FULL_ERRNOS, "free some space"),
            **dict.fromkeys(DENIED_ERRNOS, "check the folder's permissions"),
            **dict.fromkeys(PATH_ERRNOS, "fix the path")}[e.errno]  # fmt: skip
    if flag is not None and (folder is None or e.filename is None or inside(e.filename, folder)):
        todo += f" or choose another {flag}"
    return UserError(f"{cause}{file}; {todo}")


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or lies within it (by name: a link in it counts)."""
    path, folder = os.path.abspath(path), os.path.abspath(folder)  # links are the folder's
    return os.path.commonpath([path, folder]) == folder
