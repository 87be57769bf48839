"""Whether a workdir holds a finished run: exit status 0 if it does, 1 if not.

    python -m launch.finished runs/autoencoders/vae
    python -m launch.finished runs/capsules/r3_recon --epochs=50

A run is finished when its summary.json says so ("finished": true) and, with --epochs,
records that many epochs. The launch scripts skip such runs and run or resume the rest.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from launch.cli import OneLineParser, UsageError


def finished(workdir: str | Path, epochs: int | None = None) -> bool:
    """Whether `workdir`'s summary.json marks a finished run (of `epochs` epochs, if
    given); a missing or unreadable summary is an unfinished run."""
    try:
        summary = json.loads((Path(workdir) / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(summary, dict) or not summary.get("finished"):
        return False
    return epochs is None or summary.get("epochs") == epochs


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m launch.finished", description=__doc__.split("\n")[0])
    parser.add_argument("workdir", help="the run's workdir")
    parser.add_argument("--epochs", type=int, help="the epochs the run must have trained")
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"finished: error: {e}", file=sys.stderr)
        return 2
    return 0 if finished(args.workdir, args.epochs) else 1


if __name__ == "__main__":
    sys.exit(main())
