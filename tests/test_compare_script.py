"""``scripts/compare.sh`` end to end, as a subprocess on tiny synthetic runs of the demo presets: the teacher
trained once, each method's seeds, one report whose rows are the mean ± std of the runs' own metrics with the
gain over the student alone and the share of the gap; started again, it trains nothing."""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, TINY, subprocess_env

RUN = [*TINY, "model.backbone_kwargs={}", "train.iterations=2", "train.eval_interval=2", "train.checkpoint_interval=2"]


def compare(out: Path) -> subprocess.CompletedProcess:
    args = ["scripts/compare.sh", "configs/demo", str(out), "--seeds", "2", "--methods", "student student_kd", *RUN]
    env = {**subprocess_env(), "PY": sys.executable}
    return subprocess.run(["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def final_mious(study: Path) -> list[float]:
    return [json.loads(p.read_text())["miou"] for p in sorted(study.glob("runs/*/metrics.json"))]


def test_compare_trains_the_teacher_once_and_reports_every_method(tmp_path: Path) -> None:
    out = tmp_path / "compare"
    done = compare(out)
    assert done.returncode == 0, done.stderr[-3000:]
    teacher = json.loads((out / "teacher/metrics.json").read_text())["miou"]
    rows = {row["study"]: row for row in csv.DictReader((out / "report/comparison.csv").open())}
    assert set(rows) == {"student", "student_kd"}
    alone, kd = final_mious(out / "student"), final_mious(out / "student_kd")
    assert len(alone) == len(kd) == 2
    for row, values in ((rows["student"], alone), (rows["student_kd"], kd)):
        assert int(row["seeds"]) == 2
        assert float(row["mean"]) == pytest.approx(statistics.mean(values))
        assert float(row["std"]) == pytest.approx(statistics.stdev(values))
    assert float(rows["student_kd"]["teacher"]) == pytest.approx(teacher)
    gain = statistics.mean(kd) - statistics.mean(alone)
    assert float(rows["student_kd"]["vs_student"]) == pytest.approx(gain)
    lead = teacher - statistics.mean(alone)  # the share of the gap is defined where the teacher leads
    gap = float(rows["student_kd"]["gap_closed"])
    assert gap == pytest.approx(gain / lead) if lead > 0 else math.isnan(gap)
    # every KD run read the teacher the script trained
    for config in (out / "student_kd").glob("runs/*/config.yaml"):
        assert f"checkpoint: {out / 'teacher/final'}" in config.read_text()

    before = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    again = compare(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == before, "a second start retrained something"


def test_a_method_without_a_preset_stops_before_the_teacher_trains(tmp_path: Path) -> None:
    out = tmp_path / "compare"
    args = ["scripts/compare.sh", "configs/camvid_multiscale", str(out), "--methods", "student skd", *RUN]
    done = subprocess.run(["bash", *args], cwd=ROOT, env={**subprocess_env(), "PY": sys.executable}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: --methods: configs/camvid_multiscale has no preset skd.yaml (its presets: afdcd.yaml cad.yaml")
    assert not out.exists()


def test_the_default_methods_are_those_the_folder_has_a_preset_for() -> None:
    """configs/camvid_multiscale has no SKD or IFVD preset: without --methods the script runs the others (a dry
    run, with PY=echo printing the commands it would run)."""
    done = subprocess.run(["bash", "scripts/compare.sh", "configs/camvid_multiscale", "OUT", "--seeds", "3"], cwd=ROOT,
                          env={**subprocess_env(), "PY": "echo"}, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    configs = [line.split("--config ")[1].split()[0] for line in done.stdout.splitlines() if "study/sweep.py" in line]
    presets = sorted(p.stem for p in (ROOT / "configs/camvid_multiscale").glob("*.yaml") if p.stem != "teacher")
    assert sorted(Path(c).stem for c in configs) == presets
