"""What every experiment's `main` does: flags to a config, one-line errors, exit codes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from absl import app, flags, logging

from lib.core import data as data_lib
from lib.core import metrics

# Ranges are lib.core.config's; the experiments name them through this module.
from lib.core.config import (  # noqa: F401
    AT_LEAST_1,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    OneOf,
    Range,
    Setting,
)
from lib.core.errors import ConfigError, DivergedError, UserError, storage_error
from lib.core.stop import STOPPED, GracefulStop  # STOPPED: a stopped run's exit status
from lib.nielsen import DRIVERS, LAYOUTS

FLAGS = flags.FLAGS


# How a run executes, not what it computes: the MNIST experiments share these settings.
PROGRAM_SETTINGS = (
    Setting("driver", "auto", "Epoch driver: scan or loop (auto: loop on CPU).", OneOf(DRIVERS)),
    Setting(
        "ensemble_layout",
        "auto",
        "How the members of an ensemble (or the seeds of a study) share the program: vmap, "
        "one unrolled copy each, or each member on its own CPU device (auto: devices on a "
        "multi-core CPU, unrolled on one core, vmap on accelerators).",
        OneOf(LAYOUTS),
    ),
    Setting("eval_batch_size", 1000, "Batch size for validation and test.", AT_LEAST_1),
    Setting(
        "num_devices",
        None,
        "Devices to shard the batch over; default: all that divide it.",
        AT_LEAST_1,
        int,
    ),
)
PROGRAM_DEFAULTS = {s.name: s.default for s in PROGRAM_SETTINGS}

# The images the book's nets train on, in every MNIST experiment.
DATASET = Setting(
    "dataset",
    "mnist",
    f"TFDS image classification dataset: {data_lib.DATASETS[0]}, or "
    f"{', '.join(data_lib.DATASETS[1:])} or another of small images (the nets infer its "
    "shape; its last 10,000 training images validate).",
)


# Quick runs score fewer images: the first N of the validation and test sets.
VALIDATION_SIZE = Setting(
    "validation_size",
    None,
    "Validate on the first N validation images (quick runs); default: all of them.",
    AT_LEAST_1,
    int,
)
TEST_SIZE = Setting(
    "test_size",
    None,
    "Score the first N test images (quick runs); default: all of them.",
    AT_LEAST_1,
    int,
)

# The studies' (activations, expanded data): several seeds a run, sizes set by a preset.
STUDY_VALIDATION_SIZE = Setting(
    "validation_size",
    None,
    "Validate on the first N of the 10,000 validation images; default: the preset's.",
    Range(1, 10_000),
    int,
)
STUDY_SEED = Setting("seed", 0, "First seed; the members are seed, seed + 1, ...", NON_NEGATIVE)


def study_seeds(each: str) -> Setting:
    """The number of seeds for each `each` (a variant, a run) of a study."""
    return Setting(
        "seeds",
        None,
        f"Seeds per {each}, trained side by side (see --ensemble_layout); default: the preset's.",
        AT_LEAST_1,
        int,
    )


def scored_subsets(splits, config: Mapping):
    """`splits` (lib.core.data.Splits) with the validation and test sets cut to the first
    config["validation_size"] and config["test_size"] images, where the config sets them."""
    if config.get("validation_size"):
        splits = splits._replace(validation=splits.validation.take(config["validation_size"]))
    if config.get("test_size"):
        splits = splits._replace(test=splits.test.take(config["test_size"]))
    return splits


def training_images(config: Mapping, sizes: Iterable[str] = ("train_size",)) -> int | None:
    """The training images of config["dataset"] (None when it is not prepared here yet,
    for loading it to say how), after a ConfigError if a setting in `sizes` (a number or
    a list of them) asks for more."""
    available = data_lib.training_size(config["dataset"])
    for name in sizes:
        value = config[name]
        for n in value if isinstance(value, (list, tuple)) else [value]:
            if available and n and n > available:
                raise ConfigError(
                    f"--{name}={n} must be at most {available:,}, the training images of "
                    f"{config['dataset']}"
                )
    return available


def setting_kind(setting: Setting) -> type:
    """The type of a setting's values (of each value, for a list setting)."""
    if isinstance(setting.default, tuple):
        return setting.kind or type(setting.default[0])
    return setting.kind or type(setting.default)


def define_setting_flags(settings: Iterable[Setting]) -> None:
    """One command-line flag per setting, named as the setting (`--epochs=3`), generated
    from the settings themselves, so no flag is declared twice. An experiment declared by
    its settings takes only the flags given on the command line (`given_settings`) over
    its config's defaults (and a preset's); the flags' defaults are the settings' all the
    same, as experiments that read every flag expect. Several experiments may be imported
    into one process (the ladder, the sweep), so a name may be redefined."""
    own = {"allow_override": True}
    # The flags belong to the experiment that declares the settings: --helpshort lists
    # them as its own (absl names the main module after its file).
    caller = sys._getframe(1).f_globals.get("__name__", "")
    caller = sys.argv[0] if caller == "__main__" else caller
    for s in settings:
        # absl shows a flag's default itself; None means what the help says.
        help_text = s.help if not isinstance(s.valid, Range) else f"{s.help} ({s.valid})"
        kind, default = setting_kind(s), s.default
        if isinstance(default, tuple):  # a list; its values are checked with the config
            flags.DEFINE_list(s.name, list(map(str, default)), help_text, **own)
        elif isinstance(s.valid, OneOf):
            flags.DEFINE_enum(s.name, default, list(s.valid.choices), help_text, **own)
        elif kind is bool:
            flags.DEFINE_bool(s.name, default, help_text, **own)
        elif kind is int:
            flags.DEFINE_integer(s.name, default, help_text, **own)
        elif kind is float:
            flags.DEFINE_float(s.name, default, help_text, **own)
        else:
            flags.DEFINE_string(s.name, default, help_text, **own)
        FLAGS.register_key_flag_for_module(caller, FLAGS[s.name])


def given_settings(settings: Iterable[Setting]) -> dict[str, Any]:
    """The settings given on the command line, with their values (a list's values parsed
    to the setting's kind); UserError for a list value that does not parse."""
    given = {}
    for s in settings:
        flag = FLAGS[s.name]
        if not flag.present:
            continue
        value = flag.value
        if isinstance(s.default, tuple):
            kind = setting_kind(s)
            try:
                value = tuple(kind(v) for v in value)
            except ValueError:
                raise UserError(
                    f"--{s.name} takes {kind.__name__} values, got {','.join(value)}"
                ) from None
        given[s.name] = value
    return given


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


def positive_ints(name: str) -> list[int]:
    """The values of list flag --`name`: whole numbers, at least one, each at least 1; a
    UserError saying so otherwise."""
    try:
        values = [int(v) for v in FLAGS[name].value]
    except ValueError:
        got = ",".join(FLAGS[name].value)
        raise UserError(f"--{name} takes whole numbers, got {got}") from None
    if not values or min(values) < 1:
        raise UserError(f"--{name} takes whole numbers of at least 1")
    return values


def fail(message: str) -> None:
    """End the process as a user's mistake does: `message` in one line, status 1."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def fail_on_storage_error(
    e: OSError, flag: str | None = "--workdir", folder: str | Path | None = None
) -> None:
    """End the process as `fail` does when `e` is a full disk, a permission denied or a
    read-only file system (lib.core.errors.storage_error), naming the file and what to do
    (`flag`: the option that names another folder, `folder` the one it names now, if
    known); otherwise raise `e` as it is, a bug."""
    error = storage_error(e, flag, folder)
    if error is None:
        raise e
    fail(str(error))


def run_from_flags(
    argv: list[str], run: Callable[[dict], dict], names: Iterable[str | Setting]
) -> dict:
    """Call `run` with the flags' values: every named flag's, or, for Settings, those given
    on the command line (`given_settings`: the config's defaults are the settings'). A user
    mistake, a diverged run, a full disk or a folder it may not write ends the process
    with one line on stderr and status 1, not a traceback, and a run that reports it
    stopped early (`summary["finished"]` False) ends with status STOPPED."""
    if len(argv) > 1:  # parse_flags reports these; a main run without it still refuses
        fail(f"unexpected argument {' '.join(argv[1:])!r}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # as parse_flags does, for mains run without it
    names, config = list(names), {}
    try:
        if names and isinstance(names[0], Setting):
            config = given_settings(names)
        else:
            config = {name: FLAGS[name].value for name in names}
        summary = run(config)
    except (UserError, DivergedError) as e:
        fail(str(e))
    except OSError as e:
        fail_on_storage_error(e, "--workdir", config.get("workdir"))
    if summary.get("finished") is False:  # runs that cannot be stopped do not report it
        sys.exit(STOPPED)
    return summary


def run_command(command: Callable[[], None]) -> None:
    """Run `command` as its module's shell command: absl's flags (`parse_flags`), and a
    user's mistake (a UserError) as one line on stderr and status 1, not a traceback."""

    def main(argv: list[str]) -> None:
        del argv  # parse_flags refuses positional arguments
        try:
            command()
        except UserError as e:
            fail(str(e))

    app.run(main, flags_parser=parse_flags)


def say_stopped(say: Callable[..., None], config: Mapping, stop: GracefulStop) -> None:
    """The line a stopped run ends with, telling how to resume it; none for a run stopped
    inside a caller of several runs (`stop.nested`: the study, ladder or sweep, whose own
    line names the command to run again)."""
    if not stop.nested:
        say(f"stopped; run again with --workdir={config['workdir']} to resume", flush=True)


def loop_hooks(name: str, verbose: bool = True, epochs: int | None = None):
    """lib.core.loop.Hooks that print a run's start, its progress lines (throughput, ETA)
    and one line per epoch (its metrics), each starting with `name`."""
    from lib.core import loop

    say = print if verbose else (lambda *a, **k: None)

    def on_start(info):
        if info["checkpoint_notice"]:
            say(info["checkpoint_notice"], flush=True)
        what = f"resuming at step {info['resumed_step']}" if info["resumed_step"] else "start"
        say(f"{name}: {what}", flush=True)

    def on_progress(p):
        say(
            f"  epoch {p['epoch']} step {p['step']}/{p['steps']}  "
            f"{p['examples_per_s']:,.0f} examples/s  ETA {loop.duration(p['eta_s'])}",
            flush=True,
        )

    def on_epoch(e):
        shown = "  ".join(
            f"{k} {v:.4g}"
            for k, v in e.items()
            if k not in ("epoch", "epoch_time_s", "examples_per_s", "eta_s")
            and isinstance(v, float)
        )
        total = f"/{epochs}" if epochs else ""
        say(
            f"{name} epoch {e['epoch']}{total}  {shown}  {e['epoch_time_s']:.1f} s  "
            f"{e['examples_per_s']:,.0f} examples/s  ETA {loop.duration(e['eta_s'])}",
            flush=True,
        )

    return loop.Hooks(on_start=on_start, on_epoch=on_epoch, on_progress=on_progress)
