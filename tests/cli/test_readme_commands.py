"""Every command the README, the launch scripts and the commands' docstrings show parses:
each `python -m` line of an absl command of this project, run with absl's
--only_check_args, knows all its flags and their values.
A renamed or misspelt flag would otherwise surface only when a user (or a lent GPU,
whose minutes are few) runs it."""

from __future__ import annotations

import re
import shlex

import pytest
from commands import ROOT, run_module

# Commands with argparse command lines, or running another module with its flags: their
# flags are not absl's (launch.sweep and launch.local_cluster have tests of their own).
NOT_ABSL = {"launch.sweep", "launch.results", "launch.local_cluster", "launch.join_cluster"}
NOT_ABSL |= {"launch.pinned", "launch.finished"}
# The README, the launch scripts, and the usage lines of the commands' own docstrings.
PAGES = sorted(
    str(path.relative_to(ROOT))
    for pattern in ("README.md", "launch/*.sh", "launch/*.py", "experiments/*.py")
    for path in ROOT.glob(pattern)
)


def shown_commands(text: str, script: bool = False) -> list[tuple[str, tuple[str, ...]]]:
    """(module, its --flags) of each `python -m` command in `text`: in code (fenced blocks,
    indented lines, or every line of a shell `script`) and in inline code spans. Flags
    whose value is a placeholder (<k>) or a shell variable ($OUT) are left out."""
    text = text.replace("\\\n", " ")
    code, prose, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif script or fenced or line.startswith("    "):
            code.append(line)
        else:
            prose.append(line)
    spans = code + re.findall(r"`([^`]*python -m [^`]*)`", " ".join(prose))
    found = []
    for span in spans:
        span = span.replace('"$PYTHON"', "python").replace("${PYTHON:-python}", "python")
        for match in re.finditer(r"python -m ((?:experiments|launch)\.\w+)([^#|;&`]*)", span):
            module, rest = match.groups()
            try:
                words = shlex.split(rest)
            except ValueError:  # a quote closed past the command's end
                words = rest.split()
            args = [a for a in words if a.startswith("--") and not set(a) & set("<$")]
            found.append((module, tuple(args)))
    return list(dict.fromkeys(found))


COMMANDS = sorted(
    command
    for page in PAGES
    for command in shown_commands((ROOT / page).read_text(), script=page.endswith(".sh"))
    if command[0] not in NOT_ABSL
)


def test_the_pages_show_the_commands_this_test_checks():
    modules = {module for module, _ in COMMANDS}
    assert {"experiments.mnist_convnet", "launch.ladder", "launch.benchmark"} <= modules
    assert ("launch.bench_imagenet", ("--models=resnet50", "--batch_size=256")) in COMMANDS
    assert len(COMMANDS) > 40, COMMANDS


@pytest.mark.parametrize("module, args", COMMANDS, ids=[" ".join([m, *a]) for m, a in COMMANDS])
def test_a_shown_command_parses(module, args):
    done = run_module(module, *args, "--only_check_args")
    assert done.returncode == 0, done.stderr


def test_a_misspelt_flag_fails_the_check():
    done = run_module("experiments.capsules", "--routing_iteration=1", "--only_check_args")
    assert done.returncode == 1 and "Did you mean: routing_iterations" in done.stderr
