"""The one error type for mistakes a user can fix: experiments print its message as one line."""


class UserError(Exception):
    """A bad setting, a missing dataset, an unwritable folder; the message says what to do."""
