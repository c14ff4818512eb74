"""The README's demo command, shortened: three stages through the real trainer and the summary table."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_python


def test_demo_runs_three_stages_and_writes_the_table(tmp_path: Path) -> None:
    short = [
        "train.iterations=2", "train.eval_interval=2", "train.checkpoint_interval=2", "train.log_interval=1",
        "data.synthetic.num_train=16", "data.synthetic.num_val=4", "data.batch_size=4", "data.num_workers=0",
    ]  # fmt: skip
    done = run_python(["-m", "segdistill.demo", "--output", str(tmp_path), *short])
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [row["model"] for row in summary["rows"]] == ["teacher", "student", "student + KD"]
    teacher, student, distilled = summary["rows"]
    assert teacher["parameters"] > 10 * student["parameters"] and student["parameters"] == distilled["parameters"]
    table = (tmp_path / "summary.md").read_text()
    assert "| student + KD |" in table and "of the teacher-student gap" in table
    kd_meta = json.loads((tmp_path / "student_kd/final/model.json").read_text())
    assert kd_meta["teacher"]["checkpoint"] == str(tmp_path / "teacher" / "final")
    for stage in ("teacher", "student", "student_kd"):
        assert (tmp_path / stage / "final/eval_val/iou.png").is_file()
