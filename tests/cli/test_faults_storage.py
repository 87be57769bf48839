"""A full disk, a folder the run may not write: one line and status 1, not a traceback;
any other OS error is a bug, and keeps its traceback."""

import errno
import os
import subprocess
import sys

import pytest
from commands import ROOT, assert_refused, run_module

from experiments import common
from launch import results
from lib.core.errors import storage_error

FULL = "/dev/full"  # every write to it fails as on a full disk (ENOSPC)

STORAGE = {  # errno: what the line says to do
    errno.ENOSPC: "free some space or choose another --workdir",
    errno.EDQUOT: "free some space or choose another --workdir",
    errno.EACCES: "check the folder's permissions or choose another --workdir",
    errno.EPERM: "check the folder's permissions or choose another --workdir",
    errno.EROFS: "check the folder's permissions or choose another --workdir",
}


def _failing(error: BaseException):
    def run(config: dict) -> dict:
        raise error

    return run


@pytest.mark.parametrize("code", STORAGE, ids=errno.errorcode.get)
def test_a_storage_error_ends_the_run_in_one_line(code, capsys):
    path = "/runs/mnist/metrics.jsonl"
    with pytest.raises(SystemExit) as exited:
        common.run_from_flags(["main"], _failing(OSError(code, os.strerror(code), path)), [])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err == f"error: {os.strerror(code).lower()} for {path}; {STORAGE[code]}\n"


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/runs/mnist/config.json"),
        OSError("a library's own error, with no errno"),
    ],
    ids=["ENOENT", "no errno"],
)
def test_other_os_errors_still_raise(error, capsys):
    with pytest.raises(OSError) as raised:
        common.run_from_flags(["main"], _failing(error), [])
    assert raised.value is error
    assert capsys.readouterr().err == ""


def test_the_line_names_no_file_when_the_error_names_none():
    error = storage_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "--sweep_dir")
    assert str(error) == "no space left on device; free some space or choose another --sweep_dir"
    assert storage_error(ValueError("not an OSError")) is None


def test_a_run_whose_metrics_meet_a_full_disk_ends_in_one_line(tmp_path):
    (tmp_path / "metrics.jsonl").symlink_to(FULL)
    done = run_module("tests.fake_experiment", f"--workdir={tmp_path}", timeout=120)
    assert_refused(done, "no space left on device", "free some space or choose another --workdir")
    assert not (tmp_path / "summary.json").exists()


def test_the_ladder_table_on_a_full_disk_is_one_line(tmp_path):
    (tmp_path / "ladder.md").symlink_to(FULL)
    done = run_module("launch.ladder", "--table_only", f"--workdir={tmp_path}", timeout=120)
    assert_refused(done, "no space left on device", "choose another --workdir")


def test_a_sweep_whose_report_meets_a_full_disk_ends_in_one_line(tmp_path, capsys):
    (tmp_path / "results.md").symlink_to(FULL)
    done = run_module(
        "launch.sweep", "tests.fake_experiment", f"--sweep_dir={tmp_path}", "--grid=seed=0",
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "sweep: error: no space left on device; free some space or choose another --sweep_dir"
    )
    assert (tmp_path / "seed=0" / "summary.json").exists()  # the run itself finished
    # The report alone, written again into the same folder.
    assert results.main([str(tmp_path), "--no_plots"]) == 1
    assert capsys.readouterr().err == "results: error: no space left on device; free some space\n"


def test_another_folder_is_suggested_only_for_a_file_inside_the_one_named_now():
    def line(path):
        return str(storage_error(OSError(errno.ENOSPC, "No space", path), "--workdir", "runs/a"))

    assert line("runs/a/checkpoints/7").endswith("free some space or choose another --workdir")
    assert line("README.md").endswith("; free some space")  # --workdir would not help
    assert line("runs/ab/x").endswith("; free some space")  # a sibling, not inside


def test_a_file_where_a_folder_goes_is_named_in_one_line(tmp_path):
    """A path of the wrong kind is the user's to fix, not a traceback."""
    error = storage_error(OSError(errno.ENOTDIR, "Not a directory", "a/b"), "--workdir")
    assert str(error) == "not a directory for a/b; fix the path or choose another --workdir"
    (tmp_path / "afile").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "launch.sweep", "experiments.circuits",
         f"--sweep_dir={tmp_path}/afile", "--grid", "seed=0,1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"sweep: error: file exists for {tmp_path}/afile; fix the path or choose another "
        "--sweep_dir"
    )
