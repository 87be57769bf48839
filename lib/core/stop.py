"""Stopping a run cleanly: a signal asks it to save a checkpoint and end."""

from __future__ import annotations

import contextlib
import signal
import sys

# A stopped run (SIGTERM, Ctrl-C) exits with this status; running it again resumes.
STOPPED = 3


class GracefulStop:
    """While active, SIGTERM (and SIGINT) ask the run to save and stop instead of dying,
    and the first says so in a line on stderr. A second Ctrl-C, while the first is
    pending, interrupts at once (KeyboardInterrupt).

    One entered while another is active (a run's, inside a caller that runs several)
    starts with the outer one's request and passes its own on to it when it ends: a signal
    that comes too late to stop the run, in its last epoch, still stops the caller, which
    asks before starting the next run. A request handed on or taken over so is not
    announced again.

    `interrupt=True` is for a caller whose runs may not look for a stop (an in-process
    sweep of any module): a signal that reaches it directly, while no run's own stop is
    active, interrupts at once (KeyboardInterrupt), as it would with no stop at all; a
    request handed on by a run's stop only marks it.
    """

    def __init__(self, interrupt: bool = False):
        self.interrupt = interrupt
        self.requested = False
        self._previous = {}
        self._outer: GracefulStop | None = None

    def __call__(self) -> bool:
        return self.requested

    @property
    def nested(self) -> bool:
        """Whether this stop was entered inside another's, whose owner (a caller of
        several runs) then tells the user how to go on, not this one."""
        return self._outer is not None

    def _handle(self, signum, frame):
        if self.interrupt:
            raise KeyboardInterrupt
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        with contextlib.suppress(OSError, RuntimeError, ValueError):  # stderr closed or busy
            print(
                f"stop requested ({signal.Signals(signum).name}): saving and stopping at the "
                "next check; press Ctrl-C again to interrupt at once",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they were
                pass
        outers = [getattr(h, "__self__", None) for h in self._previous.values()]
        self._outer = next((o for o in outers if isinstance(o, GracefulStop)), None)
        if self._outer is not None:
            self.requested |= self._outer.requested
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._outer is not None and self.requested:
            self._outer.requested = True
        return False
