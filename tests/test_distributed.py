"""Two processes on CPU (gloo) through ``accelerate launch``: each sample is seen once per epoch over
both processes, and validation metrics are reduced over both (they equal a single-process evaluation
of the saved model on the whole validation set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.evaluate import main as evaluate
from tests.conftest import TINY, run_python


@pytest.mark.slow
def test_two_process_distillation(tiny_teacher: Path, tmp_path: Path) -> None:
    args = [
        "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        "distill/train.py", *TINY, f"output_dir={tmp_path}", "data.synthetic.num_val=7", "data.batch_size=2",
        "train.iterations=6", "train.record_samples=true", f"teacher.checkpoint={tiny_teacher}",
        "losses=[{name: pixel_kd, params: {tau: 2.0}}]",
    ]  # fmt: skip
    done = run_python(args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "2 process(es)" in done.stdout

    # 16 samples, 2 per process, 2 processes: 4 steps per epoch; steps 0-3 are epoch 0.
    seen = {}
    for rank in (0, 1):
        lines = (tmp_path / f"samples_rank{rank}.txt").read_text().splitlines()
        assert len(lines) == 6
        seen[rank] = [int(i) for line in lines if line.split()[0] == "0" for i in line.split()[2:]]
    assert not set(seen[0]) & set(seen[1]), "the two processes shared samples within an epoch"
    assert sorted(seen[0] + seen[1]) == list(range(16)), "an epoch must visit every sample exactly once"

    reported = json.loads((tmp_path / "metrics.json").read_text())["miou"]
    alone = evaluate(["--checkpoint", str(tmp_path / "final"), "--workers", "0", "--overlays", "0"])["miou"]
    assert reported == pytest.approx(alone, abs=1e-9), "validation was not reduced over both processes"
