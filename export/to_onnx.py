"""Export a student checkpoint to ONNX with the dynamo-based exporter (the TorchScript-based one where
torch.export cannot trace the model), then gate it against PyTorch.

    python export/to_onnx.py --checkpoint RUN/final [--shape 1x3x512x1024] [--dynamic batch,height,width]
        [--output logits|labels] [--fold-normalize] [--precision fp32|fp16|bf16] [--opset 18] [--slim]
        [--out FILE] [--data camvid:ROOT --parity-images N]

The graph returns full-resolution logits (N, K, H, W) or int32 labels (N, H, W: the argmax runs in the
graph, so only labels are copied back to the host); ``--fold-normalize`` makes it take uint8 NHWC
images with the normalisation inside. A quantization-aware trained checkpoint (``quantization:`` in its
training config) becomes a QDQ ONNX directly, with the scales it learnt (no calibration; precision int8,
gated against its fake-quantized PyTorch model). The ONNX file passes ``onnx.checker`` (full check) and shape
inference, and is written with a sidecar ``FILE.json``. The parity gate then runs it in ONNX Runtime
(CPU) against PyTorch at the export shape, at another shape for every dynamic dimension, and on the
images of ``--data`` if given; the exit status is 1 when it fails (the sidecar records the figures).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import tempfile
from pathlib import Path

import onnx
import onnxruntime
import onnxscript
import torch
from torch.export import Dim

from segdistill.checkpoint import read_metadata
from segdistill.deploy.accuracy import evaluate, open_dataset
from segdistill.deploy.artifact import ArtifactInfo, write_artifact_info
from segdistill.deploy.backends.torch_modules import eager_predictor
from segdistill.deploy.shapes import ImageShape, parse_range
from segdistill.deploy.wrapper import DTYPES, INPUT_NAME, DeployModel, load_deploy_model
from segdistill.errors import ConfigError, command
from segdistill.export.onnx_graph import (
    check_and_infer,
    name_dynamic_dims,
    save_atomic,
    shapes_after_uint8_cast,
    slim,
)
from segdistill.export.options import (
    add_model_arguments,
    export_shape,
    model_name,
    parse_dynamic,
    traced_shape,
)
from segdistill.export.parity import ParityReport, add_parity_arguments, gate_artifact
from segdistill.export.shape_generic import shape_generic_pooling
from segdistill.models.backbones import fixed_size_family

MIN_OPSET = 18


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--precision", choices=list(DTYPES), default="fp32", help="the graph's float type (I/O stay float32 / uint8 / int32)")
    parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset, {MIN_OPSET} or newer")
    parser.add_argument("--slim", action="store_true", help="clean the graph up with onnxslim")
    add_parity_arguments(parser)
    return parser.parse_args(argv)


def example_input(model: DeployModel, shape: ImageShape) -> torch.Tensor:
    if model.uint8_input:
        return torch.randint(0, 256, shape.tensor_shape("NHWC"), dtype=torch.uint8)
    return torch.randn(shape.tensor_shape("NCHW"))


def input_axes(model: DeployModel, dynamic: set[str]) -> dict[int, str]:
    axes = {"batch": 0, "height": 1, "width": 2} if model.uint8_input else {"batch": 0, "height": 2, "width": 3}
    return {axes[name]: name for name in dynamic}


def export_onnx(
    model: DeployModel,
    shape: ImageShape,
    dynamic: set[str],
    path: Path,
    name: str,
    opset: int = MIN_OPSET,
    use_slim: bool = False,
    quantized: bool = False,
) -> str:
    """Trace ``model`` at ``shape`` with ``dynamic`` dimensions left free and write a checked ONNX file; the
    exporter that traced it. The dynamo-based exporter (torch.export) first; where it cannot trace the model
    (PVTv2's reshapes defeat its symbolic shapes), the TorchScript-based exporter, whose graph is only as
    dynamic as the model's shape arithmetic: the parity gate checks it at other shapes. One message naming
    ``name`` if neither can trace it (the file already at ``path`` is kept). ``quantized``: a model with
    ModelOpt's fake quantizers, which become QuantizeLinear / DequantizeLinear pairs only through the
    TorchScript-based exporter (torch.export stops at their data-dependent checks)."""
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset}: use {MIN_OPSET} or newer (the dynamo exporter's translations need it)")
    axes = input_axes(model, dynamic)
    path.parent.mkdir(parents=True, exist_ok=True)
    exporters = {"torchscript": {"dynamo": False, "dynamic_axes": {INPUT_NAME: axes} if axes else None}}
    if not quantized:  # torch.export first
        dynamo = {"dynamo": True, "dynamic_shapes": {INPUT_NAME: dict.fromkeys(axes, Dim.DYNAMIC)} if axes else None, "external_data": False, "optimize": True}
        exporters = {"dynamo": dynamo, **exporters}
    errors: dict[str, Exception] = {}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, shape_generic_pooling(), torch.no_grad():
        raw = Path(tmp) / "raw.onnx"
        for exporter, kwargs in exporters.items():
            try:
                torch.onnx.export(
                    model,
                    (example_input(model, shape),),
                    str(raw),
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[model.output],
                    verbose=False,
                    **kwargs,
                )
                break
            except torch.onnx.OnnxExporterError as err:  # this exporter could not trace the model
                errors[exporter] = err
                if exporter == "dynamo":
                    print(f"note: {untraceable(exporter, err, name, dynamic)}; trying the TorchScript-based exporter", flush=True)
        else:
            reasons = "; ".join(untraceable(e, err, name, dynamic) for e, err in errors.items())
            hint = "; export it static instead (without --dynamic, at the --shape you deploy)" if dynamic else ""
            raise ConfigError(f"{reasons}; so {str(path)!r} is left as it was{hint}")
        graph = onnx.load(str(raw))
    name_dynamic_dims(graph, axes)
    shapes_after_uint8_cast(graph)
    graph = check_and_infer(slim(graph) if use_slim else graph)
    save_atomic(graph, path)
    return f"torch.onnx.export(dynamo={exporter == 'dynamo'})"


EXPORTER_NAMES = {"dynamo": "torch.export", "torchscript": "the TorchScript-based exporter"}


def untraceable(exporter: str, err: Exception, name: str, dynamic: set[str]) -> str:
    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    reason = " ".join(f"{type(cause).__name__}: {cause}".split())[:300]
    free = f" with dynamic {', '.join(sorted(dynamic))}" if dynamic else ""
    return f"{EXPORTER_NAMES[exporter]} cannot trace {name}{free} ({reason})"


def check_dynamic_size(meta: dict, dynamic: set[str]) -> None:
    """A backbone padded inside to whole windows (swin) keeps its height and width static in ONNX: torch.export
    traces it in minutes into a graph ONNX Runtime gets wrong, and the TorchScript-based exporter fixes the
    padding at the export shape (docs/models.md)."""
    model = meta["model"]
    multiple = 1 if model.get("factory") or model.get("torchvision_model") else fixed_size_family(model.get("backbone", ""))[1]
    free = sorted({"height", "width"} & dynamic)
    if multiple > 1 and free:
        raise ConfigError(
            f"--dynamic {','.join(free)}: {model_name(meta)} pads its input to whole {multiple}-pixel windows inside the model, "
            "which no ONNX exporter keeps dynamic; export it with --dynamic batch at the --shape you deploy (one graph per size)"
        )


def default_path(args: argparse.Namespace, quantized: bool) -> Path:
    name = "model" + ("_labels" if args.output == "labels" else "") + ("_u8" if args.fold_normalize else "")
    name += "_int8" if quantized else "" if args.precision == "fp32" else f"_{args.precision}"
    return Path(args.checkpoint) / "export" / f"{name}.onnx"


def main(argv: list[str] | None = None) -> ParityReport:
    args = parse_args(argv)
    dynamic = parse_dynamic(args.dynamic)
    check_dynamic_size(read_metadata(args.checkpoint), dynamic)  # before building the model
    model, meta = load_deploy_model(args.checkpoint, args.output, args.fold_normalize, args.precision)
    shape = export_shape(args, meta)
    if args.shape_range:  # a bad range stops here, not after the export
        parse_range(args.shape_range, shape)
    quantization = meta.get("quantization")
    if quantization and args.precision != "fp32":
        raise ConfigError(f"--precision {args.precision}: {args.checkpoint!r} was trained with quantization (QAT) and exports as its INT8 QDQ graph; leave --precision out")
    path = Path(args.out) if args.out else default_path(args, bool(quantization))
    print(f"exporting {args.checkpoint} at {shape} (dynamic: {', '.join(sorted(dynamic)) or 'none'}) to {path}")
    exporter = export_onnx(model, shape, dynamic, path, model_name(meta), args.opset, args.slim, quantized=bool(quantization))
    info = model.artifact_info("onnx", meta, args.checkpoint, traced_shape(shape, dynamic))
    if quantization:
        info.precision = "int8"
        info.extra["quantization"] = {**quantization, "format": "QDQ", "target": "tensorrt", "qat": True, "calibration": "none: scales from training"}
    info.versions.update(onnx=onnx.__version__, onnxscript=onnxscript.__version__, onnxruntime=onnxruntime.__version__)
    if args.slim:
        info.versions["onnxslim"] = importlib.metadata.version("onnxslim")
    info.extra.update(opset=args.opset, exporter=exporter, slim=args.slim, traced_at=str(shape))
    report = gate_artifact(path, info, shape, args)
    if quantization and args.data:
        compare_with_fp32_student(path, info, meta, report, args)
    return report


def compare_with_fp32_student(path: Path, info: ArtifactInfo, meta: dict, report: ParityReport, args: argparse.Namespace) -> None:
    """A QAT graph's mIoU beside that of the FP32 student it was trained from (``model.init_from``), on the
    gate's dataset images, printed and recorded in the sidecar (``extra.quantization.fp32_student``)."""
    start = meta["model"].get("init_from")
    if not start or not Path(start).exists():
        print(f"note: the FP32 student this model was trained from ({start!r}) is not here; no mIoU to compare with")
        return
    dataset = open_dataset(args.data, info.data, args.split)
    fp32 = eager_predictor(start, "cpu", info.output_kind, info.normalization_in_graph)
    fp32_miou = 100 * evaluate(fp32, dataset, args.parity_images, progress=False).miou
    qat_miou = next(check.miou_artifact for check in report.checks if check.miou_artifact is not None)
    info.extra["quantization"]["fp32_student"] = {"checkpoint": str(Path(start).resolve()), "miou": fp32_miou, "qat_int8_miou": qat_miou}
    write_artifact_info(path, info)
    print(f"mIoU on {dataset.info.name}: FP32 student {fp32_miou:.2f} ({start}), this QAT INT8 graph {qat_miou:.2f}")


# exit status: 0 written and its parity gate passed, 1 the gate failed, 2 a user's mistake (one line on stderr).
cli = command(main, lambda report: 0 if report.passed else 1)


if __name__ == "__main__":
    sys.exit(cli())
