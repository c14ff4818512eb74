"""What a latency figure was measured on: processor, GPU and its clocks where readable, library versions."""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_facts() -> dict[str, Any]:
    info = read_text("/proc/cpuinfo") or ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return {
        "model": fields.get("model name") or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "mhz": fields.get("cpu MHz"),
        "governor": read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],  # other work on the machine while measuring
    }


def gpu_facts() -> dict[str, Any] | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    facts: dict[str, Any] = {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
    }
    if shutil.which("nvidia-smi"):
        query = "driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.limit,pstate"
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0:
            facts.update(zip(query.split(","), (v.strip() for v in out.stdout.splitlines()[0].split(",")), strict=False))
    jetson = read_text("/etc/nv_tegra_release")
    if jetson:
        facts["l4t"] = jetson.splitlines()[0]
    return facts


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__, "cuda": str(torch.version.cuda)}
    for name in ("onnxruntime", "onnx", "tensorrt", "timm"):
        try:
            found[name] = importlib.import_module(name).__version__
        except ImportError:
            continue
    return found


def environment() -> dict[str, Any]:
    return {"os": platform.platform(), "cpu": cpu_facts(), "gpu": gpu_facts(), "versions": versions()}
