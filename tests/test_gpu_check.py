"""scripts/gpu_check.py in its CPU mode, as a user runs it: the steps that need CUDA are reported skipped
with the reason (never passed), the others run for real (training on the kernels under the interpreter
against the references, ONNX export, ONNX Runtime CPU) and pass, and report.md / report.json say so.
scripts/build_wheelhouse.sh is not tested: it downloads gigabytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_python

CUDA_STEPS = ["kernel_tests", "kernel_bench", "ort_cuda", "ort_tensorrt", "trt_fp16", "trt_int8"]
CPU_STEPS = ["train", "export_onnx", "ort_cpu"]


@pytest.mark.slow
def test_cpu_mode_runs_what_it_can_and_skips_cuda_steps_with_the_reason(tmp_path: Path) -> None:
    out = tmp_path / "check"
    done = run_python(["scripts/gpu_check.py", "--cpu-mode", "--out", str(out), "--train-steps", "2"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert sorted(steps) == sorted(CUDA_STEPS + CPU_STEPS)
    reason = "--cpu-mode asked" if torch.cuda.is_available() else "no CUDA device"
    assert report["mode"] == f"cpu ({reason})" and report["counts"] == {"passed": 3, "skipped": 6}
    for name in CUDA_STEPS:
        assert (steps[name]["status"], steps[name]["reason"], steps[name]["figures"]) == ("skipped", reason, []), name
    for name in CPU_STEPS:
        step = steps[name]
        assert step["status"] == "passed" and step["figures"], step
        assert all(f["met"] is not False for f in step["figures"]), step
        assert (out / f"logs/{name}.log").is_file()
    train = {f["name"]: f for f in steps["train"]["figures"]}
    assert train["steps compared"]["value"] == 2
    assert train["loss/total, largest relative difference over the first 10 steps"]["met"] is True
    latency = [f["name"] for f in steps["ort_cpu"]["figures"] if "latency" in f["name"]]
    assert [name.split(" (ms)")[0] for name in latency] == [
        f"{path} latency {p}" for path in ("compute", "end_to_end") for p in ("p50", "p90", "p99")
    ]
    markdown = (out / "report.md").read_text()
    for name, step in steps.items():
        assert f"| {name} | {step['status']} |" in markdown


def test_refuses_an_out_folder_that_holds_files(tmp_path: Path) -> None:
    (tmp_path / "report.md").write_text("an earlier report")
    done = run_python(["scripts/gpu_check.py", "--cpu-mode", "--out", str(tmp_path)])
    assert done.returncode == 2 and "error: --out" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "report.md").read_text() == "an earlier report"
