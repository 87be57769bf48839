"""The launch scripts: valid bash, and settings they repeat agree with the Python they name."""

import json
import re
import subprocess
import sys

import pytest
from commands import ROOT

from experiments import adversarial
from launch import finished

SCRIPTS = sorted((ROOT / "launch").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_every_script_is_valid_bash(script):
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_the_blind_spot_script_trains_the_rungs_by_the_studys_quick_recipe():
    text = (ROOT / "launch" / "adversarial.sh").read_text()
    recipe = re.search(r"^RECIPE=\((.*?)\)", text, re.S | re.M).group(1)
    flags = dict(re.findall(r"--(\w+)=(\S+)", recipe))
    expected = {k: str(v) for k, v in adversarial.QUICK_RECIPE.items() if k != "net"}
    assert flags == expected


@pytest.mark.parametrize(
    "summary, epochs, expected",
    [
        ({"finished": True, "epochs": 50}, None, True),
        ({"finished": True, "epochs": 50}, 50, True),
        ({"finished": True, "epochs": 30}, 50, False),  # finished, at other settings
        ({"finished": False, "epochs": 50}, 50, False),  # stopped: resume it
        ({"finished": False, "epochs": 50}, None, False),
        ({"epochs": 50}, None, False),
        (None, None, False),  # no summary.json yet
        ("{", 50, False),  # a damaged summary.json
    ],
)
def test_finished_reads_the_runs_summary(tmp_path, summary, epochs, expected):
    if isinstance(summary, dict):
        (tmp_path / "summary.json").write_text(json.dumps(summary))
    elif summary is not None:
        (tmp_path / "summary.json").write_text(summary)
    assert finished.finished(tmp_path, epochs) is expected


@pytest.mark.parametrize(
    "args, code",
    [([], 0), (["--epochs=50"], 0), (["--epochs=30"], 1), (["--epochs=x"], 2)],
)
def test_finished_command_answers_in_its_exit_status(tmp_path, args, code):
    (tmp_path / "summary.json").write_text(json.dumps({"finished": True, "epochs": 50}))
    done = subprocess.run(
        [sys.executable, "-m", "launch.finished", str(tmp_path), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == (code == 2), done.stderr


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: writes the files each run of the blind-spot script leaves, each
# holding the name of the folder it is in.
for arg in "$@"; do
  case $arg in --workdir=*) workdir=${arg#--workdir=} ;; --train=*) train=1 ;; esac
done
write() { mkdir -p "$1"; for f in config.json summary.json metrics.jsonl table.md; do
  basename "$1" > "$1/$f"; done; }
write "$workdir"
if [[ -n ${train:-} ]]; then
  for net in target target-fgsm target-pgd; do write "$workdir/$net"; done
fi
"""


def test_the_blind_spot_script_keeps_every_trained_nets_own_run(tmp_path):
    (tmp_path / "launch").mkdir()
    script = tmp_path / "launch" / "adversarial.sh"
    script.write_text((ROOT / "launch" / "adversarial.sh").read_text())
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    done = subprocess.run(
        ["bash", str(script)],  # both studies
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    kept = tmp_path / "results" / "adversarial"
    for study in ("trained", "rungs"):
        files = sorted(p.name for p in (kept / study).iterdir() if p.is_file())
        assert files == ["config.json", "summary.json", "table.md"]
    run_of = {f"training/{n}": n for n in ("target", "target-fgsm", "target-pgd")}
    run_of |= {f"rungs/nets/{n}": n for n in ("shallow", "conv2", "dropout")}
    run_of["rungs/nets/relu"] = "target"  # the training study's plain net, not trained again
    for folder, run in run_of.items():
        files = sorted(p.name for p in (kept / folder).iterdir())
        assert files == ["config.json", "metrics.jsonl", "summary.json"], folder
        assert (kept / folder / "summary.json").read_text() == f"{run}\n", folder
