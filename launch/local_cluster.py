"""Start P processes of a module on this machine, joined as one JAX cluster.

A local stand-in for P hosts: each process gets its own share of simulated CPU
devices and finds the others through a coordinator on 127.0.0.1, exactly as
processes on separate hosts would through `jax.distributed.initialize`.

    python -m launch.local_cluster --processes=2 --devices_per_process=4 \\
        launch.join_cluster experiments.mnist_convnet --workdir=runs/two_hosts --epochs=1

Each process sees these environment variables (the contract with the module):

    JAX_COORDINATOR_ADDRESS   127.0.0.1:<free port>, process 0 serves it
    JAX_NUM_PROCESSES         P
    JAX_PROCESS_ID            0 .. P-1
    XLA_FLAGS                 --xla_force_host_platform_device_count=D (appended)
    JAX_PLATFORMS             cpu (unless --platform says otherwise)

and must call `lib.core.parallel.initialize_from_env()` (or the same call itself) before
touching any device; a module that does not, as the experiments do not, runs under
`launch.join_cluster`, as above.
Process 0's output goes to the terminal; the others' output goes to `--log_dir`
(a temporary directory by default) and is shown if they fail.
If any process fails, the others are stopped: they would otherwise wait for it in
a collective until the coordinator's heartbeat timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(
    process_id: int,
    num_processes: int,
    coordinator: str,
    devices_per_process: int,
    platform: str | None,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["JAX_COORDINATOR_ADDRESS"] = coordinator
    env["JAX_NUM_PROCESSES"] = str(num_processes)
    env["JAX_PROCESS_ID"] = str(process_id)
    device_flag = f"--xla_force_host_platform_device_count={devices_per_process}"
    env["XLA_FLAGS"] = " ".join(
        [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
        + [device_flag]
    )
    if platform:
        env["JAX_PLATFORMS"] = platform
    return env


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def launch(
    command: Sequence[str],
    num_processes: int,
    devices_per_process: int,
    log_dir: str,
    platform: str | None = "cpu",
    timeout_s: float | None = None,
    quiet: bool = False,
) -> int:
    """Runs `command` as `num_processes` cooperating processes; returns the first failing code."""
    coordinator = f"127.0.0.1:{free_port()}"
    os.makedirs(log_dir, exist_ok=True)
    procs: list[subprocess.Popen] = []
    logs: list[str] = []
    files = []
    try:
        for pid in range(num_processes):
            env = process_env(pid, num_processes, coordinator, devices_per_process, platform)
            log = os.path.join(log_dir, f"process_{pid}.log")
            logs.append(log)
            if pid == 0 and not quiet:
                out = None
            else:
                out = open(log, "w")
                files.append(out)
            procs.append(
                subprocess.Popen(
                    list(command),
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT if out is not None else None,
                )
            )
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                pid, code = failed[0]
                print(f"local_cluster: process {pid} exited with code {code}", file=sys.stderr)
                if pid > 0 or quiet:
                    sys.stderr.write(_tail(logs[pid]))
                return code
            if all(c == 0 for c in codes):
                return 0
            if deadline is not None and time.monotonic() > deadline:
                print(f"local_cluster: timed out after {timeout_s:.0f} s", file=sys.stderr)
                return 124
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in files:
            f.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.local_cluster",
        description="Run a module as P processes of one JAX cluster on this machine.",
    )
    parser.add_argument("--processes", type=int, default=2, help="number of processes P")
    parser.add_argument(
        "--devices_per_process", type=int, default=4, help="simulated CPU devices per process"
    )
    parser.add_argument(
        "--platform",
        default="cpu",
        help="JAX_PLATFORMS for the processes ('' keeps the environment's)",
    )
    parser.add_argument("--log_dir", default=None, help="per-process logs (default: a temp dir)")
    parser.add_argument("--timeout_s", type=float, default=None)
    parser.add_argument(
        "module",
        help="module to run with python -m (e.g. launch.join_cluster), or a .py script",
    )
    parser.add_argument("module_args", nargs=argparse.REMAINDER, help="flags for the module")
    args = parser.parse_args(argv)
    if args.processes < 1 or args.devices_per_process < 1:
        print(
            "local_cluster: error: --processes and --devices_per_process must be at least 1",
            file=sys.stderr,
        )
        return 2
    if args.timeout_s is not None and args.timeout_s <= 0:
        print(f"local_cluster: error: --timeout_s must be positive, got {args.timeout_s:g}",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.log_dir and os.path.exists(args.log_dir) and not os.path.isdir(args.log_dir):
        print(f"local_cluster: error: --log_dir={args.log_dir} is a file; name a folder",
              file=sys.stderr)  # fmt: skip
        return 2
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="local_cluster_")
    target = [args.module] if args.module.endswith(".py") else ["-m", args.module]
    command = [sys.executable, *target, *args.module_args]
    with contextlib.suppress(KeyboardInterrupt):
        return launch(
            command,
            args.processes,
            args.devices_per_process,
            log_dir,
            platform=args.platform or None,
            timeout_s=args.timeout_s,
        )
    return 130


if __name__ == "__main__":
    sys.exit(main())
