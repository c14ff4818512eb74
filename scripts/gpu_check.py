"""The GPU acceptance command: kernels, training on the kernels, export and deployment, one report.

    python scripts/gpu_check.py [--out runs/gpu_check] [--cpu-mode] [--budget 450] [--train-steps N]

Every step is a subprocess under a hard timeout: its own limit, cut to what is left of ``--budget``
seconds (450: with start-up and the report, 8 minutes in all). A step that needs CUDA (or TensorRT, or a
provider ONNX Runtime lacks) where there is none is reported *skipped* with the reason, never passed.
Without CUDA, or with ``--cpu-mode``, the rest runs at a tiny scale. Steps:

* kernel_tests: tests/test_kernels_triton.py on CUDA (compiled kernels, not the interpreter).
* kernel_bench: benchmarks/kernels.py --device cuda, Triton against eager and torch.compile, judged against
  the targets of docs/kernels.md.
* train: a student with pixel KD + CWD + Af-DCD, train.kernels=triton and =reference from one seed:
  loss curves, step time ratio, peak memory ratio. On CUDA: CamVid-sized (MobileNetV2 + FCN student,
  180x240 crops, batch 8, bf16, 200 steps) on ../shared/data/camvid, or on synthetic scenes at that
  size where it is absent; without CUDA (``--cpu-mode``): a tiny student under the Triton interpreter.
* export_onnx: export/to_onnx.py of the Triton-trained student, with its ONNX Runtime CPU parity gate.
* ort_cpu, ort_cuda, ort_tensorrt: the ONNX file in each ONNX Runtime provider: parity gate
  (scripts/gpu_check_parity.py) and latency p50 / p90 / p99 (deploy/benchmark.py).
* trt_fp16, trt_int8: export/to_trt.py engines (INT8 from export/to_int8.py's QDQ graph), gated by
  to_trt.py, timed by deploy/benchmark.py.
* qat: a quantization-aware fine-tune of the Triton-trained student (ModelOpt fake quantization, pixel KD
  from the student itself, a few steps) and its QDQ ONNX from export/to_onnx.py, gated against the
  fake-quantized model in ONNX Runtime CPU (also at the tiny scale without CUDA).
* trt_qat: that QDQ graph built by export/to_trt.py as a strongly typed INT8 engine: gate and latency.

Writes OUT/report.md and OUT/report.json (machine, versions, every step's status and reason, every
figure against its target) and each step's output to OUT/logs/STEP.log. Exit status 1 when a step failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from segdistill.atomic_files import atomic_write_text
from segdistill.deploy.environment import environment
from segdistill.tensorboard_scalars import logged_scalars

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared/data/camvid"
STUDENT_WEIGHTS = ROOT.parent / "shared/weights/mobilenetv2_100.imagenet.safetensors"
# Loss-curve agreement of the two backends (bf16, about 200 steps: rounding differences grow as the runs
# drift apart, so the first steps are held closer than the end).
EARLY_STEPS, EARLY_TOLERANCE, LATE_TOLERANCE = 10, 0.02, 0.05
# Step limits are sized for the GPU machine (16 cores); in CPU mode they stretch this much, since a shared
# 2-core machine spends 5-15 s importing torch in each subprocess.
CPU_LIMIT_SCALE = 3


@dataclass
class Figure:
    name: str
    value: float | str | None
    target: str = "-"  # "-" where the docs set none: reported, not judged
    met: bool | None = None


@dataclass
class Step:
    name: str
    what: str
    limit_s: int
    commands: list[list[str]]
    skip: str | None = None  # why it cannot run here
    after: str | None = None  # a step whose output it needs
    judge: Callable[[list[str]], list[Figure]] = lambda outputs: []
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    name: str
    what: str
    status: str  # passed, failed, skipped
    reason: str = ""
    seconds: float = 0.0
    commands: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


def python(*args: str | Path) -> list[str]:
    return [sys.executable, *map(str, args)]


def last_json(output: str):
    return json.loads(output.strip().splitlines()[-1])


def ratio_figure(name: str, value: float | None, target: str, ok: Callable[[float], bool]) -> Figure:
    """A judged figure; None (its baseline failed to run) is reported, not judged."""
    return Figure(name, value, target, None if value is None else ok(value))


# ---------------------------------------------------------------------------------------- judges


def judge_bench(outputs: list[str]) -> list[Figure]:
    """The targets of docs/kernels.md, for the Triton row of each loss core; torch.compile reported."""
    records = last_json(outputs[0])
    figures = []
    for row in records:
        where = f"{row['case']}, {row['shape']}"
        if "error" in row:
            judged = ("runs", False) if row["implementation"] == "triton" else ("-", None)  # a baseline's failure is reported
            figures.append(Figure(f"{where}: {row['implementation']}", row["error"], *judged))
            continue
        if row["implementation"] == "triton":
            softmax = "softmax-KL" in row["case"]
            need = 3.0 if softmax else 2.0
            figures.append(ratio_figure(f"{where}: speed-up vs eager", row["speedup_vs_eager"], f">= {need:g}", lambda v, n=need: v >= n))
            if softmax and row["shape"].startswith("features"):
                figures.append(ratio_figure(f"{where}: bandwidth vs copy", row["bandwidth_vs_copy"], ">= 0.8", lambda v: v >= 0.8))
            if not softmax:
                figures.append(ratio_figure(f"{where}: peak vs eager", row["peak_vs_eager"], "<= 0.25", lambda v: v <= 0.25))
    compiled = {r["case"] + r["shape"]: r for r in records if "torch.compile" in r["implementation"] and "time_ms" in r}
    for row in records:
        other = compiled.get(row["case"] + row["shape"])
        if row["implementation"] == "triton" and "time_ms" in row and other is not None:
            figures.append(Figure(f"{row['case']}, {row['shape']}: speed-up vs {other['implementation']}", other["time_ms"] / row["time_ms"]))
    return figures


def judge_training(out: Path) -> Callable[[list[str]], list[Figure]]:
    def judge(outputs: list[str]) -> list[Figure]:
        peaks = [last_json(o)["peak_bytes"] for o in outputs]
        curves = [logged_scalars(out / "train" / backend) for backend in ("triton", "reference")]
        kernels, reference = (c["loss/total"] for c in curves)
        diffs = [abs(a - b) / abs(b) for a, b in zip(kernels, reference, strict=True)]
        late = len(diffs) - max(1, len(diffs) // 4)
        late_diff = abs(statistics.mean(kernels[late:]) - statistics.mean(reference[late:])) / abs(statistics.mean(reference[late:]))
        # The first logged step holds the start-up (Triton compiles there): leave it out of the step time.
        times = [statistics.median(c["time/step_s"][1:] or c["time/step_s"]) for c in curves]
        return [
            Figure("steps compared", len(diffs)),
            ratio_figure(f"loss/total, largest relative difference over the first {EARLY_STEPS} steps", max(diffs[:EARLY_STEPS]), f"<= {EARLY_TOLERANCE}", lambda v: v <= EARLY_TOLERANCE),
            ratio_figure("loss/total, relative difference of the means over the last quarter", late_diff, f"<= {LATE_TOLERANCE}", lambda v: v <= LATE_TOLERANCE),
            Figure("step time, triton / reference (median)", times[0] / times[1]),
            Figure("step time (s), triton / reference", f"{times[0]:.4f} / {times[1]:.4f}"),
            Figure("peak memory, triton / reference", peaks[0] / peaks[1]),
            Figure("peak memory (MiB), triton / reference", f"{peaks[0] / 2**20:.0f} / {peaks[1] / 2**20:.0f}"),
        ]  # fmt: skip

    return judge


def parity_figures(parity: dict) -> list[Figure]:
    """The parity gate's figures against its thresholds (docs/deployment.md)."""
    need, delta = parity["thresholds"]["min_label_agreement"], parity["thresholds"]["max_miou_delta"]
    figures = []
    for c in parity["checks"]:
        where = f"{c['inputs']} {c['shape']}"
        figures.append(ratio_figure(f"labels equal to PyTorch, {where}", c["label_agreement"], f">= {need:g}", lambda v: v >= need))
        if c["miou_reference"] is not None:
            gap = abs(c["miou_artifact"] - c["miou_reference"])
            figures.append(ratio_figure(f"mIoU points from PyTorch's {c['miou_reference']:.2f}, {where}", gap, f"<= {delta:g}", lambda v: v <= delta))
        if c["max_abs_error"] is not None:
            figures.append(Figure(f"largest absolute logit difference, {where}", c["max_abs_error"]))
    return figures


def latency_figures(results_json: Path) -> list[Figure]:
    entry = json.loads(results_json.read_text())["results"][0]
    return [
        Figure(f"{path} latency {p} (ms) at {entry['shape']}", entry[path][f"{p}_ms"])
        for path in ("compute", "end_to_end")
        for p in ("p50", "p90", "p99")
    ]


def judge_sidecar(artifact: Path, benchmark: Path | None = None) -> Callable[[list[str]], list[Figure]]:
    def judge(outputs: list[str]) -> list[Figure]:
        figures = parity_figures(json.loads(Path(f"{artifact}.json").read_text())["parity"])
        return figures + (latency_figures(benchmark / "results.json") if benchmark else [])

    return judge


def judge_provider(benchmark: Path) -> Callable[[list[str]], list[Figure]]:
    return lambda outputs: parity_figures(last_json(outputs[0])) + latency_figures(benchmark / "results.json")


# ----------------------------------------------------------------------------------------- plan


def training_args(out: Path, cuda: bool, steps: int) -> tuple[list[str], str]:
    """The trainer's arguments (less output_dir and train.kernels) and what data they use."""
    if not cuda:
        tiny = [
            "data.synthetic.size=[32,32]", "data.crop_size=[32,32]", "data.synthetic.num_train=16", "data.synthetic.num_val=4",
            "data.batch_size=4", "data.val_batch_size=2", "data.num_workers=0", "model.backbone=lcnet_050", "model.head=fcn",
            "model.head_channels=16", "teacher.model={backbone: lcnet_050, head: fcn, head_channels: 16}",
            "losses=[{name: pixel_kd}, {name: cwd, weight: 3.0}, {name: afdcd, student: head, teacher: head, params: {pool: 1, patch: 4, groups: 4}}]",
        ]  # fmt: skip
        return tiny + [f"train.iterations={steps}", "train.log_interval=1", f"train.eval_interval={steps}"], (
            "tiny synthetic scenes (32x32, LCNet-0.5 student and teacher, random teacher) under the Triton interpreter"
        )
    args = [
        "--config", "configs/camvid/student.yaml", "train.mixed_precision=bf16", "data.num_workers=8",
        f"train.iterations={steps}", "train.log_interval=1", f"train.eval_interval={steps}", f"train.checkpoint_interval={steps}",
        "teacher.model={backbone: tf_efficientnet_lite2, head: fcn, output_stride: 16, head_channels: 256}",
        "losses=[{name: pixel_kd, params: {tau: 1.0}}, {name: cwd, weight: 3.0}, {name: afdcd, student: c4, teacher: c4, "
        "params: {lambda_fd: 8.0e-6, lambda_contrast: 0.01, groups: 16, patch: 4, pool: 1}}]",
    ]  # fmt: skip
    notes = ["random EfficientNet-Lite2 teacher"]
    if not STUDENT_WEIGHTS.is_file():
        args.append("model.pretrained=null")
        notes.append(f"random student ({STUDENT_WEIGHTS} absent)")
    if CAMVID.is_dir():
        return args + [f"data.root={CAMVID}"], f"CamVid ({CAMVID}), " + ", ".join(notes)
    args += ["data.name=synthetic", "data.synthetic.size=[180,240]"]
    return args, f"synthetic scenes at the CamVid crop size 180x240 ({CAMVID} absent), " + ", ".join(notes)


def plan(out: Path, cuda: bool, no_cuda: str, steps: int) -> tuple[list[Step], str]:
    train_args, data_note = training_args(out, cuda, steps)
    student = out / "train/triton/final"
    onnx = out / "export/model.onnx"
    device = "cuda" if cuda else "cpu"
    need_cuda = None if cuda else no_cuda
    providers = available_providers()
    trt = None if importlib.util.find_spec("tensorrt") else "tensorrt does not import (not in the pinned lock: pip install tensorrt)"

    def provider_skip(provider: str) -> str | None:
        if provider not in providers:
            return f"onnxruntime has no {provider} (available: {', '.join(providers)}; the pinned onnxruntime is the CPU build, see README)"
        return None

    def deployed(name: str, what: str, backend: str, skip: str | None, limit: int) -> Step:
        bench = out / f"deploy/{name}"
        return Step(
            name, what, limit,
            [python("scripts/gpu_check_parity.py", "--artifact", onnx, "--backend", backend, "--device", device),
             python("deploy/benchmark.py", "--artifact", onnx, "--backend", backend, "--device", device, "--output", bench)],
            skip=skip, after="export_onnx", judge=judge_provider(bench),
        )  # fmt: skip

    def engine(name: str, what: str, commands: list[list[str]], plan_file: Path, limit: int, after: str = "export_onnx") -> Step:
        bench = out / f"deploy/{name}"
        timing = python("deploy/benchmark.py", "--artifact", plan_file, "--backend", "tensorrt", "--device", device, "--output", bench)
        return Step(name, what, limit, [*commands, timing], skip=need_cuda or trt, after=after, judge=judge_sidecar(plan_file, bench))

    data = ["--data", f"camvid:{CAMVID}"] if cuda and CAMVID.is_dir() else []
    int8_onnx = out / "export/model_int8_trt.onnx"
    qat_onnx = out / "export/model_qat.onnx"
    # The student's data and model settings, fine-tuned in FP32 with fake quantization against itself.
    qat_args = [a for a in train_args if not a.startswith(("losses=", "teacher.", "train.mixed_precision", "train.iterations"))]
    qat_args += [
        f"model.init_from={student}", f"teacher.checkpoint={student}", "losses=[{name: pixel_kd}]", "quantization.calibration_images=16",
        f"train.iterations={min(steps, 20)}", "train.optimizer.lr=0.001", f"output_dir={out / 'qat'}",
    ]  # fmt: skip
    steps_ = [
        Step("kernel_tests", "tests/test_kernels_triton.py on CUDA", 90,
             [python("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels_triton.py")], skip=need_cuda),
        Step("kernel_bench", "benchmarks/kernels.py --device cuda vs eager and torch.compile (targets: docs/kernels.md)", 150,
             [python("benchmarks/kernels.py", "--device", "cuda", "--json")], skip=need_cuda, judge=judge_bench),
        Step("train", f"pixel KD + CWD + Af-DCD, {steps} steps, kernels vs reference from one seed: {data_note}", 150,
             [python("scripts/gpu_check_train.py", *train_args, f"output_dir={out / 'train' / backend}", f"train.kernels={backend}")
              for backend in ("triton", "reference")],
             judge=judge_training(out), env={} if cuda else {"TRITON_INTERPRET": "1"}),
        Step("export_onnx", "export/to_onnx.py of the Triton-trained student, ONNX Runtime CPU parity gate", 60,
             [python("export/to_onnx.py", "--checkpoint", student, "--out", onnx, *data)], after="train", judge=judge_sidecar(onnx)),
        deployed("ort_cpu", "ONNX Runtime CPU provider: parity and latency", "ort-cpu", None, 45),
        deployed("ort_cuda", "ONNX Runtime CUDA provider: parity and latency", "ort-cuda", need_cuda or provider_skip("CUDAExecutionProvider"), 45),
        deployed("ort_tensorrt", "ONNX Runtime TensorRT provider: parity and latency", "ort-tensorrt",
                 need_cuda or trt or provider_skip("TensorrtExecutionProvider"), 90),
        engine("trt_fp16", "export/to_trt.py FP16 engine: parity gate and latency",
               [python("export/to_trt.py", "--onnx", onnx, "--precision", "fp16", "--out", out / "export/model_fp16.plan")],
               out / "export/model_fp16.plan", 90),
        engine("trt_int8", "export/to_int8.py (TensorRT QDQ) + export/to_trt.py INT8 engine: parity gate and latency",
               [python("export/to_int8.py", "--onnx", onnx, "--target", "tensorrt", "--out", int8_onnx, *(data or ["--data", "synthetic"])),
                python("export/to_trt.py", "--onnx", int8_onnx, "--out", out / "export/model_int8.plan")],
               out / "export/model_int8.plan", 120),
        Step("qat", "quantization-aware fine-tune (ModelOpt) of the student, its QDQ ONNX gated against the fake-quantized model", 120,
             [python("-m", "segdistill.train", *qat_args, f"train.eval_interval={min(steps, 20)}", f"train.checkpoint_interval={min(steps, 20)}"),
              python("export/to_onnx.py", "--checkpoint", out / "qat/final", "--out", qat_onnx, *data)],
             after="train", judge=judge_sidecar(qat_onnx)),
        engine("trt_qat", "export/to_trt.py strongly typed INT8 engine of the QAT QDQ graph: parity gate and latency",
               [python("export/to_trt.py", "--onnx", qat_onnx, "--out", out / "export/model_qat.plan")],
               out / "export/model_qat.plan", 120, after="qat"),
    ]  # fmt: skip
    return steps_, data_note


def available_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


# ------------------------------------------------------------------------------------------ run


def run_step(step: Step, results: dict[str, Result], deadline: float, logs: Path, scale: float = 1) -> Result:
    result = Result(step.name, step.what, "skipped", commands=[shlex.join(c) for c in step.commands])
    if step.skip:
        result.reason = step.skip
        return result
    if step.after and results[step.after].status != "passed":
        result.reason = f"needs step {step.after}, which {results[step.after].status}"
        return result
    started = time.monotonic()
    limit = min(started + step.limit_s * scale, deadline)
    if limit - started < 10:
        result.reason = "the time budget is spent"
        return result
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env}
    if "TRITON_INTERPRET" not in step.env:
        env.pop("TRITON_INTERPRET", None)  # CUDA steps run the compiled kernels
    outputs, log = [], []
    for command in step.commands:
        log.append(f"$ {shlex.join(command)}")
        returncode, stdout, stderr = run_command(command, env, max(1.0, limit - time.monotonic()))
        log.append(stdout + stderr)
        outputs.append(stdout)
        if returncode is None:
            result.status, result.reason = "failed", f"timed out ({limit - started:.0f} s for the step)"
            break
        if returncode != 0:
            lines = (stderr or stdout).strip().splitlines()
            result.status = "failed"
            result.reason = f"exit status {returncode}: {lines[-1] if lines else 'no output'}"
            break
    else:
        try:
            result.figures = step.judge(outputs)
        except Exception as err:  # output the judge cannot read is this step's failure, with the reason
            result.status, result.reason = "failed", f"could not read the figures: {type(err).__name__}: {err}"
        else:
            missed = [f.name for f in result.figures if f.met is False]
            result.status = "failed" if missed else "passed"
            result.reason = f"target missed: {'; '.join(missed)}" if missed else ""
    result.seconds = round(time.monotonic() - started, 1)
    atomic_write_text(logs / f"{step.name}.log", "\n".join(log))
    return result


def run_command(command: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str, str]:
    """Exit status (None: killed at the timeout), stdout, stderr. The command runs in a session of its
    own, so a timeout kills its whole process group (data loader workers, benchmark workers) too."""
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            return None, stdout, stderr
    return proc.returncode, stdout, stderr


def markdown(report: dict) -> str:
    machine = report["machine"]
    gpu = machine["gpu"] or {}
    lines = [
        "# GPU acceptance report (scripts/gpu_check.py)",
        "",
        f"* mode: {report['mode']}; command: `{report['command']}`",
        f"* GPU: {gpu.get('name', 'none')}; driver: {gpu.get('driver_version', '-')}; CPU: {machine['cpu']['model']}, {machine['cpu']['logical_cores']} cores",
        f"* versions: {', '.join(f'{k} {v}' for k, v in machine['versions'].items())}",
        f"* training data: {report['training_data']}",
        f"* wall time: {report['seconds']:.0f} s of a {report['budget_s']} s budget; "
        + ", ".join(f"{n} {s}" for s, n in sorted(report["counts"].items())),
        "",
        "| step | status | s | reason |",
        "|---|---|---:|---|",
    ]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {s['reason'] or '-'} |" for s in report["steps"]]
    for s in report["steps"]:
        if s["figures"]:
            lines += ["", f"## {s['name']}: {s['what']}", "", "| figure | value | target | met |", "|---|---:|---|---|"]
            met = {True: "yes", False: "**no**", None: "-"}
            lines += [f"| {f['name']} | {_cell(f['value'])} | {f['target']} | {met[f['met']]} |" for f in s["figures"]]
    return "\n".join(lines) + "\n"


def _cell(value: float | str | None) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu_check", help="folder for report.md, report.json, logs/ and the runs")
    parser.add_argument("--cpu-mode", action="store_true", help="run only what needs no CUDA, at a tiny scale, even on a GPU")
    parser.add_argument("--budget", type=int, default=450, help="seconds for all steps together (8 minutes with start-up and report)")
    parser.add_argument("--train-steps", type=int, help="training steps per backend (default: 200 on CUDA, 3 in CPU mode)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        print(f"error: --out {str(out)!r} is not empty; choose a new folder", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available() and not args.cpu_mode
    no_cuda = "no CUDA device" if not torch.cuda.is_available() else "--cpu-mode asked"
    steps, data_note = plan(out, cuda, no_cuda, args.train_steps or (200 if cuda else 3))
    started = time.monotonic()
    results: dict[str, Result] = {}
    for step in steps:
        print(f"[{time.monotonic() - started:5.0f} s] {step.name}: {step.what}", flush=True)
        results[step.name] = run_step(step, results, started + args.budget, out / "logs", 1 if cuda else CPU_LIMIT_SCALE)
        r = results[step.name]
        print(f"        {r.status}{': ' + r.reason if r.reason else ''}", flush=True)
    env = environment()
    env["versions"]["triton"] = _version("triton")
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r.status] = counts.get(r.status, 0) + 1
    report = {
        "mode": "cuda" if cuda else f"cpu ({no_cuda})",
        "command": shlex.join(["python", "scripts/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": env,
        "training_data": data_note,
        "budget_s": args.budget,
        "seconds": round(time.monotonic() - started, 1),
        "counts": counts,
        "steps": [dataclasses.asdict(r) for r in results.values()],
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", markdown(report))
    print(f"report: {out / 'report.md'}")
    return 1 if counts.get("failed") else 0


def _version(name: str) -> str | None:
    try:
        return importlib.import_module(name).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
