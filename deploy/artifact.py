"""The JSON sidecar that every deployable artifact carries (``model.onnx`` -> ``model.onnx.json``).

It links the artifact to its source (checkpoint, or the ONNX an engine was built from, with hashes) and
says what a runtime needs to feed it and read it: input name, layout, dtype and shape (names for the
dynamic dimensions), whether normalisation is folded into the graph, what comes out (full-resolution
logits or int32 labels), the classes, the precision, the versions of the tools that made it, and the
figures of the parity gate it passed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segdistill.atomic_files import atomic_write_text
from segdistill.checkpoint import sha256_of
from segdistill.errors import ConfigError

FORMAT = "segdistill-artifact/1"


class ArtifactError(ConfigError):
    """An artifact that is missing, has no (or a broken) sidecar, or does not fit how it is used."""


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy name: float32, float16, bfloat16, uint8, int32
    layout: str  # NCHW / NHWC for images, NHW for labels
    shape: list[int | str]  # a string names a dynamic dimension


@dataclass
class ArtifactInfo:
    kind: str  # checkpoint, onnx, torchscript, torch_export or tensorrt
    file: str  # the artifact's file name, beside the sidecar
    precision: str  # fp32, fp16, bf16 or int8
    input: TensorSpec
    output: TensorSpec
    output_kind: str  # "logits" (N, K, H, W) at the input size, or "labels" (N, H, W) int32
    normalization_in_graph: bool  # True: uint8 NHWC in, (x / 255 - mean) / std inside the graph
    mean: list[float]
    std: list[float]
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int
    data: dict[str, Any]  # the checkpoint's data settings: where accuracy is measured by default
    source: dict[str, Any]  # checkpoint path + weights hash; for derived artifacts the parent artifact
    sha256: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    shape_range: dict[str, str] | None = None  # min / opt / max (N x 3 x H x W) that the parity gate vouches for
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.input.shape) if isinstance(d, str)}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> ArtifactInfo:
        if values.get("format") != FORMAT:
            raise ArtifactError(f"{where}: format {values.get('format')!r}; expected {FORMAT!r}")
        values = {k: v for k, v in values.items() if k != "format"}
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in values)
        if missing or set(values) - names:
            raise ArtifactError(f"{where}: missing keys {missing}, unknown keys {sorted(set(values) - names)}")
        try:
            return cls(**{**values, "input": TensorSpec(**values["input"]), "output": TensorSpec(**values["output"])})
        except TypeError as err:
            raise ArtifactError(f"{where}: malformed tensor description ({err})") from None


def sidecar_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def write_artifact_info(artifact: str | Path, info: ArtifactInfo) -> Path:
    """Hash the artifact file into ``info`` and write its sidecar atomically."""
    artifact = Path(artifact)
    info.file, info.sha256 = artifact.name, sha256_of(artifact)
    path = sidecar_path(artifact)
    atomic_write_text(path, json.dumps(info.to_dict(), indent=2))
    return path


def read_artifact_info(artifact: str | Path, verify_hash: bool = True) -> ArtifactInfo:
    artifact = Path(artifact)
    if not artifact.is_file():
        raise ArtifactError(f"artifact {str(artifact)!r} does not exist")
    path = sidecar_path(artifact)
    if not path.is_file():
        raise ArtifactError(
            f"artifact {str(artifact)!r} has no sidecar {str(path)!r}: every artifact is written with one by "
            "export/to_onnx.py, to_torchscript.py, to_int8.py or to_trt.py, which say what it expects and computes"
        )
    try:
        info = ArtifactInfo.from_dict(json.loads(path.read_text()), str(path))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"sidecar {str(path)!r} is not valid JSON: {err}") from None
    if verify_hash and info.sha256 != sha256_of(artifact):
        raise ArtifactError(
            f"artifact {str(artifact)!r} does not match its sidecar {str(path)!r} (SHA-256 differs): "
            "the file was replaced after export; export it again"
        )
    return info


def check_parity_passed(info: ArtifactInfo, artifact: str | Path) -> None:
    """An artifact whose parity gate failed is not deployed by accident."""
    if info.parity is not None and not info.parity.get("passed", False):
        raise ArtifactError(
            f"artifact {str(artifact)!r} failed its parity gate ({'; '.join(info.parity.get('failures', []))}); "
            "pass allow_failed_parity (--allow-failed-parity) to run it anyway, e.g. to debug it"
        )
