"""The launch scripts: valid bash, and settings they repeat agree with the Python they name."""

import re
import subprocess

import pytest
from commands import ROOT

from experiments import adversarial

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
