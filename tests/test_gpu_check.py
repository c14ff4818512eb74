"""scripts/gpu_check.py in its CPU mode, as a user runs it: the steps that need CUDA are reported skipped
with the reason (never passed), the others run for real (training on the kernels under the interpreter
against the references, ONNX export, ONNX Runtime CPU) and pass, and report.md / report.json say so.
scripts/build_wheelhouse.sh is not tested: it downloads gigabytes."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, run_python

CUDA_STEPS = ["kernel_tests", "kernel_bench", "ort_cuda", "ort_tensorrt", "trt_fp16", "trt_int8", "trt_qat"]
CPU_STEPS = ["train", "export_onnx", "ort_cpu", "qat"]


@pytest.mark.slow
def test_cpu_mode_runs_what_it_can_and_skips_cuda_steps_with_the_reason(tmp_path: Path) -> None:
    out = tmp_path / "check"
    done = run_python(["scripts/gpu_check.py", "--cpu-mode", "--out", str(out), "--train-steps", "2"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert sorted(steps) == sorted(CUDA_STEPS + CPU_STEPS)
    reason = "--cpu-mode asked" if torch.cuda.is_available() else "no CUDA device"
    assert report["mode"] == f"cpu ({reason})" and report["counts"] == {"passed": 4, "skipped": 7}
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


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def bench_row(case: str, shape: str, implementation: str, time_ms: float, **figures) -> dict:
    return {"case": case, "shape": shape, "implementation": implementation, "time_ms": time_ms, "peak_bytes": 1, "working_bytes": 1, **figures}


def test_a_missed_kernel_target_fails_the_step_and_names_the_figure(tmp_path: Path) -> None:
    """The bench step's judge reads benchmarks/kernels.py --json rows (as bench_cuda writes them) from a real
    subprocess: a Triton row below its docs/kernels.md target fails the step, naming the figure."""
    gpu_check = load_gpu_check()
    cwd, contrast = "CWD (spatial softmax-KL)", "Af-DCD omni-contrast"
    rows = [
        bench_row(cwd, "features 2x512x64x128", "triton", 1.0, speedup_vs_eager=4.0, peak_vs_eager=0.5, bandwidth_vs_copy=0.7, tflops=1.0),
        bench_row(cwd, "features 2x512x64x128", "reference, torch.compile", 2.0, speedup_vs_eager=2.0, peak_vs_eager=1.0, bandwidth_vs_copy=0.3, tflops=0.5),
        bench_row(contrast, "pooled c4 2x2048x16x32", "triton", 1.0, speedup_vs_eager=2.5, peak_vs_eager=0.1, bandwidth_vs_copy=0.1, tflops=9.0),
        {"case": contrast, "shape": "pooled c4 2x2048x16x32", "implementation": "published, torch.compile", "error": "OutOfMemoryError: CUDA"},
    ]  # fmt: skip
    step = gpu_check.Step("kernel_bench", "bench", 60, [[sys.executable, "-c", f"print('table'); print({json.dumps(json.dumps(rows))})"]],
                          judge=gpu_check.judge_bench)  # fmt: skip
    result = gpu_check.run_step(step, {}, time.monotonic() + 60, tmp_path)
    figures = {f.name: (f.value, f.target, f.met) for f in result.figures}
    assert figures[f"{cwd}, features 2x512x64x128: bandwidth vs copy"] == (0.7, ">= 0.8", False)
    assert figures[f"{cwd}, features 2x512x64x128: speed-up vs eager"] == (4.0, ">= 3", True)
    assert figures[f"{cwd}, features 2x512x64x128: speed-up vs reference, torch.compile"] == (2.0, "-", None)
    assert figures[f"{contrast}, pooled c4 2x2048x16x32: peak vs eager"] == (0.1, "<= 0.25", True)
    assert figures[f"{contrast}, pooled c4 2x2048x16x32: published, torch.compile"][2] is None  # a baseline's error: reported
    assert result.status == "failed" and result.reason == f"target missed: {cwd}, features 2x512x64x128: bandwidth vs copy"
    assert (tmp_path / "kernel_bench.log").read_text().startswith("$ ")


def test_a_step_past_its_limit_is_killed_with_its_children_and_fails(tmp_path: Path) -> None:
    gpu_check = load_gpu_check()
    spawn = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print(c.pid, flush=True); time.sleep(600)"
    step = gpu_check.Step("slow", "a step that outlives its limit", 10, [[sys.executable, "-c", spawn]])
    result = gpu_check.run_step(step, {}, time.monotonic() + 600, tmp_path)
    assert result.status == "failed" and result.reason.startswith("timed out"), result
    child = int((tmp_path / "slow.log").read_text().splitlines()[1])
    state = Path(f"/proc/{child}/stat")
    assert not state.exists() or state.read_text().split(")")[1].split()[0] in ("Z", "X"), "the step's child outlived the timeout"
