"""The errors a run raises on purpose; the mains print each as one line, not a traceback."""

from __future__ import annotations


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
