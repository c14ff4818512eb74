"""Wall time and peak memory of the demo (the README's first command, without the environment set-up).

    python benchmarks/demo_time.py [--output /tmp/demo-bench]

Runs ``python -m segdistill.demo`` in a fresh output folder and prints a table: total wall time, peak
resident memory of the largest process, and the demo's own summary.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="output folder (default: a temporary one, removed afterwards)")
    args = parser.parse_args()
    out = Path(args.output or tempfile.mkdtemp(prefix="demo-bench-"))
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty; give an empty or new folder")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "segdistill.demo", "--output", str(out)], check=True)
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = json.loads((out / "summary.json").read_text())
    print("\n| measurement | value |\n|---|---:|")
    print(f"| demo wall time | {wall / 60:.1f} min |")
    print(f"| peak resident memory (largest process) | {peak_mib:.0f} MiB |")
    for row in summary["rows"]:
        print(f"| mIoU {row['model']} | {100 * row['miou']:.2f} |")
    if not args.output:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
