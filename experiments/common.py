"""What every experiment's `main` does: flags to a config, one-line errors, exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from absl import app, flags, logging

from lib.errors import UserError
from lib.train import DRIVERS, LAYOUTS, DivergedError

FLAGS = flags.FLAGS

# A stopped run (SIGTERM, Ctrl-C) exits with this status; running it again resumes.
STOPPED = 3

# How a run executes, not what it computes: the MNIST experiments share these flags.
PROGRAM_DEFAULTS = {"driver": "auto", "ensemble_layout": "auto", "eval_batch_size": 1000,
                    "num_devices": None}  # fmt: skip


def define_program_flags() -> None:
    """Define the PROGRAM_DEFAULTS flags; several experiments may do so in one process
    (tests, sweeps), so the definitions allow overriding and are the same in each."""
    own, default = {"allow_override": True}, PROGRAM_DEFAULTS
    flags.DEFINE_enum("driver", default["driver"], DRIVERS, "Epoch driver: scan or loop.", **own)
    flags.DEFINE_enum(
        "ensemble_layout",
        default["ensemble_layout"],
        LAYOUTS,
        "How the members of an ensemble (or the seeds of a study) share the program: "
        "vmap, one unrolled copy each, or each member on its own CPU device (auto: devices "
        "on a multi-core CPU, unrolled on one core, vmap on accelerators).",
        **own,
    )
    flags.DEFINE_integer(
        "eval_batch_size", default["eval_batch_size"], "Batch size for validation and test.", **own
    )
    flags.DEFINE_integer(
        "num_devices",
        default["num_devices"],
        "Devices to shard the batch over; default: all that divide it.",
        **own,
    )


def run_from_flags(argv: list[str], run: Callable[[dict], dict], names: Iterable[str]) -> dict:
    """Call `run` with the named flags' values; a user mistake or a diverged run ends
    the process with one line on stderr and status 1, not a traceback, and a run that
    reports it stopped early (`summary["finished"]` False) ends with status STOPPED."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep Orbax's and JAX's info lines out of the way
    config = {name: FLAGS[name].value for name in names}
    try:
        summary = run(config)
    except (UserError, DivergedError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if summary.get("finished") is False:  # runs that cannot be stopped do not report it
        sys.exit(STOPPED)
    return summary
