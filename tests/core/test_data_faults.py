"""Damaged data: a damaged decoded cache is rebuilt, a damaged dataset file is named with
how to prepare it again, and the command line says so in one line."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from commands import run_module

from lib.core import data

RECORD = "mnist-{split}.array_record-00000-of-00001"


@pytest.fixture(scope="module")
def prepared():
    return Path(os.environ["TFDS_DATA_DIR"])


def copy_of_mnist(prepared: Path, to: Path, split: str = "test") -> Path:
    """A copy of the prepared MNIST under `to`; the path of its `split`'s record file."""
    shutil.copytree(prepared / "mnist", to / "mnist")
    for path in (to / "mnist").rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return next((to / "mnist").rglob(RECORD.format(split=split)))


def damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    else:  # bytes overwritten in place, the size unchanged
        middle = len(raw) // 2
        raw[middle : middle + 64] = bytes(64)
        path.write_bytes(raw)


@pytest.mark.parametrize("how", ["truncated", "overwritten"])
def test_a_damaged_cache_is_rebuilt_with_the_same_arrays(tmp_path, prepared, how):
    images, labels = data.load_tfds_arrays("mnist", "test", cache_dir=tmp_path)
    cache = tmp_path / "mnist-test.npz"
    damage(cache, how)
    again_images, again_labels = data.load_tfds_arrays("mnist", "test", cache_dir=tmp_path)
    np.testing.assert_array_equal(again_images, images)
    np.testing.assert_array_equal(again_labels, labels)
    with np.load(cache) as rebuilt:  # and the cache is whole again
        np.testing.assert_array_equal(rebuilt["labels"], labels)


@pytest.mark.parametrize("how", ["truncated", "overwritten"])
def test_a_damaged_dataset_file_is_named_with_how_to_prepare_it(tmp_path, prepared, how):
    record = copy_of_mnist(prepared, tmp_path / "tfds")
    damage(record, how)
    with pytest.raises(data.DataError, match="damaged; prepare the dataset again") as error:
        data.load_tfds_arrays("mnist", "test", str(tmp_path / "tfds"), tmp_path / "cache")
    assert str(tmp_path / "tfds" / "mnist") in str(error.value)
    assert not (tmp_path / "cache" / "mnist-test.npz").exists()


def test_the_command_line_names_a_damaged_dataset_in_one_line(tmp_path, prepared):
    damage(copy_of_mnist(prepared, tmp_path / "tfds", "train"), "truncated")  # read first
    done = run_module(
        "experiments.mnist_convnet",
        "--net=shallow",
        "--epochs=1",
        "--train_size=100",
        f"--workdir={tmp_path / 'run'}",
        env={"TFDS_DATA_DIR": str(tmp_path / "tfds"), "CLASSIC_NETS_CACHE": str(tmp_path / "c")},
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    assert lines[-1].startswith("error: the 'train' split of mnist"), lines
