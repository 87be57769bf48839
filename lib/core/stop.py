"""Stopping a run cleanly: a signal asks it to save a checkpoint and end."""

from __future__ import annotations

import signal

# A stopped run (SIGTERM, Ctrl-C) exits with this status; running it again resumes.
STOPPED = 3


class GracefulStop:
    """While active, SIGTERM (and SIGINT) ask the run to save and stop instead of dying. A
    second Ctrl-C, while the first is pending, interrupts at once (KeyboardInterrupt)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they were
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
