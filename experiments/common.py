"""What every experiment's `main` does: flags to a config, one-line errors, exit codes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path

from absl import flags, logging

from lib.core import metrics

# Ranges are lib.core.config's; the experiments name them through this module.
from lib.core.config import (  # noqa: F401
    AT_LEAST_1,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Range,
    check_values,
)
from lib.core.errors import DivergedError, UserError
from lib.nielsen.train import DRIVERS, LAYOUTS

FLAGS = flags.FLAGS

# A stopped run (SIGTERM, Ctrl-C) exits with this status; running it again resumes.
STOPPED = 3

# How a run executes, not what it computes: the MNIST experiments share these flags.
PROGRAM_DEFAULTS = {"driver": "auto", "ensemble_layout": "auto", "eval_batch_size": 1000,
                    "num_devices": None}  # fmt: skip


# The program flags' ranges; each experiment checks them with its own (check_ranges).
PROGRAM_RANGES = {"eval_batch_size": AT_LEAST_1, "num_devices": AT_LEAST_1}


def check_ranges(config: Mapping, ranges: Mapping[str, Range]) -> None:
    """ConfigError naming every setting of `config` outside its range (a list's values are
    checked one by one), before a run does any work or writes any file."""
    check_values(config, ranges, prefix="--")


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


@contextlib.contextmanager
def own_workdir(
    config: dict, ignore: Collection[str] = (), may_grow: Collection[str] = ()
) -> Iterator[Path]:
    """config["workdir"], created and held by this process for the block (a second run there
    is refused, naming this one's pid), after checking that it holds no run with other
    settings than `config`; the PROGRAM_DEFAULTS, the workdir's name and `ignore` may
    differ, and the settings in `may_grow` may grow (see lib.core.metrics.accept_resume)."""
    path = metrics.prepare_workdir(config["workdir"])
    with metrics.hold_workdir(path):
        metrics.accept_resume(
            path, config, ignore={"workdir", *PROGRAM_DEFAULTS, *ignore}, may_grow=may_grow
        )
        yield path


# Third-party notices that say nothing a user of these commands can act on.
UNHELPFUL_NOTICES = ("OpenCV is not installed",)  # TFDS: PIL decodes MNIST just as well


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for `app.run(main, flags_parser=parse_flags)`: a bad value or
    an unexpected positional argument ends the process with one line on stderr and status
    1, instead of absl's usage text, and TFDS's notices in UNHELPFUL_NOTICES are dropped."""
    logging.get_absl_logger().addFilter(
        lambda record: not any(n in record.getMessage() for n in UNHELPFUL_NOTICES)
    )
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        fail(str(e))
    if len(rest) > 1:
        fail(
            f"unexpected argument {' '.join(rest[1:])!r}: every setting is a flag, "
            f"--name=value (--helpshort lists them)"
        )
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep JAX's and Orbax's info lines out of the way
    return rest


def fail(message: str) -> None:
    """End the process as a user's mistake does: `message` in one line, status 1."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def run_from_flags(argv: list[str], run: Callable[[dict], dict], names: Iterable[str]) -> dict:
    """Call `run` with the named flags' values; a user mistake or a diverged run ends
    the process with one line on stderr and status 1, not a traceback, and a run that
    reports it stopped early (`summary["finished"]` False) ends with status STOPPED."""
    if len(argv) > 1:  # parse_flags reports these; a main run without it still refuses
        fail(f"unexpected argument {' '.join(argv[1:])!r}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # as parse_flags does, for mains run without it
    config = {name: FLAGS[name].value for name in names}
    try:
        summary = run(config)
    except (UserError, DivergedError) as e:
        fail(str(e))
    if summary.get("finished") is False:  # runs that cannot be stopped do not report it
        sys.exit(STOPPED)
    return summary
