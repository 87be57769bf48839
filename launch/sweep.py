"""Grid and random sweeps over the settings of any experiment module (its SETTINGS).

    python -m launch.sweep experiments.mnist_convnet --sweep_dir=runs/lr_seed \\
        --grid learning_rate=0.01,0.03,0.1 --grid seed=0,1,2 \\
        --train_size=2000 --epochs=2

Every run gets its own workdir under --sweep_dir, named from its swept flags
(`learning_rate=0.03,seed=1`); flags the sweep does not know (`--epochs=2` above)
go unchanged to every run. Running the same command again skips runs that
finished (their workdir has summary.json), resumes the ones that were stopped
(the experiment resumes from its checkpoint) and retries the ones that failed. A
failed run is recorded in its workdir (failed.json, with the last line of its
error) and the sweep goes on. At the end the sweep prints the table of
`python -m launch.results`, ranked by validation accuracy.

A sweep that is killed, even by SIGKILL, takes its runs with it (on Linux): each
gets SIGTERM, which an experiment answers by saving a checkpoint and stopping. A
re-run waits for any such run still saving before it resumes that workdir. A run that
a signal of its own stops (it saves and exits with status 3) is not failed: the sweep
stops too, as on Ctrl-C, and the same command resumes both.
Flags not listed below are passed unchanged to every run.

Specs:

    --grid NAME=v1,v2,...        listed values (separate with '|' when a value has commas)
    --grid NAME=range:A:B[:STEP] integers A, A+STEP, ... below B
    --grid NAME=linspace:A:B:N   N evenly spaced values from A to B
    --grid NAME=logspace:A:B:N   N log-evenly spaced values from A to B
    --random NAME=uniform:A:B    one draw per trial (also loguniform:A:B,
                                 int:A:B with both ends included, choice:v1,v2,...)

With --random, --num_trials draws are made from --sweep_seed, so the same
command always makes the same runs; each trial runs at every grid point.

Where the runs go:

    --mode=subprocess --parallel=N   N runs at a time, each `python -m MODULE` (default N=1)
    --gpus=0,1,2,3 (or all)          one run per GPU at a time, CUDA_VISIBLE_DEVICES set
    --mode=inprocess                 one after another in this process through the
                                     module's run(config, workdir): imports happen
                                     once, and whatever the module caches (data,
                                     compiled functions) is shared between runs
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import functools
import hashlib
import importlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from absl import app, flags  # noqa: F401 - app and logging define absl's own flags,
from absl import logging as absl_logging  # noqa: F401 - which are not the module's

from launch import results
from launch.cli import OneLineParser, UsageError
from lib.core.errors import UserError, storage_error
from lib.core.metrics import LOCK as WORKDIR_LOCK  # holds the pid of the run holding it
from lib.core.metrics import refuse_url
from lib.core.stop import (
    STOPPED,  # the exit status of a run that saved and stopped
    GracefulStop,
)

PROG = "sweep"
RUN_LOCK = ".run.lock"


SpecError = UsageError  # a mistake in the sweep's command line: one line, exit code 2


# ---------------------------------------------------------------- specs


def _split_spec(kind: str, spec: str) -> tuple[str, str]:
    name, sep, values = spec.partition("=")
    name = name.strip().lstrip("-")
    if not sep or not name or not values:
        raise SpecError(f"--{kind} {spec!r}: expected NAME=VALUES, e.g. --{kind} learning_rate=0.1")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name):
        raise SpecError(f"--{kind} {spec!r}: {name!r} is not a flag name")
    return name, values


def _number(spec: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"{spec!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise SpecError(f"{spec!r}: {text!r} is not a finite number")
    return value


def _integer(spec: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SpecError(f"{spec!r}: {text!r} is not an integer") from None


def format_value(value: float) -> str:
    """How a computed number is passed to the run and shown in its name: 4 significant digits."""
    return f"{value:.4g}"


def _value_list(spec: str, text: str) -> list[str]:
    values = [v.strip() for v in text.split("|" if "|" in text else ",")]
    if any(not v for v in values):
        raise SpecError(f"{spec!r}: empty value in the list")
    return values


def parse_grid(spec: str) -> tuple[str, list[str]]:
    """`NAME=VALUES` -> (NAME, the values as the strings passed on each run's command line)."""
    name, text = _split_spec("grid", spec)
    kind, _, rest = text.partition(":")
    parts = rest.split(":")
    if kind == "range":
        if len(parts) not in (2, 3):
            raise SpecError(f"--grid {spec!r}: expected range:START:STOP or range:START:STOP:STEP")
        start, stop, *step = (_integer(spec, p) for p in parts)
        step = step[0] if step else 1
        if step == 0:
            raise SpecError(f"--grid {spec!r}: the step of a range cannot be 0")
        values = [str(v) for v in range(start, stop, step)]
    elif kind in ("linspace", "logspace"):
        if len(parts) != 3:
            raise SpecError(f"--grid {spec!r}: expected {kind}:START:STOP:COUNT")
        start, stop = _number(spec, parts[0]), _number(spec, parts[1])
        count = _integer(spec, parts[2])
        if count < 1:
            raise SpecError(f"--grid {spec!r}: COUNT must be at least 1")
        if kind == "logspace":
            if start <= 0 or stop <= 0:
                raise SpecError(f"--grid {spec!r}: logspace needs positive START and STOP")
            start, stop = math.log(start), math.log(stop)
        points = [start + (stop - start) * i / max(count - 1, 1) for i in range(count)]
        if kind == "logspace":
            points = [math.exp(p) for p in points]
        values = [format_value(p) for p in points]
    else:
        values = _value_list(spec, text)
    if not values:
        raise SpecError(f"--grid {spec!r}: the range is empty")
    if len(set(values)) != len(values):
        raise SpecError(f"--grid {spec!r}: a value is repeated")
    return name, values


@dataclass(frozen=True)
class Distribution:
    kind: str  # uniform | loguniform | int | choice
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()

    def draw(self, u: float) -> str:
        """Maps a uniform draw u in [0, 1) to a value string."""
        if self.kind == "uniform":
            return format_value(self.low + (self.high - self.low) * u)
        if self.kind == "loguniform":
            log_low, log_high = math.log(self.low), math.log(self.high)
            return format_value(math.exp(log_low + (log_high - log_low) * u))
        if self.kind == "int":
            return str(
                int(self.low) + min(int(u * (self.high - self.low + 1)), int(self.high - self.low))
            )
        return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]


def parse_random(spec: str) -> tuple[str, Distribution]:
    name, text = _split_spec("random", spec)
    kind, sep, rest = text.partition(":")
    kinds = ("uniform", "loguniform", "int", "choice")
    if not sep or kind not in kinds:
        raise SpecError(
            f"--random {spec!r}: expected {' | '.join(k + ':...' for k in kinds)}, "
            "e.g. loguniform:1e-3:1e-1"
        )
    if kind == "choice":
        return name, Distribution("choice", choices=tuple(_value_list(spec, rest)))
    parts = rest.split(":")
    if len(parts) != 2:
        raise SpecError(f"--random {spec!r}: expected {kind}:LOW:HIGH")
    if kind == "int":
        low, high = (_integer(spec, p) for p in parts)
    else:
        low, high = (_number(spec, p) for p in parts)
    if not low < high and not (kind == "int" and low == high):
        raise SpecError(f"--random {spec!r}: LOW must be below HIGH")
    if kind == "loguniform" and low <= 0:
        raise SpecError(f"--random {spec!r}: loguniform needs LOW > 0")
    return name, Distribution(kind, low, high)


def expand(
    specs: Sequence[tuple[str, str]], num_trials: int | None = None, sweep_seed: int = 0
) -> list[dict[str, str]]:
    """The runs of a sweep: one {flag: value} per run, flags in the order they were given.

    `specs` holds ("grid" | "random", "NAME=...") pairs. Random flags are drawn
    `num_trials` times; every trial is crossed with every grid point.
    """
    grid: list[tuple[str, list[str]]] = []
    random: list[tuple[str, Distribution]] = []
    order: list[str] = []
    for kind, spec in specs:
        name, parsed = parse_grid(spec) if kind == "grid" else parse_random(spec)
        if name in order:
            raise SpecError(f"--{kind} {spec!r}: {name} is swept twice")
        order.append(name)
        (grid if kind == "grid" else random).append((name, parsed))
    if not order:
        raise SpecError("nothing to sweep: give at least one --grid or --random")
    if random and num_trials is None:
        raise SpecError("--random needs --num_trials N")
    if num_trials is not None and num_trials < 1:
        raise SpecError(f"--num_trials must be at least 1, got {num_trials}")
    if not random:
        num_trials = 1

    uniform = np.random.default_rng(sweep_seed).random((num_trials, len(random)))
    runs: list[dict[str, str]] = []
    seen: set[tuple] = set()
    for trial in range(num_trials):
        draws = zip(random, uniform[trial], strict=True)
        drawn = {name: dist.draw(float(u)) for (name, dist), u in draws}
        for point in itertools.product(*(values for _, values in grid)):
            values = dict(drawn, **dict(zip((name for name, _ in grid), point, strict=True)))
            run = {name: values[name] for name in order}
            key = tuple(run.items())
            if key not in seen:  # two trials may draw the same values
                seen.add(key)
                runs.append(run)
    names: dict[str, dict[str, str]] = {}
    for run in runs:
        name = run_name(run)
        if name in names:
            raise SpecError(f"runs {names[name]} and {run} would share the workdir {name!r}")
        names[name] = run
    return runs


def run_name(flag_values: dict[str, str]) -> str:
    """A stable, filesystem-safe workdir name: `learning_rate=0.03,seed=1`."""
    parts = []
    for name, value in flag_values.items():
        value = re.sub(r"[^A-Za-z0-9._+\-]", "_", value.replace(",", "+"))
        parts.append(f"{name}={value}")
    name = ",".join(parts)
    if len(name) > 200:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:180]}...{digest}"
    return name


# ---------------------------------------------------------------- the experiment's flags


@dataclass
class ModuleFlags:
    """The experiment module, imported, and the settings it declares (its `SETTINGS`, as
    lib.core.config's `Setting`s), each a flag of the same name."""

    module: object
    settings: tuple

    @classmethod
    def load(cls, module_name: str) -> ModuleFlags:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                raise SpecError(f"no module named {module_name!r}") from None
            raise
        settings = getattr(module, "SETTINGS", None)
        if settings is None:
            raise SpecError(
                f"{module_name} declares no SETTINGS: a sweep runs experiments declared by "
                "their settings (see lib.core.config)"
            )
        return cls(module, tuple(settings))

    def parse(self, args: Sequence[str]) -> dict:
        """The settings a run's command line gives, parsed with the module's flag types
        (resetting earlier runs') and checked against their ranges; the experiment's
        config has the rest."""
        from experiments import common  # imported by the experiment already
        from lib.core import config as config_lib
        from lib.core.errors import UserError

        flags.FLAGS.unparse_flags()
        try:
            flags.FLAGS([PROG, *args])
        except flags.Error as e:
            raise SpecError(f"{self.module.__name__}: {str(e).splitlines()[0]}") from None
        try:  # a value out of its range is refused before any run starts
            given = common.given_settings(self.settings)
            config_lib.check(given, self.settings, prefix="--")
        except UserError as e:
            raise SpecError(f"{self.module.__name__}: {e}") from None
        return given


def run_args(workdir: str, run: dict[str, str], fixed: Sequence[str]) -> list[str]:
    return [f"--workdir={workdir}", *fixed, *(f"--{k}={v}" for k, v in run.items())]


# ---------------------------------------------------------------- running


def _die_with_parent(parent: int) -> None:
    """In the child: be stopped when the sweep dies, even by SIGKILL (Linux), so no run is
    left training while a re-run of the sweep starts it again."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the sweep died before prctl took effect
        os._exit(1)


def _last_line(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    return lines[-1] if lines else ""


def _write_json(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


@dataclass
class Job:
    name: str
    workdir: str
    args: list[str]
    index: int
    start: float = 0.0
    log_offset: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)
    lock: object = field(default=None, repr=False)  # the open RUN_LOCK file, held for the run


class Sweep:
    def __init__(self, sweep_dir: str, module_name: str, total: int):
        self.sweep_dir = sweep_dir
        self.module_name = module_name
        self.total = total
        self.failed = 0

    def _begin(self, job: Job) -> None:
        os.makedirs(job.workdir, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(job.workdir, results.FAILED))
        log = os.path.join(job.workdir, results.LOG)
        with open(log, "a") as f:
            command = " ".join(["python", "-m", self.module_name, *job.args])
            f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {command}\n")
        job.log_offset = os.path.getsize(log)  # the run's own output starts here
        job.start = time.time()

    def _finish(self, job: Job, error: str | None, returncode: int | None = None) -> None:
        seconds = time.time() - job.start
        head = f"[{job.index}/{self.total}] {job.name}"
        summary = results.read_json(os.path.join(job.workdir, results.SUMMARY))
        if error is None and summary is None:
            error = f"exited without writing {results.SUMMARY}"
        if error is not None:
            self.failed += 1
            record = {"error": error, "returncode": returncode, "seconds": round(seconds, 1)}
            _write_json(os.path.join(job.workdir, results.FAILED), record)
            print(f"{head}  FAILED after {seconds:.1f} s: {error}", flush=True)
            return
        val = results.format_number(summary.get(results.VALIDATION))
        test = results.format_number(summary.get(results.TEST))
        print(f"{head}  done in {seconds:.1f} s  val {val}  test {test}", flush=True)

    def run_inprocess(self, jobs: Sequence[Job], module_flags: ModuleFlags) -> None:
        run = getattr(module_flags.module, "run", None)
        if not callable(run):
            raise SpecError(
                f"{self.module_name} has no run(config, workdir); use --mode=subprocess"
            )
        # A run's own stop passes a signal that came too late to stop it on to this one; a
        # signal while no run's stop is active (a module that never looks) interrupts.
        with GracefulStop(interrupt=True) as stop:
            for job in jobs:
                if stop():  # asked as an earlier run ended or between runs
                    raise KeyboardInterrupt
                config = module_flags.parse(job.args)
                self._begin(job)
                print(f"[{job.index}/{self.total}] {job.name}  running", flush=True)
                try:
                    run(config, job.workdir)
                except (Exception, SystemExit) as e:  # one run's failure must not end the sweep
                    with open(os.path.join(job.workdir, results.LOG), "a") as f:
                        traceback.print_exc(file=f)
                    message = str(e).strip().splitlines()
                    error = f"{type(e).__name__}: {message[0] if message else ''}".rstrip(": ")
                    self._finish(job, error)
                    continue
                if results.run_status(job.workdir) != results.DONE:
                    # The run came back unfinished without an error: a signal asked it to save
                    # and stop (Ctrl-C lands in the run while it trains), so the sweep stops too.
                    raise KeyboardInterrupt
                self._finish(job, None)

    def run_subprocesses(self, jobs: Sequence[Job], gpus: Sequence[str | None]) -> None:
        """Runs jobs as child processes, one per entry of `gpus` at a time (None: no GPU)."""
        pending = deque(jobs)
        free = list(enumerate(gpus))  # slots: (index, GPU)
        running: dict[tuple[int, str | None], Job] = {}
        try:
            while pending or running:
                while pending and free:
                    slot, job = free.pop(0), pending.popleft()
                    self._start(job, slot[1])
                    running[slot] = job
                    gpu = f" on GPU {slot[1]}" if slot[1] is not None else ""
                    print(f"[{job.index}/{self.total}] {job.name}  started{gpu}", flush=True)
                for slot, job in list(running.items()):
                    code = job.process.poll()
                    if code is None:
                        continue
                    del running[slot]
                    free.append(slot)
                    job.lock.close()
                    if code == STOPPED:  # a signal asked the run to save and stop
                        seconds = time.time() - job.start
                        print(
                            f"[{job.index}/{self.total}] {job.name}  stopped after {seconds:.1f} s",
                            flush=True,
                        )
                        # as when a run in this process stops: the sweep stops too
                        raise KeyboardInterrupt
                    log = os.path.join(job.workdir, results.LOG)
                    error = None
                    if code != 0:
                        error = _last_line(log, job.log_offset) or f"exit code {code}"
                        if code < 0:
                            error = f"killed by {signal.Signals(-code).name}; last line: {error}"
                    self._finish(job, error, code)
                time.sleep(0.05)
        finally:
            for job in running.values():
                if job.process.poll() is None:
                    job.process.terminate()
            for job in running.values():
                try:
                    job.process.wait(timeout=60)  # time to save a checkpoint
                except subprocess.TimeoutExpired:
                    job.process.kill()
                job.lock.close()

    def _start(self, job: Job, gpu: str | None) -> None:
        self._begin(job)
        # The child inherits the lock and holds it as long as it lives, even past the sweep's
        # own death, so a later sweep can tell that the run is still being stopped.
        job.lock = open(os.path.join(job.workdir, RUN_LOCK), "a")
        fcntl.flock(job.lock, fcntl.LOCK_EX)
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        with open(os.path.join(job.workdir, results.LOG), "ab") as log:
            job.process = subprocess.Popen(
                [sys.executable, "-m", self.module_name, *job.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own session: a Ctrl-C in the terminal reaches the sweep alone, which
                # stops the runs without recording them as failed.
                start_new_session=True,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
                pass_fds=(job.lock.fileno(),),
            )


def _holder(path: str) -> str | None:
    """The pid that a run's workdir lock records, if it records one."""
    try:
        with open(path) as f:
            pid = f.read().strip()
    except OSError:
        return None
    return pid if pid.isdigit() else None


def _wait_for_leftovers(jobs: Sequence[Job], total: int) -> None:
    """Waits for runs that a killed sweep left saving and stopping (they hold RUN_LOCK)."""
    for job in jobs:
        path = os.path.join(job.workdir, RUN_LOCK)
        if not os.path.exists(path):
            continue
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _holder(os.path.join(job.workdir, WORKDIR_LOCK))
                print(
                    f"[{job.index}/{total}] {job.name}  waiting for the process an earlier "
                    f"sweep left behind{f' (pid {pid})' if pid else ''} to stop; "
                    "kill it to stop waiting",
                    flush=True,
                )
                fcntl.flock(f, fcntl.LOCK_EX)


def _gpu_ids(spec: str) -> list[str]:
    if spec != "all":
        ids = [g.strip() for g in spec.split(",")]
        if not all(g.isdigit() for g in ids):
            raise SpecError(f"--gpus {spec!r}: expected 'all' or GPU indices like 0,1,2,3")
        return ids
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        raise SpecError(
            "--gpus=all: nvidia-smi found no GPUs; list them, e.g. --gpus=0,1"
        ) from None
    ids = [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]
    if not ids:
        raise SpecError("--gpus=all: nvidia-smi lists no GPUs")
    return ids


# ---------------------------------------------------------------- the sweep's own state


def _check_sweep_record(sweep_dir: str, module: str, fixed: list[str], runs: list[dict]) -> None:
    """sweep.json holds the module, the flags every run shares, and every run ever planned.

    A second command may add runs to a sweep, but not change what the existing ones mean.
    """
    path = os.path.join(sweep_dir, results.SWEEP_RECORD)
    record = results.read_json(path) or {"module": module, "fixed_flags": fixed, "runs": {}}
    if record["module"] != module or sorted(record["fixed_flags"]) != sorted(fixed):
        raise SpecError(
            f"{sweep_dir} holds a sweep of {record['module']} with the flags "
            f"{' '.join(record['fixed_flags']) or '(none)'}; this command differs, "
            "so give it another --sweep_dir"
        )
    for run in runs:
        record["runs"].setdefault(run_name(run), run)
    _write_json(path, record)


@contextlib.contextmanager
def _sweep_lock(sweep_dir: str):
    path = os.path.join(sweep_dir, ".lock")
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise SpecError(
                f"another sweep (pid {f.read().strip() or '?'}) is running in {sweep_dir}; "
                "wait for it, or use another --sweep_dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


# ---------------------------------------------------------------- command line


class _SpecAction(argparse.Action):
    """Keeps --grid and --random in one list, in command-line order (it names the workdirs)."""

    def __call__(self, parser, namespace, value, option_string=None):
        specs = list(getattr(namespace, "specs", None) or [])
        specs.append((self.dest, value))
        namespace.specs = specs


def build_parser() -> argparse.ArgumentParser:
    # argparse, not absl: in --mode=inprocess the experiment's absl flags share absl's
    # global registry with this process, and the sweep's own flags must not collide.
    parser = OneLineParser(
        prog="python -m launch.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("module", help="experiment module, e.g. experiments.mnist_convnet")
    parser.add_argument("--sweep_dir", required=True, help="one workdir per run goes here")
    parser.add_argument("--grid", action=_SpecAction, metavar="NAME=VALUES", help="see above")
    parser.add_argument("--random", action=_SpecAction, metavar="NAME=DIST", help="see above")
    parser.add_argument("--num_trials", type=int, default=None, help="draws for --random")
    parser.add_argument("--sweep_seed", type=int, default=0, help="seeds the --random draws")
    parser.add_argument("--mode", choices=("subprocess", "inprocess"), default="subprocess")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (subprocess)")
    parser.add_argument("--gpus", default=None, help="'all' or 0,1,...: one run per GPU")
    parser.add_argument(
        "--metric", default=results.VALIDATION, help="what the table ranks by (never a test metric)"
    )
    parser.add_argument("--dry_run", action="store_true", help="list the runs, run nothing")
    parser.set_defaults(specs=[])
    return parser


def sweep(argv: Sequence[str]) -> int:
    args, fixed = build_parser().parse_known_args(argv)
    for flag in fixed:
        if not flag.startswith("--"):
            raise SpecError(f"unexpected argument {flag!r}: give the runs' flags as --name=value")
        if flag.split("=")[0] == "--workdir":
            raise SpecError("--workdir is set per run; give --sweep_dir instead")
    results.check_metric(args.metric)
    if args.parallel < 1:
        raise SpecError(f"--parallel must be at least 1, got {args.parallel}")
    if args.gpus is not None and args.mode == "inprocess":
        raise SpecError("--gpus runs one subprocess per GPU; it does not go with --mode=inprocess")
    if args.sweep_seed < 0:
        raise SpecError(f"--sweep_seed must be at least 0, got {args.sweep_seed}")
    runs = expand(args.specs, args.num_trials, args.sweep_seed)
    gpus = _gpu_ids(args.gpus) if args.gpus is not None else None

    try:
        refuse_url(args.sweep_dir, "--sweep_dir")
    except UserError as e:
        raise SpecError(str(e)) from None
    module_flags = ModuleFlags.load(args.module)
    sweep_dir = os.path.abspath(args.sweep_dir)
    jobs = []
    for index, run in enumerate(runs, 1):
        name = run_name(run)
        workdir = os.path.join(sweep_dir, name)
        job = Job(name, workdir, run_args(workdir, run, fixed), index)
        module_flags.parse(job.args)  # every run's flags are checked before any run starts
        jobs.append(job)

    def overview() -> list[str]:
        statuses = [results.run_status(job.workdir) for job in jobs]
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
        where = f"{len(jobs)} runs of {args.module} in {args.sweep_dir}"
        print(f"sweep: {where} ({counts})", flush=True)
        return statuses

    if args.dry_run:
        for job, status in zip(jobs, overview(), strict=True):
            print(f"  {status:10s} python -m {args.module} {' '.join(job.args)}")
        return 0

    os.makedirs(sweep_dir, exist_ok=True)
    with _sweep_lock(sweep_dir):
        _check_sweep_record(sweep_dir, args.module, fixed, runs)
        _wait_for_leftovers(jobs, len(jobs))
        runner = Sweep(sweep_dir, args.module, len(jobs))
        todo = []
        for job, status in zip(jobs, overview(), strict=True):
            if status == results.DONE:
                print(f"[{job.index}/{len(jobs)}] {job.name}  finished before, skipped")
            else:
                todo.append(job)
        if args.mode == "inprocess":
            runner.run_inprocess(todo, module_flags)
        else:
            runner.run_subprocesses(todo, gpus or [None] * args.parallel)

    print()
    print(results.report(sweep_dir, args.metric))
    return 1 if runner.failed else 0


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return sweep(sys.argv[1:] if argv is None else argv)
    except SpecError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        error = storage_error(e, "--sweep_dir")
        if error is None:
            raise
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: stopped; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # stop the runs as for Ctrl-C
    sys.exit(main())
