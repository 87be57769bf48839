"""A workdir given as a cloud storage URL is refused, not written to a local look-alike."""

import os

import pytest

from lib.core import metrics
from lib.core.errors import UserError


def test_a_url_workdir_is_refused_and_nothing_is_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="cloud storage paths are not supported") as refused:
        metrics.prepare_workdir("gs://bucket/run")
    assert "local or mounted folder" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert os.listdir(tmp_path) == []
    metrics.prepare_workdir("run")  # a local folder is made as before
    assert (tmp_path / "run").is_dir()
