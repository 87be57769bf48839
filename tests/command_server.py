"""A process that imports the project's third-party libraries once, then forks one child
per command the tests run (`commands.start_module`), so a command skips the two seconds
that importing JAX, Flax, Optax, Orbax, TFDS and matplotlib takes.

The child is what `python -m module args...` would be from that point on: the
requested working directory, environment, argv and `sys.path[0]`, stdin from /dev/null,
stdout and stderr into the files named in the request, the module run as `__main__`,
the exit status of its `sys.exit` (1 for an uncaught exception, after its traceback),
non-daemon threads joined and atexit handlers run at its end (`_exit`). Nothing of the project
is imported here, so the project's own import-time set-up (`lib`'s XLA flags) runs in
the child under the child's environment; `commands.start_module` starts a real process
for any environment that changes what these imports read (JAX's, XLA's, TFDS's
settings). No JAX backend starts here, and these imports start no thread, so forking is
safe.

Protocol, one JSON object per line: on stdin the requests {"op": "start", "module",
"args", "cwd", "env", "stdout", "stderr"}, answered {"pid"} once forked, and
{"op": "wait", "pid", "block"}, answered {"returncode"} once that child ended (negative:
the signal that ended it, as `subprocess` reports it), or at once with null when "block"
is false and it still runs. Several children may run at a time.
"""

import atexit
import gc
import importlib
import json
import os
import runpy
import sys
import threading
import traceback

PRELOAD = (
    "numpy",
    "jax",
    "jax.numpy",
    "flax.linen",
    "optax",
    "orbax.checkpoint",
    "ml_collections",
    "ml_collections.config_flags",
    "absl.app",
    "absl.flags",
    "absl.logging",
    "matplotlib.figure",
    "tensorflow_datasets",
    "PIL.Image",
)


# Python's cyclic garbage collector runs less often in the tests' processes (conftest.py
# says why); its generation thresholds, 700, 10, 10 by default.
GC_THRESHOLDS = (20_000, 20, 20)


def _reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _child(request: dict) -> int:
    """Become the command; the exit status it ends with."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    for fd, name in ((1, request["stdout"]), (2, request["stderr"])):
        file = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(file, fd)
        os.close(file)
    sys.argv = [request["module"], *request["args"]]
    sys.path[0] = request["cwd"]  # as `python -m` puts the working directory first
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _exit(status: int) -> None:
    """End the child as Python's shutdown would as far as a command can tell (its
    non-daemon threads joined, atexit handlers run, stdout and stderr flushed), without
    tearing down every imported module one by one: that takes 0.4 s of a command that
    ends in 0.05 s, as one rejecting a bad flag does."""
    main_thread = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main_thread and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def main() -> int:
    gc.set_threshold(*GC_THRESHOLDS)
    for name in PRELOAD:
        importlib.import_module(name)
    _reply({"ready": True})
    ended: dict[int, int] = {}  # the exit status of each child reaped
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            pid = os.fork()
            if pid == 0:
                _exit(_child(request))
            _reply({"pid": pid})
        else:  # "wait": {"pid", "block"}
            pid = request["pid"]
            if pid not in ended:
                done, status = os.waitpid(pid, 0 if request["block"] else os.WNOHANG)
                if done:
                    ended[pid] = os.waitstatus_to_exitcode(status)
            _reply({"returncode": ended.get(pid)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
