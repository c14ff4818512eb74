"""Teacher -> student alone -> student + KD, then a comparison table.

    python -m segdistill.pipeline --configs configs/camvid --output runs/camvid [key=value ...]

A config folder holds ``teacher.yaml``, ``student.yaml`` and ``student_kd.yaml``; the overrides apply to
all three, and the distillation stage gets the teacher trained in the first stage. Each stage runs
``distill/train.py`` in its own process, exactly as a user would; a stage whose run folder already holds
checkpoints is resumed (a finished one is only re-evaluated). The table is printed and written to
``OUTPUT/summary.md`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from segdistill.atomic_files import atomic_write_text
from segdistill.errors import command
from segdistill.evaluate import main as evaluate

STAGES = (("teacher", "teacher.yaml"), ("student", "student.yaml"), ("student + KD", "student_kd.yaml"))


def run_stage(config: Path, run_dir: Path, overrides: list[str]) -> None:
    command = [sys.executable, "-m", "segdistill.train", "--config", str(config), f"output_dir={run_dir}", *overrides]
    if (run_dir / "checkpoints").is_dir():
        command.append("--resume")
    subprocess.run(command, check=True)


def run_pipeline(configs: Path, out: Path, common: list[str]) -> list[dict]:
    start = time.perf_counter()
    rows = []
    for label, config in STAGES:
        run_dir = out / config.removesuffix(".yaml")
        print(f"\n=== {label}: {configs / config} -> {run_dir}", flush=True)
        overrides = list(common)
        if label == "student + KD":
            overrides.append(f"teacher.checkpoint={out / 'teacher' / 'final'}")
        run_dir.mkdir(parents=True, exist_ok=True)
        run_stage(configs / config, run_dir, overrides)
        result = evaluate(["--checkpoint", str(run_dir / "final"), "--workers", "0"])
        params = json.loads((run_dir / "metrics.json").read_text())["parameters"]
        rows.append({"model": label, "run": str(run_dir), "parameters": params, "miou": result["miou"], "pixel_accuracy": result["pixel_accuracy"]})
    wall = time.perf_counter() - start

    teacher, student, distilled = (r["miou"] for r in rows)
    gap = teacher - student
    lines = [
        "| model | parameters | mIoU (%) | pixel acc. (%) |",
        "|---|---:|---:|---:|",
        *(f"| {r['model']} | {r['parameters'] / 1e6:.2f} M | {100 * r['miou']:.2f} | {100 * r['pixel_accuracy']:.2f} |" for r in rows),
    ]
    closed = f"{100 * (distilled - student) / gap:.0f}%" if gap > 0 else "n/a (the teacher is not better)"
    summary = "\n".join(lines) + f"\n\nKD changes the student by {100 * (distilled - student):+.2f} mIoU points, closing {closed} of the teacher-student gap.\nwall time {wall / 60:.1f} min"
    print("\n" + summary)
    atomic_write_text(out / "summary.md", summary + "\n")
    atomic_write_text(out / "summary.json", json.dumps({"rows": rows, "wall_time_s": wall}, indent=2))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", required=True, help="folder with teacher.yaml, student.yaml, student_kd.yaml")
    parser.add_argument("--output", required=True, help="folder for the three runs")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every stage")
    args = parser.parse_args(argv)
    return run_pipeline(Path(args.configs), Path(args.output), args.overrides)


cli = command(main)


if __name__ == "__main__":
    sys.exit(cli())
