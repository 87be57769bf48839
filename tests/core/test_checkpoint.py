"""Damaged checkpoints and a full disk: a fallback to the newest intact step, or one line."""

import errno
import hashlib
import os
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from commands import result, run_module

from lib.core.checkpoint import Checkpointer
from lib.core.errors import UserError

TINY = [
    "--net=shallow",
    "--train_size=200",
    "--num_devices=1",
    "--validation_size=500",
    "--test_size=500",
]  # 20 steps per epoch


def _state(seed: int) -> dict:
    """Random floats (which compress to nothing: damage in place stays readable)."""
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.normal(size=(100, 80)).astype(np.float32)),
        "b": jnp.asarray(rng.normal(size=80).astype(np.float32)),
        "step": jnp.asarray(seed, jnp.int32),
    }


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


@pytest.fixture
def two_steps(tmp_path):
    """A checkpoint folder holding steps 1 and 2 of a small pytree."""
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    checkpoints.save(1, _state(1), {"history": [1.5]})
    checkpoints.save(2, _state(2), {"history": [1.5, 0.25]})
    checkpoints.close()
    return tmp_path / "checkpoints"


def _array_file(step_dir: Path) -> Path:
    """The step's largest array data file (Orbax's OCDBT keeps the arrays in a few)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def truncate_array_data(step_dir: Path) -> None:
    path = _array_file(step_dir)
    os.truncate(path, path.stat().st_size // 2)


def truncate_record(step_dir: Path) -> None:
    path = step_dir / "record" / "metadata"
    os.truncate(path, path.stat().st_size // 2)


def remove_record(step_dir: Path) -> None:
    (step_dir / "record" / "metadata").unlink()


def flip_array_bytes(step_dir: Path) -> None:
    """Overwrite 16 bytes in the middle of the array data, in place: the size stays."""
    path = _array_file(step_dir)
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        chunk = f.read(16)
        f.seek(-len(chunk), os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))


DAMAGE = {
    "truncated array data": (truncate_array_data, "its arrays cannot be read"),
    "truncated record": (truncate_record, "its record cannot be read"),
    "missing record": (remove_record, "its record cannot be read"),
    "bytes flipped in place": (flip_array_bytes, "do not match the checksum"),
}


def test_intact_checkpoint_restores_exactly(two_steps):
    restored = Checkpointer(two_steps).restore_latest(_state(0))
    assert restored.step == 2 and restored.skipped == () and restored.notice is None
    assert _same(restored.state, _state(2))
    assert restored.record == {"history": [1.5, 0.25]}  # the checksum stays inside


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_newest_step_falls_back_to_the_older(two_steps, damage):
    spoil, reason = DAMAGE[damage]
    spoil(two_steps / "2")
    checkpoints = Checkpointer(two_steps)
    restored = checkpoints.restore_latest(_state(0))
    assert restored.step == 1
    assert _same(restored.state, _state(1))
    assert restored.record == {"history": [1.5]}
    assert [step for step, _ in restored.skipped] == [2]
    assert reason in restored.skipped[0][1]
    assert restored.notice.startswith("checkpoint step 2 is damaged (")
    assert restored.notice.endswith("); resuming from step 1")
    assert "\n" not in restored.notice
    # Training goes on from step 1: the next save replaces the damaged step.
    checkpoints.save(2, _state(3), {"history": [1.5, 0.5]})
    again = checkpoints.restore_latest(_state(0))
    assert again.step == 2 and again.skipped == () and _same(again.state, _state(3))
    checkpoints.close()


def test_no_intact_step_is_one_user_error(two_steps):
    truncate_array_data(two_steps / "2")
    flip_array_bytes(two_steps / "1")
    with pytest.raises(UserError) as raised:
        Checkpointer(two_steps).restore_latest(_state(0))
    message = str(raised.value)
    assert str(two_steps) in message and "delete" in message
    assert "step 2: its arrays cannot be read" in message
    assert "step 1: its contents do not match the checksum" in message
    assert "\n" not in message


def _deny_reading(monkeypatch, step: int, item: str, error: Exception) -> None:
    """Reading `item` ("record" or "state") of checkpoint `step` raises `error`, as Orbax
    does where the process may not read the step's files (and TensorStore, for arrays)."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as json_handler
    from orbax.checkpoint._src.handlers import standard_checkpoint_handler as array_handler

    if item == "record":
        handler = json_handler.JsonCheckpointHandler
    else:
        handler = array_handler.StandardCheckpointHandler
    read = handler.restore

    def denied(self, directory, *args, **kwargs):
        if directory.parent.name == str(step):
            raise error
        return read(self, directory, *args, **kwargs)

    monkeypatch.setattr(handler, "restore", denied)


# What TensorStore raises for an array file that the process may not read.
TENSORSTORE_DENIED = ValueError(
    'PERMISSION_DENIED: Error opening "zarr" driver: Error reading "w/.zarray" in OCDBT '
    'database at local file "/c/2/state/": Failed to open: "/c/2/state/d/88": Permission '
    "denied [os_error_code='13']"
)
DENIED = {
    "record": PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/c/2/record/metadata"),
    "state": TENSORSTORE_DENIED,
}


@pytest.mark.parametrize("item", DENIED)
def test_a_step_that_cannot_be_read_for_permissions_is_not_damaged(two_steps, item):
    checkpoints = Checkpointer(two_steps)
    with pytest.MonkeyPatch.context() as patch:
        _deny_reading(patch, 2, item, DENIED[item])
        with pytest.raises(UserError) as raised:
            checkpoints.restore_latest(_state(0))
        with pytest.raises(UserError):
            checkpoints.restore(_state(0), step=2)
    message = str(raised.value)
    assert message.startswith("permission denied reading checkpoint step 2 in ")
    assert str(two_steps) in message and "permissions" in message and "\n" not in message
    assert checkpoints.all_steps() == [1, 2]
    # Once it may read the folder again, the run resumes from step 2, none passed over.
    restored = checkpoints.restore_latest(_state(0))
    assert restored.step == 2 and restored.skipped == () and _same(restored.state, _state(2))
    checkpoints.close()


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        OSError(errno.EIO, os.strerror(errno.EIO), "/c/2/record/metadata"),
    ],
    ids=["no memory", "I/O error"],
)
def test_other_read_failures_raise_and_leave_the_step(two_steps, error):
    checkpoints = Checkpointer(two_steps)
    with pytest.MonkeyPatch.context() as patch:
        _deny_reading(patch, 2, "record", error)
        with pytest.raises(type(error)) as raised:
            checkpoints.restore_latest(_state(0))
    assert raised.value is error
    assert checkpoints.all_steps() == [1, 2]
    assert checkpoints.restore_latest(_state(0)).step == 2
    checkpoints.close()


def _fill_the_disk(monkeypatch) -> None:
    """Writing a checkpoint's record fails as on a full disk (ENOSPC), in Orbax's own save."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler

    async def full(self, x, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))

    monkeypatch.setattr(handler.JsonCheckpointHandler, "_save_fn", full)


def test_full_disk_keeps_the_last_good_checkpoint(two_steps, monkeypatch, capfd):
    checkpoints = Checkpointer(two_steps)
    with monkeypatch.context() as patch:
        _fill_the_disk(patch)
        with pytest.raises(UserError) as raised:
            checkpoints.save(3, _state(3), {"history": [1.5, 0.25, 0.125]})
    message = str(raised.value)
    assert "no space left" in message and str(two_steps) in message
    assert "step 2, is kept" in message
    assert sorted(p.name for p in two_steps.iterdir()) == ["1", "2"]  # no partial step 3
    assert "Traceback" not in capfd.readouterr().err  # Orbax's thread errors held back
    assert checkpoints.restore_latest(_state(0)).step == 2
    checkpoints.save(3, _state(3), {"history": [1.5, 0.25, 0.125]})  # space again
    assert checkpoints.restore_latest(_state(0)).step == 3
    checkpoints.close()


def _fail_saving(monkeypatch, error: Exception) -> None:
    """Writing a checkpoint's record raises `error`, in Orbax's own save."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler

    async def failing(self, x, directory):
        raise error

    monkeypatch.setattr(handler.JsonCheckpointHandler, "_save_fn", failing)


QUOTA = ValueError(  # TensorStore's way of saying so: no OSError
    'RESOURCE_EXHAUSTED: Error writing local file "/ckpt/3/d/0": [OS error 122: Disk '
    "quota exceeded] [os_error_code='122']"
)


@pytest.mark.parametrize(
    "error, expected",
    [
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/ckpt/3"), "permission denied"),
        (OSError(errno.EROFS, os.strerror(errno.EROFS), "/ckpt/3"), "read-only file system"),
        (QUOTA, "no space left"),
    ],
    ids=["permission denied", "read-only", "quota (TensorStore)"],
)
def test_a_denied_read_only_or_over_quota_save_is_one_line(two_steps, monkeypatch, error, expected):
    _fail_saving(monkeypatch, error)
    checkpoints = Checkpointer(two_steps)
    with pytest.raises(UserError) as raised:
        checkpoints.save(3, _state(3), {"history": []})
    assert expected in str(raised.value) and str(two_steps) in str(raised.value)
    assert sorted(p.name for p in two_steps.iterdir()) == ["1", "2"]


def test_other_save_failures_still_raise(two_steps, monkeypatch):
    error = OSError(errno.EIO, os.strerror(errno.EIO), "/ckpt/3")
    _fail_saving(monkeypatch, error)
    checkpoints = Checkpointer(two_steps)
    with pytest.raises(OSError) as raised:
        checkpoints.save(3, _state(3), {"history": []})
    assert raised.value.errno == errno.EIO
    assert sorted(p.name for p in two_steps.iterdir()) == ["1", "2"]


# ----------------------------------------------------------------------------- command line


def cli(*args, env=None):
    return run_module("experiments.mnist_convnet", *TINY, *args, env=env, timeout=240)


def _digest(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Two epochs uninterrupted: checkpoints at steps 20 and 40."""
    workdir = tmp_path_factory.mktemp("finished")
    done = cli("--epochs=2", f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["20", "40"]
    return workdir


def test_run_resumes_past_a_damaged_checkpoint(finished, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    flip_array_bytes(workdir / "checkpoints" / "40")
    again = cli("--epochs=2", f"--workdir={workdir}")
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    notices = [line for line in again.stdout.splitlines() if "damaged" in line]
    assert notices == [
        "checkpoint step 40 is damaged (its contents do not match the checksum saved with "
        "them); resuming from step 20"
    ]
    assert "resuming at step 20" in again.stdout
    assert result(workdir) == result(finished)  # epoch 2 again, exactly as first trained


def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(finished, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    before = _digest(workdir / "checkpoints")
    fake = tmp_path / "fake"  # loaded at start-up: record writes fail as on a full disk
    fake.mkdir()
    (fake / "sitecustomize.py").write_text(
        "import errno, os\n"
        "from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler\n"
        "async def full(self, x, directory):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))\n"
        "handler.JsonCheckpointHandler._save_fn = full\n"
    )
    path = os.pathsep.join(filter(None, [str(fake), os.environ.get("PYTHONPATH")]))
    full = cli("--epochs=3", f"--workdir={workdir}", env={"PYTHONPATH": path})
    assert full.returncode == 1, full.stderr
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no space left"), full.stderr
    assert str(workdir / "checkpoints") in lines[0] and "step 40, is kept" in lines[0]
    assert _digest(workdir / "checkpoints") == before  # no partial step 60 beside them
