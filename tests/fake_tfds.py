"""Small datasets for the tests: TFDS's prepared format built from MNIST's records, so that
`--dataset` is exercised end to end without any new files beside the repository, and
random colour splits for the nets' shape inference."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
from array_record.python import array_record_module

from lib.core import data


def prepared_copy(data_dir: Path, name: str, train: int, test: int, version: str = "3.0.1") -> Path:
    """A prepared TFDS dataset `name` (a builder's name, "emnist/digits" for a config;
    `version`, its builder's) in `data_dir` holding the first `train` and `test` records
    of MNIST, read from $TFDS_DATA_DIR; returns `data_dir`."""
    source = Path(os.environ["TFDS_DATA_DIR"]) / "mnist" / "3.0.1"
    target = Path(data_dir) / name / version
    target.mkdir(parents=True, exist_ok=True)
    info = json.loads((source / "dataset_info.json").read_text())
    info["name"], info["version"] = name.split("/")[0], version
    if "/" in name:
        info["configName"] = name.split("/")[1]
    for split in info["splits"]:
        n = {"train": train, "test": test}[split["name"]]
        reader = array_record_module.ArrayRecordReader(
            str(source / f"mnist-{split['name']}.array_record-00000-of-00001")
        )
        records = reader.read(list(range(n)))
        reader.close()
        writer = array_record_module.ArrayRecordWriter(
            str(target / f"{info['name']}-{split['name']}.array_record-00000-of-00001"),
            "group_size:1",
        )
        for record in records:
            writer.write(record)
        writer.close()
        split["shardLengths"] = [str(n)]
        split["numBytes"] = str(sum(map(len, records)))
    (target / "dataset_info.json").write_text(json.dumps(info))
    shutil.copy(source / "features.json", target / "features.json")
    return Path(data_dir)


def colour_splits(n_train=96, n_eval=48, classes=3, seed=0):
    """Random 32x32 colour images of `classes` classes, each class its own mean colour."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, classes, n).astype(np.int32)
        images = rng.random((n, 32, 32, 3), dtype=np.float32) * 0.5
        images[..., 0] += 0.5 * (labels == 0)[:, None, None]
        images[..., 1] += 0.5 * (labels == 1)[:, None, None]
        return data.Split(images, labels)

    return data.Splits(split(n_train), split(n_eval), split(n_eval))
