"""What every experiment's `main` does: flags to a config, one-line errors, exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from absl import app, flags, logging

from lib.errors import UserError
from lib.train import DivergedError

FLAGS = flags.FLAGS

# A stopped run (SIGTERM, Ctrl-C) exits with this status; running it again resumes.
STOPPED = 3


def run_from_flags(argv: list[str], run: Callable[[dict], dict], names: Iterable[str]) -> dict:
    """Call `run` with the named flags' values; a user mistake or a diverged run ends
    the process with one line on stderr and status 1, not a traceback."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep Orbax's and JAX's info lines out of the way
    config = {name: FLAGS[name].value for name in names}
    try:
        return run(config)
    except (UserError, DivergedError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
