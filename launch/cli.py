"""Command-line mistakes in the launchers end as one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib.util


class UsageError(ValueError):
    """A mistake on a launcher's command line: a bad sweep spec, an unknown flag, a bad metric."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing the usage and exiting."""

    def error(self, message):
        raise UsageError(message)


def module_exists(name: str) -> bool:
    """Whether `python -m name` would find a module (importing its parent packages)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package that is not there
        return False
