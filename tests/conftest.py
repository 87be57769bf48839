"""Test set-up: eight simulated CPU devices, and MNIST from the prepared copy beside the repo."""

import os
from pathlib import Path

# Both must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
_shared = Path(__file__).resolve().parents[2] / "shared" / "tensorflow_datasets"
if "TFDS_DATA_DIR" not in os.environ and _shared.exists():
    os.environ["TFDS_DATA_DIR"] = str(_shared)
elif "TFDS_DATA_DIR" in os.environ:  # subprocesses may run elsewhere: make it absolute
    os.environ["TFDS_DATA_DIR"] = str(Path(os.environ["TFDS_DATA_DIR"]).resolve())

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mnist_small():
    """The first 2,000 training images, with the full validation and test sets."""
    from lib.core import data

    return data.mnist(train_size=2000)


def pytest_report_header(config):
    return f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} devices"
