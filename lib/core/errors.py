"""The errors a run raises on purpose; the mains print each as one line, not a traceback."""


class UserError(Exception):
    """A bad setting, a missing dataset, an unwritable folder; the message says what to do."""


class ConfigError(UserError, ValueError):
    """A setting that cannot work; the message says which and why."""


class DataError(UserError):
    """A dataset that cannot be found, prepared or read; the message says what to do."""


class DivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""
