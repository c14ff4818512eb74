"""Backends by name, and :func:`load_predictor`, the one way to open an artifact.

| backend | artifact | runs on |
|---|---|---|
| eager | checkpoint folder (model.safetensors + model.json) | CPU / GPU |
| torchscript | ``.ts`` from export/to_torchscript.py | CPU / GPU |
| torch-export | ``.pt2`` from export/to_torchscript.py | CPU / GPU |
| ort-cpu, ort-cuda, ort-tensorrt | ``.onnx`` (FP32, FP16, QDQ INT8) | ONNX Runtime's CPU / CUDA / TensorRT providers |
| tensorrt | ``.plan`` from export/to_trt.py | NVIDIA GPU, the TensorRT version and GPU it was built on |
"""

from __future__ import annotations

from pathlib import Path

import torch

from segdistill.checkpoint import META_NAME
from segdistill.deploy.artifact import ArtifactError, check_parity_passed, read_artifact_info
from segdistill.deploy.backends.ort_session import PROVIDERS, OnnxRuntimePredictor
from segdistill.deploy.backends.torch_modules import (
    eager_predictor,
    torch_export_predictor,
    torchscript_predictor,
)
from segdistill.deploy.backends.trt_engine import TensorRTPredictor
from segdistill.deploy.predictor import Predictor
from segdistill.errors import unknown_choice

# backend -> the artifact kind it opens
BACKEND_KINDS = {"torchscript": "torchscript", "torch-export": "torch_export", **dict.fromkeys(PROVIDERS, "onnx"), "tensorrt": "tensorrt"}
DEFAULT_BACKEND = {"checkpoint": "eager", "torchscript": "torchscript", "torch_export": "torch-export", "onnx": "ort-cpu", "tensorrt": "tensorrt"}
BACKEND_NAMES = ["eager", *BACKEND_KINDS]


def is_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / META_NAME).is_file() if path.is_dir() else path.name in (META_NAME, "model.safetensors")


def load_predictor(
    artifact: str | Path,
    backend: str | None = None,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    allow_failed_parity: bool = False,
) -> Predictor:
    """Open ``artifact`` with ``backend`` (default: the natural one for its kind)."""
    artifact = Path(artifact)
    if backend is not None and backend not in BACKEND_NAMES:
        raise unknown_choice("backend", backend, BACKEND_NAMES, "--backend")
    if is_checkpoint(artifact):
        if backend not in (None, "eager"):
            raise ArtifactError(f"{str(artifact)!r} is a checkpoint, which only the 'eager' backend runs; export it first")
        return eager_predictor(artifact if artifact.is_dir() else artifact.parent, device)
    info = read_artifact_info(artifact)
    if not allow_failed_parity:
        check_parity_passed(info, artifact)
    backend = backend or DEFAULT_BACKEND[info.kind]
    if backend == "eager" or BACKEND_KINDS[backend] != info.kind:
        opens = "a checkpoint folder" if backend == "eager" else f"{BACKEND_KINDS[backend]} artifacts"
        raise ArtifactError(f"backend {backend!r} opens {opens}; {str(artifact)!r} is a {info.kind} artifact")
    if backend == "torchscript":
        return torchscript_predictor(artifact, info, device)
    if backend == "torch-export":
        return torch_export_predictor(artifact, info, device)
    if backend == "tensorrt":
        return TensorRTPredictor(artifact, info, device)
    return OnnxRuntimePredictor(artifact, info, device, backend, threads)
