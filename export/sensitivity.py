"""Which layers cost accuracy in INT8 (``to_int8.py --sensitivity``): each quantizable convolution is
quantized alone (every other layer float), and the mIoU of that graph on the calibration images is
compared with the FP32 graph's; the table ranks the layers by the drop, the largest first. Layers are
named as the PyTorch modules their weights come from (``head.convs.1.0``), the names ``--keep-float`` takes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from segdistill.atomic_files import atomic_write_text
from segdistill.labels import resize_labels
from segdistill.metrics import ConfusionMatrix


@dataclass
class LayerSensitivity:
    layer: str
    node: str
    miou: float  # percent, with only this layer quantized
    drop: float  # mIoU points lost against the FP32 graph


def conv_layers(graph: onnx.ModelProto) -> dict[str, str]:
    """Node name -> layer name (its weight's name without the wrapper's ``model.`` and ``.weight``)."""
    return {n.name: n.input[1].removeprefix("model.").removesuffix(".weight") for n in graph.graph.node if n.op_type == "Conv"}


def graph_miou(path: Path, batches: list[tuple[np.ndarray, torch.Tensor]], num_classes: int, ignore_index: int) -> float:
    """mIoU (percent) of an ONNX graph in ONNX Runtime (CPU) on prepared input batches and their labels."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    matrix = ConfusionMatrix(num_classes, ignore_index)
    for inputs, labels in batches:
        out = session.run(None, {name: inputs})[0]
        predictions = out.argmax(1) if out.ndim == 4 else out  # logits or labels
        matrix.update(resize_labels(torch.from_numpy(predictions.astype(np.int32)), labels.shape[-2:]), labels)
    return 100 * matrix.result().miou


def table(rows: list[LayerSensitivity], fp32_miou: float, images: int) -> str:
    lines = [
        f"INT8 sensitivity: mIoU with one layer quantized, on {images} calibration images (FP32 graph: {fp32_miou:.2f})",
        f"{'layer':<48} {'mIoU':>7} {'drop':>7}",
    ]
    lines += [f"{r.layer:<48} {r.miou:7.2f} {r.drop:7.2f}" for r in rows]
    return "\n".join(lines)


def write_report(rows: list[LayerSensitivity], fp32_miou: float, images: int, path: Path) -> None:
    """``path`` (.json) with the figures and beside it the printed table (.txt)."""
    atomic_write_text(path, json.dumps({"fp32_miou": fp32_miou, "images": images, "layers": [asdict(r) for r in rows]}, indent=2))
    atomic_write_text(path.with_suffix(".txt"), table(rows, fp32_miou, images) + "\n")
