"""Test set-up: eight simulated CPU devices, MNIST from the prepared copy beside the repo,
one compilation cache for the session, and the helpers beside this file importable from
the topic folders."""

import atexit
import gc
import os
import shutil
import sys
import tempfile
from pathlib import Path

# The tests mirror lib/ in folders; their shared helpers (commands, fake_tfds, ...) live
# here, beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from command_server import GC_THRESHOLDS

# Both must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# LLVM's optimisation level for the CPU code XLA emits: 1 instead of XLA's default 3. The
# tests' programs (and the commands they run) compile about a third faster and run at
# the same speed. The ladder's rungs train to the same bits at either level (conv2 and
# relu compared over 200 steps, dropout over 300); a quick CapsNet run's losses differ in
# the last bit or two. Every comparison a test makes is within the one level; the
# experiments keep XLA's default.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=1"
_shared = Path(__file__).resolve().parents[2] / "shared" / "tensorflow_datasets"
if "TFDS_DATA_DIR" not in os.environ and _shared.exists():
    os.environ["TFDS_DATA_DIR"] = str(_shared)
elif "TFDS_DATA_DIR" in os.environ:  # subprocesses may run elsewhere: make it absolute
    os.environ["TFDS_DATA_DIR"] = str(Path(os.environ["TFDS_DATA_DIR"]).resolve())

# One compilation cache for the session, in this process and in every command a test
# runs: a program that several tests build (a rung at a test's sizes) compiles once, not
# once per process, the small ones too (each command compiles dozens of them, a second
# of its time). The cache gives back the same executable, so no result changes.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="classic-nets-tests-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

# Python's cyclic garbage collector, run less often: a test process holds many objects
# (traced programs, modules), and at the default thresholds collecting them took about
# 7% of the ImageNet, autoencoder and CapsNet tests' time (1% at these). The commands the
# tests run inherit the same from command_server.py.
gc.set_threshold(*GC_THRESHOLDS)


@pytest.fixture(scope="session")
def mnist_small():
    """The first 2,000 training images, with the full validation and test sets."""
    from lib.core import data

    return data.mnist(train_size=2000)


@pytest.fixture
def signalled_as_it_ends():
    """`lib.nielsen.train.train_and_evaluate` that sends this process SIGTERM as each run
    ends, too late to stop that run: patch it in to test that the caller of several runs
    starts no other."""
    import os
    import signal

    from lib.nielsen import train

    train_and_evaluate = train.train_and_evaluate

    def train_then_signal(*args, **kwargs):
        result = train_and_evaluate(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    return train_then_signal


def pytest_report_header(config):
    return f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} devices"
