"""Running the project's command lines from tests, as a user would from the repository root."""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# Environment variables that the command server's imports read (JAX's and XLA's
# settings, TFDS's data directory, Python's own, matplotlib's, threading libraries').
IMPORT_SETTINGS = ("JAX_", "XLA_", "TFDS_", "TF_", "PYTHON", "MPL", "OMP_", "LD_", "GRAIN")


def run_module(
    module: str, *args: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m module args...` in the repository root, output captured as text."""
    command = start_module(module, *args, env=env)
    out, err = command.communicate(timeout)
    return subprocess.CompletedProcess(command.args, command.returncode, out, err)


def start_module(module: str, *args: str, env: dict | None = None) -> Command:
    """`python -m module args...` started in the repository root, its output going to two
    files (Command.stdout, Command.stderr).

    It is forked from a process that has imported the third-party libraries already
    (command_server.py), unless its environment differs from that process's in a variable
    those imports read (IMPORT_SETTINGS): then it is a new process."""
    full = {**os.environ, **(env or {})}
    server = _server()
    changed = full.keys() ^ server.env.keys() | {k for k in full if full[k] != server.env.get(k)}
    return Command(
        module,
        list(args),
        full,
        None if any(k.startswith(IMPORT_SETTINGS) for k in changed) else server,
    )


class Command:
    """A started command, with the part of subprocess.Popen's interface the tests use."""

    def __init__(self, module: str, args: list[str], env: dict, server: _CommandServer | None):
        self.args = [sys.executable, "-m", module, *args]
        self.returncode: int | None = None
        self._output = tempfile.TemporaryDirectory()
        self.stdout = Path(self._output.name, "stdout")
        self.stderr = Path(self._output.name, "stderr")
        for path in (self.stdout, self.stderr):  # readable before the command writes
            path.touch()
        self._server = server
        if server is None:
            with self.stdout.open("w") as out, self.stderr.open("w") as err:
                self._process = subprocess.Popen(
                    self.args, cwd=ROOT, env=env, stdout=out, stderr=err
                )
            self.pid = self._process.pid
        else:
            self.pid = server.start(module, args, env, self.stdout, self.stderr)

    def poll(self) -> int | None:
        if self.returncode is None:
            if self._server is None:
                self.returncode = self._process.poll()
            else:
                self.returncode = self._server.wait(self.pid, block=False)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit status, once the command ended; after `timeout` seconds the command is
        killed and subprocess.TimeoutExpired raised (with what it wrote)."""
        if self.returncode is None:
            try:
                if self._server is None:
                    self.returncode = self._process.wait(timeout)
                else:
                    self.returncode = self._server.wait(self.pid, block=True, timeout=timeout)
            except (TimeoutError, subprocess.TimeoutExpired):
                self.kill()
                self.wait()
                raise subprocess.TimeoutExpired(self.args, timeout, *self.output()) from None
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the end (`wait`); the command's stdout and stderr."""
        self.wait(timeout)
        return self.output()

    def output(self) -> tuple[str, str]:
        """What the command has written so far to stdout and stderr."""
        return self.stdout.read_text(), self.stderr.read_text()

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _CommandServer:
    """The client side of command_server.py: one server per test process, started at
    its first command and ended with the process."""

    def __init__(self):
        self.env = dict(os.environ)
        self.lock = threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("command_server.py"))],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        atexit.register(self.close)
        self._read(timeout=120)  # {"ready": true}

    def _read(self, timeout: float | None) -> dict:
        # One reply per request, read before the next is sent: never a second line waiting
        # in the reader's buffer where select cannot see it.
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the command server ended (status {self.process.poll()})")
        return json.loads(line)

    def _ask(self, request: dict, timeout: float | None = 30) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read(timeout)

    def start(self, module: str, args: list[str], env: dict, stdout: Path, stderr: Path) -> int:
        with self.lock:
            request = {"op": "start", "module": module, "args": args, "cwd": str(ROOT)}
            request |= {"env": env, "stdout": str(stdout), "stderr": str(stderr)}
            return self._ask(request)["pid"]

    def wait(self, pid: int, block: bool, timeout: float | None = None) -> int | None:
        """The child's exit status (None: it still runs); after `timeout` seconds of
        blocking the child is killed and TimeoutError raised."""
        with self.lock:
            try:
                return self._ask({"op": "wait", "pid": pid, "block": block}, timeout)["returncode"]
            except TimeoutError:
                # The server still waits for the child: end it and take the answer.
                os.kill(pid, signal.SIGKILL)
                self._read(timeout=30)
                raise

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


_servers: dict[int, _CommandServer] = {}


def _server() -> _CommandServer:
    if os.getpid() not in _servers:  # not one inherited through a fork
        _servers[os.getpid()] = _CommandServer()
    return _servers[os.getpid()]


MNIST_RESULT = ("best_epoch", "best_val_accuracy", "test_accuracy", "final_val_accuracy")
MNIST_TIMING = ("epoch_time_s", "examples_per_s")
IMAGENET_RESULT = ("steps", "final_top1", "final_top5", "best_top1", "final_train_loss", "params")
IMAGENET_TIMING = ("eval_time_s",)


def result(workdir: Path, keys=MNIST_RESULT, timing=MNIST_TIMING) -> dict:
    """A finished run's summary (`keys` of it) and metrics lines less the `timing` fields,
    to compare runs: an MNIST run's by default."""
    summary = json.loads((workdir / "summary.json").read_text())
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    timeless = [{k: v for k, v in line.items() if k not in timing} for line in lines]
    return {"summary": {k: summary[k] for k in keys}, "metrics": timeless}


def imagenet_result(workdir: Path) -> dict:
    """`result` of a finished ImageNet-scale run."""
    return result(workdir, IMAGENET_RESULT, IMAGENET_TIMING)


def assert_refused(done: subprocess.CompletedProcess, *parts: str) -> None:
    """A command refused as a user's mistake: exit status 1, no traceback, and stderr
    ending in one line 'error: ...' that names each of `parts`."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:], done.stderr
    for part in parts:
        assert part in errors[0], errors[0]
