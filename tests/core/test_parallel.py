"""lib.core.parallel: clear refusals of device counts and cluster settings that cannot work."""

import jax
import pytest

from lib.core import parallel
from lib.core.errors import UserError


def test_a_device_count_past_the_machine_is_refused():
    with pytest.raises(parallel.DeviceCountError, match=f"give at most {jax.device_count()}"):
        parallel.make_mesh(jax.device_count() + 1)
    assert parallel.make_mesh(2).size == 2


def test_a_half_described_cluster_names_what_is_missing(monkeypatch):
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
    with pytest.raises(UserError, match="JAX_PROCESS_ID unset"):
        parallel.initialize_from_env()
