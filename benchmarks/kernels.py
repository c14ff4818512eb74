"""Benchmark of the distillation kernels at Cityscapes scale (512x1024 crops, batch 2 per device).

    python benchmarks/kernels.py                  # CPU: memory-lean references vs the published forms, 1 and 2 threads
    python benchmarks/kernels.py --device cuda    # GPU: Triton vs PyTorch eager and torch.compile, bandwidth, FLOP/s

Every row is forward + backward of one loss core (gradients to the student only). Memory is reported
as the total peak and the working memory (peak minus the inputs and the student gradient, which no
implementation avoids); ratios are against the baseline measured in the same run. On CPU each
measurement runs in a fresh process and reads the kernel's resident-set high-water mark (reset just
before, /proc/self/clear_refs), with glibc returning every block of 64 KiB or more to the system at
once, so the peak is what was live. On CUDA the allocator's own peak statistics are used.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from segdistill.kernels import (
    class_softmax_kl,
    cross_image_affinity_kl,
    naive,
    pairwise_affinity_mse,
    patch_contrast,
    spatial_softmax_kl,
)

MiB = 2**20


@dataclass(frozen=True)
class Case:
    """One loss core at a benchmark shape, with the floors that bound any implementation (fwd + bwd)."""

    name: str
    shape: str
    student: tuple[int, ...]
    teacher: tuple[int, ...]
    lean: Callable[..., torch.Tensor]  # the public function (dispatch picks Triton or the reference)
    naive: Callable[..., torch.Tensor] | None
    kwargs: dict = field(default_factory=dict)
    normalise: bool = False  # affinity inputs are unit vectors over channels
    flops: float = 0.0  # arithmetic the math needs once the N^2 matrices may not be stored (see docs)
    # A wider student for the affinity kernels' backward (one recomputation of the tiles per 128 student
    # channels): GPU only, without the torch.compile baseline (keeps the GPU check's step short).
    width_sweep: bool = False

    def inputs(self, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator(device="cpu").manual_seed(0)
        s = torch.randn(self.student, generator=generator).to(device=device, dtype=dtype)
        t = torch.randn(self.teacher, generator=generator).to(device=device, dtype=dtype)
        if self.normalise:
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        return s, t

    def warmup_inputs(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image, a few nodes or a 16x16 map: runs (and pages in) the same code at a fraction of the cost."""
        part = (
            (slice(0, 1), slice(None), slice(0, 512))
            if s.dim() == 3
            else (slice(0, 1), slice(None), slice(0, 16), slice(0, 16))
        )
        return s[part].contiguous().requires_grad_(), t[part].contiguous()

    def bytes_moved(self, element_size: int) -> int:
        """Fwd + bwd DRAM floor: every input read once per pass, the gradient written once."""
        s, t = _numel(self.student), _numel(self.teacher)
        return element_size * (2 * (s + t) + s)


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for size in shape:
        out *= size
    return out


def _cases() -> list[Case]:
    b = 2
    logits = (b, 19, 64, 128)  # stride-8 logits of a 512x1024 crop
    features = (b, 512, 64, 128)  # CWD feature variant (PSP-head width after the adapter)
    pooled_c4 = (b, 2048, 16, 32)  # Af-DCD: teacher c4 2048x64x128, max-pooled 4x4
    tokens, groups, patch = 16 * 16, 16, 4
    patches = b * (16 // patch) * (32 // patch)
    skd_nodes, cirkd_nodes = 32 * 64, 64 * 128  # SKD: 2x2 nodes of the 64x128 PSP feature; CIRKD: all pixels
    skd_s, skd_t, cirkd_s, cirkd_t = 128, 512, 128, 256
    softmax_flops = 17.0  # per element pair, fwd + bwd: 4 exp, 4 scale, about 9 add/mul
    return [
        Case("CWD (spatial softmax-KL)", "logits 2x19x64x128", logits, logits, spatial_softmax_kl, None,
             {"tau": 4.0}, flops=softmax_flops * _numel(logits)),
        Case("CWD (spatial softmax-KL)", "features 2x512x64x128", features, features, spatial_softmax_kl, None,
             {"tau": 4.0}, flops=softmax_flops * _numel(features)),
        Case("pixel KD (class softmax-KL)", "logits 2x19x64x128", logits, logits, class_softmax_kl, None,
             {"tau": 1.0}, flops=softmax_flops * _numel(logits)),
        # Per pair of tokens and channel: fwd |g - t| summed (3); bwd the same again + sign x weight (5).
        Case("Af-DCD omni-contrast", "pooled c4 2x2048x16x32", pooled_c4, pooled_c4, patch_contrast,
             naive.naive_patch_contrast, {"patch": patch, "groups": groups, "tau": 0.07},
             flops=8.0 * patches * tokens * tokens * (2048 // groups)),
        # fwd: both affinities (2 B N^2 (Cs + Ct)); bwd: recompute them + d/dx = 4 X D (2 B N^2 Cs).
        Case("SKD pair-wise affinity", "2x128 / 2x512 x 2048 nodes", (b, skd_s, skd_nodes), (b, skd_t, skd_nodes),
             pairwise_affinity_mse, naive.naive_pairwise_affinity_mse, normalise=True,
             flops=2.0 * b * skd_nodes**2 * (2 * (skd_s + skd_t) + skd_s)),
        # Per ordered pair: fwd both affinities; bwd recompute + row and column gradient products.
        Case("CIRKD pixel-to-pixel", "2x128 / 2x256 x 8192 pixels", (b, cirkd_s, cirkd_nodes),
             (b, cirkd_t, cirkd_nodes), cross_image_affinity_kl, naive.naive_cross_image_affinity_kl,
             {"tau": 0.1}, normalise=True, flops=2.0 * b * b * cirkd_nodes**2 * (2 * (cirkd_s + cirkd_t) + 2 * cirkd_s)),
    ] + [
        case
        for wide in (256, 512)
        for case in (
            Case("SKD pair-wise affinity", f"2x{wide} / 2x512 x 2048 nodes", (b, wide, skd_nodes), (b, skd_t, skd_nodes),
                 pairwise_affinity_mse, naive.naive_pairwise_affinity_mse, normalise=True,
                 flops=2.0 * b * skd_nodes**2 * (2 * (wide + skd_t) + wide), width_sweep=True),
            Case("CIRKD pixel-to-pixel", f"2x{wide} / 2x256 x 8192 pixels", (b, wide, cirkd_nodes),
                 (b, cirkd_t, cirkd_nodes), cross_image_affinity_kl, naive.naive_cross_image_affinity_kl,
                 {"tau": 0.1}, normalise=True,
                 flops=2.0 * b * b * cirkd_nodes**2 * (2 * (wide + cirkd_t) + 2 * wide), width_sweep=True),
        )
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------ CPU


def _rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def _cpu_worker(case: Case, implementation: str, repeat: int, budget_s: float = 20.0) -> dict:
    """One implementation of one case in this (fresh) process: a small warm-up fwd + bwd (it pages in
    the library code, which the resident set would otherwise count), then timed ones, the first of
    which also measures the peak memory, until ``repeat`` runs or ``budget_s`` seconds."""
    fn = case.naive if implementation == "naive" else case.lean
    student, teacher = case.inputs("cpu", torch.float32)
    student.requires_grad_()
    input_bytes = (student.numel() + teacher.numel()) * 4
    grad_bytes = student.numel() * 4
    fn(*case.warmup_inputs(student, teacher), **case.kwargs).backward()
    times = []
    for run in range(repeat):
        if sum(times) > budget_s:
            break
        student.grad = None
        gc.collect()
        if run == 0:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # reset the resident-set high-water mark to the current size
            before = _rss_kib("VmRSS:")
        start = time.perf_counter()
        fn(student, teacher, **case.kwargs).backward()
        times.append(time.perf_counter() - start)
        if run == 0:
            peak = (_rss_kib("VmHWM:") - before) * 1024
    return {
        "time_ms": 1e3 * statistics.median(times),
        "peak_bytes": input_bytes + peak,
        "working_bytes": peak - grad_bytes,
    }


def _run_cpu_worker(index: int, implementation: str, repeat: int, threads: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "SEGDISTILL_KERNELS": "reference",
           "OMP_NUM_THREADS": str(threads)}  # fmt: skip
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(index), implementation,
               "--repeat", str(repeat)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark worker {index} {implementation} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_cpu(repeat: int, thread_counts: list[int]) -> None:
    print(f"CPU: {os.cpu_count()} cores, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}; "
          f"fwd + bwd after a warm-up, median of {repeat}, peak memory of the first; at each thread count the "
          "published form and the reference run one after the other")  # fmt: skip
    rows = []
    for index, case in enumerate(_cases()):
        if case.naive is None or case.width_sweep:
            continue
        for threads in thread_counts:
            naive_result = _run_cpu_worker(index, "naive", repeat, threads)
            lean_result = _run_cpu_worker(index, "lean", repeat, threads)
            for label, result in (
                ("published (materialising)", naive_result),
                ("memory-lean reference", lean_result),
            ):
                rows.append((
                    f"{case.name}, {case.shape}", str(threads), label, f"{result['time_ms']:.1f}",
                    f"{result['peak_bytes'] / MiB:.1f}", f"{result['working_bytes'] / MiB:.1f}",
                    f"{result['time_ms'] / naive_result['time_ms']:.2f}",
                    f"{result['peak_bytes'] / naive_result['peak_bytes']:.3f}",
                    f"{max(result['working_bytes'], 0) / naive_result['working_bytes']:.3f}",
                ))  # fmt: skip
            print(f"  done: {case.name}, {threads} thread(s)", file=sys.stderr)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    _print_table(
        ("loss core, shape", "threads", "implementation", "time (ms)", "peak (MiB)", "working (MiB)", "time / published",
         "peak / published", "working / published"),
        rows,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ CUDA


def _cuda_measure(fn: Callable, student: torch.Tensor, teacher: torch.Tensor, kwargs: dict) -> dict:
    import triton.testing

    def step():
        student.grad = None
        fn(student, teacher, **kwargs).backward()

    step()  # compile (Triton, torch.compile) and warm up
    torch.cuda.synchronize()
    student.grad = None
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(student, teacher, **kwargs).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    grad_bytes = student.grad.numel() * student.grad.element_size()
    time_ms = triton.testing.do_bench(step, warmup=10, rep=200, return_mode="median")
    return {"time_ms": time_ms, "peak_bytes": base + peak, "working_bytes": peak - grad_bytes}


def copy_bandwidth() -> float:
    """Device copy bandwidth in bytes/s: a 1 GiB tensor copied (read + write)."""
    import triton.testing

    src = torch.empty(2**28, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    time_ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=200, return_mode="median")
    return 2 * src.numel() * src.element_size() / (time_ms * 1e-3)


def bench_cuda(dtype: torch.dtype) -> list[dict]:
    """Print the table; return its rows as records (figures as numbers) for scripts/gpu_check.py."""
    bandwidth = copy_bandwidth()
    name = torch.cuda.get_device_name()
    print(f"{name}, torch {torch.__version__}; measured copy bandwidth {bandwidth / 1e9:.0f} GB/s; "
          f"inputs {str(dtype).removeprefix('torch.')}; fwd + bwd, median time")  # fmt: skip
    rows, records = [], []
    for case in _cases():
        student, teacher = case.inputs("cuda", dtype)
        student.requires_grad_()
        implementations = {
            "triton": lambda s, t, case=case, **kw: case.lean(s, t, **kw, backend="triton"),
            "reference, eager": lambda s, t, case=case, **kw: case.lean(s, t, **kw, backend="reference"),
        }
        if case.naive is None:
            implementations["reference, torch.compile"] = torch.compile(implementations["reference, eager"])
        else:
            # The lean reference is a Python loop of checkpointed chunks; compiling it would unroll the
            # loop, so the compiled baseline is the published form.
            implementations["published, eager"] = case.naive
            if not case.width_sweep:
                implementations["published, torch.compile"] = torch.compile(case.naive)
        results = {}
        for label, fn in implementations.items():
            try:
                results[label] = _cuda_measure(fn, student, teacher, case.kwargs)
            except Exception as error:  # a baseline that fails (e.g. out of memory) must not hide the others
                results[label] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:60]}"}
            torch.cuda.empty_cache()
        eager = results["published, eager" if case.naive else "reference, eager"]
        moved = case.bytes_moved(student.element_size())
        for label, result in results.items():
            record = {"case": case.name, "shape": case.shape, "implementation": label, **result}
            records.append(record)
            if "error" in result:
                rows.append((f"{case.name}, {case.shape}", label, result["error"], "", "", "", "", "", ""))
                continue
            seconds = result["time_ms"] * 1e-3
            record.update(
                speedup_vs_eager=eager["time_ms"] / result["time_ms"] if "time_ms" in eager else None,
                peak_vs_eager=result["peak_bytes"] / eager["peak_bytes"] if "peak_bytes" in eager else None,
                bandwidth_vs_copy=moved / seconds / bandwidth,
                tflops=case.flops / seconds / 1e12,
            )
            speedup, peak_ratio = record["speedup_vs_eager"], record["peak_vs_eager"]
            rows.append((
                f"{case.name}, {case.shape}", label, f"{result['time_ms']:.3f}",
                f"{result['peak_bytes'] / MiB:.1f}", f"{result['working_bytes'] / MiB:.1f}",
                "" if speedup is None else f"{speedup:.2f}", "" if peak_ratio is None else f"{peak_ratio:.3f}",
                f"{100 * record['bandwidth_vs_copy']:.0f}%", f"{record['tflops']:.1f}",
            ))  # fmt: skip
        print(f"  done: {case.name}, {case.shape}", file=sys.stderr)
    _print_table(
        ("loss core, shape", "implementation", "time (ms)", "peak (MiB)", "working (MiB)", "speed-up vs eager",
         "peak / eager", "bandwidth vs copy", "TFLOP/s"),
        rows,
    )  # fmt: skip
    return records


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(row[col])) for row in [header, *rows]) for col in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(
            "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                        help="input dtype on CUDA (default float32); CPU runs float32")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="timed fwd + bwd per CPU measurement (>= 1)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="CPU thread counts, each measured side by side (default: 1 2)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="CUDA: end with the rows as one JSON line")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        index, implementation = args.worker
        print(json.dumps(_cpu_worker(_cases()[int(index)], implementation, args.repeat)))
        return
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device here: the GPU benchmark is skipped (run it on a GPU machine)")
            return
        records = bench_cuda(getattr(torch, args.dtype))
        if args.json:
            print(json.dumps(records))
        return
    bench_cpu(args.repeat, args.threads)


if __name__ == "__main__":
    main()
