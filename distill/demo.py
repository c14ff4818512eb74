"""The demo: on the built-in synthetic scenes, train a teacher, train the student alone, distil the
student from the teacher (pixel-wise KD), evaluate all three and print a table.

    python -m segdistill.demo [--output runs/demo] [key=value ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segdistill.errors import command
from segdistill.pipeline import run_pipeline

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "demo"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/demo", help="folder for the three runs")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every stage")
    args = parser.parse_args(argv)
    return run_pipeline(CONFIGS, Path(args.output), args.overrides)


cli = command(main)


if __name__ == "__main__":
    sys.exit(cli())
