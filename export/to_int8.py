"""INT8 by explicit quantization: an FP32 ONNX export -> a QDQ ONNX (QuantizeLinear / DequantizeLinear
nodes carry the scales), calibrated statically on images of a dataset, then gated against PyTorch.

    python export/to_int8.py --onnx RUN/final/export/model.onnx --data camvid:../shared/data/camvid \
        [--calibration-images 64] [--calibration-split train] [--method entropy|minmax|percentile] \
        [--target tensorrt|onnxruntime-cpu] [--quantizer ort|modelopt] [--out FILE] [--parity-images N]
        [--sensitivity [--keep-float-top K]] [--keep-float LAYER ...]

Explicit quantization is the INT8 path that TensorRT 8, 10 and 11 all build (TensorRT 11 removed the
implicit-INT8 calibrators) and that ONNX Runtime runs too. Weights are quantized per output channel,
symmetric. ``--target`` chooses the activations:

* ``tensorrt`` (default): symmetric int8 (zero point 0), which TensorRT requires; ONNX Runtime runs it,
  but its x86 CPU kernels leave part of such a graph in float (slower there).
* ``onnxruntime-cpu``: asymmetric uint8 activations, what ONNX Runtime's x86 kernels (VNNI / AVX2)
  fuse fully; TensorRT rejects non-zero zero points.

``--quantizer modelopt`` uses NVIDIA ModelOpt (``modelopt.onnx.quantization``, TensorRT's rules for Q/DQ
placement) where it is installed. The gate compares with the FP32 PyTorch model (INT8 thresholds:
labels equal on >= 95% of the pixels, mIoU within 1.0) on the split given by ``--split`` (default val).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from segdistill.checkpoint import sha256_of
from segdistill.deploy.accuracy import image_batches, open_dataset
from segdistill.deploy.artifact import ArtifactError, ArtifactInfo, read_artifact_info
from segdistill.deploy.backends import load_predictor
from segdistill.deploy.shapes import parse_shape
from segdistill.errors import ConfigError, command, unknown_choice
from segdistill.export import sensitivity
from segdistill.export.onnx_graph import check_and_infer, graph_precision, save_atomic
from segdistill.export.parity import ParityReport, add_parity_arguments, gate_artifact, vouched_range

METHODS = ("entropy", "minmax", "percentile")
TARGETS = ("tensorrt", "onnxruntime-cpu")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", required=True, help="FP32 ONNX from export/to_onnx.py (with its sidecar)")
    parser.add_argument("--calibration-images", type=int, default=64, help="how many images calibrate the ranges")
    parser.add_argument("--calibration-split", default=None, help="split to calibrate on (default: the training split)")
    parser.add_argument("--method", choices=METHODS, default="entropy", help="how activation ranges are chosen")
    parser.add_argument("--target", choices=TARGETS, default="tensorrt", help="whose INT8 kernels the graph is made for")
    parser.add_argument("--quantizer", choices=("ort", "modelopt"), default="ort", help="ONNX Runtime's tools or NVIDIA ModelOpt")
    parser.add_argument("--out", help="file to write (default: beside the ONNX, NAME_int8.onnx)")
    parser.add_argument("--sensitivity", action="store_true", help="first rank the layers by the mIoU lost when each alone is quantized (printed, saved as OUT_sensitivity.json / .txt)")
    parser.add_argument("--keep-float", nargs="+", default=[], metavar="LAYER", help="layers (names from the sensitivity table) left in float")
    parser.add_argument("--keep-float-top", type=int, default=0, metavar="K", help="with --sensitivity: leave the K most sensitive layers in float")
    add_parity_arguments(parser)
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("--data is required: calibration needs real images (e.g. --data camvid:../shared/data/camvid)")
    if args.keep_float_top and not args.sensitivity:
        parser.error("--keep-float-top needs --sensitivity (the ranking it takes the top of)")
    return args


def calibration_batches(args: argparse.Namespace, info: ArtifactInfo) -> list[tuple[np.ndarray, torch.Tensor]]:
    """The first N images of the calibration split, prepared exactly as the FP32 graph takes them, with their labels."""
    split = args.calibration_split or info.data.get("train_split", "train")
    dataset = open_dataset(args.data, info.data, split)
    fp32 = load_predictor(args.onnx, "ort-cpu")
    batches = image_batches(dataset, info, args.calibration_images)
    return [(fp32.prepare(images).numpy(), labels) for images, labels in batches]


def float_nodes(model: onnx.ModelProto, depthwise: bool) -> list[str]:
    """Names of the nodes kept in float: the first convolution (it sees the raw image), the last one
    (the classifier) and everything downstream of it (the resize of the logits, the argmax), since
    quantized logits move the argmax wherever two classes are close; with ``depthwise`` also the
    depthwise convolutions, whose per-tensor activations cost the most agreement on MobileNetV2
    (docs/deployment.md). Unnamed nodes get names."""
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if not convs:
        return []
    keep, tensors = [convs[0].name, convs[-1].name], set(convs[-1].output)
    if depthwise:
        keep += [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    for node in model.graph.node:  # topological order: one pass finds everything downstream
        if tensors.intersection(node.input):
            keep.append(node.name)
            tensors.update(node.output)
    return keep


def prepare_for_ort(source: Path, prepared: Path, target: str) -> tuple[list[str], dict[str, str]]:
    """Write ``prepared`` (ONNX shape inference and graph folding, e.g. BatchNorm into Conv; ORT's symbolic
    shape inference is for transformers and gives up on some dynamic CNN graphs); return the nodes kept in
    float for ``target`` and the layer name of every convolution node."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    graph = onnx.load(str(prepared))
    # TensorRT picks each float layer's kernel itself; ONNX Runtime's CPU target keeps its fast int8 depthwise
    excluded = float_nodes(graph, depthwise=target == "tensorrt")
    onnx.save_model(graph, str(prepared))
    return excluded, sensitivity.conv_layers(graph)


def quantize_with_ort(
    prepared: Path,
    output: Path,
    inputs: list[np.ndarray],
    input_name: str,
    method: str,
    target: str,
    excluded: list[str],
    ranges: Path,
    only: str | None = None,
) -> None:
    """Quantize the ``prepared`` graph but its ``excluded`` nodes (with ``only``: that node alone). The
    activation ranges are calibrated once per run: the first call saves them to ``ranges`` (ONNX Runtime's
    calibration cache, which holds every tensor's range whatever is quantized), later calls read them."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {input_name: item}

    calibrate = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    symmetric = target == "tensorrt"
    quantize_static(
        str(prepared),
        str(output),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        calibrate_method=calibrate[method],
        nodes_to_quantize=None if only is None else [only],
        nodes_to_exclude=excluded,
        # TensorRT dequantizes only INT8 / FP8 (onnx-tensorrt operators.md) and fuses float biases itself:
        # no DequantizeLinear on INT32 biases there; ONNX Runtime's CPU kernels fuse the INT32 ones.
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": not symmetric},
        calibration_cache_path=ranges,
    )


def quantize_with_modelopt(source: Path, output: Path, inputs: list[np.ndarray], input_name: str, method: str) -> None:
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError:
        raise ConfigError("--quantizer modelopt needs NVIDIA ModelOpt: pip install nvidia-modelopt[onnx]") from None
    if method == "percentile":
        raise ConfigError("--quantizer modelopt calibrates with entropy or minmax ('max'), not percentile")
    quantize(
        str(source),
        quantize_mode="int8",
        calibration_data={input_name: np.concatenate(inputs)},
        calibration_method="max" if method == "minmax" else "entropy",
        calibration_eps=["cpu"],
        output_path=str(output),
    )


def rank_layers(
    args: argparse.Namespace, info: ArtifactInfo, prepared: Path, batches: list, excluded: list[str], layers: dict[str, str], output: Path, ranges: Path
) -> list[sensitivity.LayerSensitivity]:
    """Quantize each quantizable convolution alone (with the ranges of one calibration), rank by the mIoU
    lost; print and save the table."""
    num_classes, inputs = len(info.classes), [prepared_input for prepared_input, _ in batches]
    images = sum(len(batch) for batch in inputs)
    fp32 = sensitivity.graph_miou(prepared, batches, num_classes, info.ignore_index)
    rows = []
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        single = Path(tmp) / "single.onnx"
        for node, layer in layers.items():
            if node not in excluded:
                quantize_with_ort(prepared, single, inputs, info.input.name, args.method, args.target, excluded, ranges, only=node)
                miou = sensitivity.graph_miou(single, batches, num_classes, info.ignore_index)
                rows.append(sensitivity.LayerSensitivity(layer, node, miou, fp32 - miou))
    rows.sort(key=lambda row: -row.drop)
    print(sensitivity.table(rows, fp32, images))
    sensitivity.write_report(rows, fp32, images, output.with_name(f"{output.stem}_sensitivity.json"))
    return rows


def main(argv: list[str] | None = None) -> ParityReport:
    args = parse_args(argv)
    source = Path(args.onnx)
    info = read_artifact_info(source)
    if info.extra.get("quantization", {}).get("qat"):
        raise ArtifactError(
            f"--onnx {str(source)!r} is already INT8: its checkpoint was trained with quantization (QAT) and "
            "export/to_onnx.py wrote its QDQ graph with the trained scales; deploy it as it is"
        )
    if info.kind != "onnx" or info.precision != "fp32":
        raise ArtifactError(f"--onnx {str(source)!r} is a {info.precision} {info.kind} artifact; INT8 starts from an FP32 ONNX")
    traced = parse_shape(info.extra["traced_at"], f"{source} sidecar: extra.traced_at")
    vouched_range(info, traced, args, None)  # a bad --shape-range stops here, not after the calibration
    if args.quantizer != "ort" and (args.sensitivity or args.keep_float):
        raise ConfigError("--sensitivity and --keep-float work with --quantizer ort")
    batches = calibration_batches(args, info)
    if not batches:
        raise ConfigError("--calibration-images: no calibration batch could be formed (is the split empty?)")
    inputs = [prepared for prepared, _ in batches]
    output = Path(args.out) if args.out else source.with_name(f"{source.stem}_int8.onnx")
    print(f"quantizing {source} with {args.quantizer} ({args.method}, {len(inputs)} calibration batches, for {args.target})")
    kept: list[str] = []
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        raw = Path(tmp) / "int8.onnx"
        if args.quantizer == "ort":
            prepared, ranges = Path(tmp) / "prepared.onnx", Path(tmp) / "ranges.json"
            excluded, layers = prepare_for_ort(source, prepared, args.target)
            nodes = {layer: node for node, layer in layers.items()}
            for name in args.keep_float:
                if name not in nodes:
                    raise unknown_choice("layer", name, nodes, "--keep-float")
            kept = list(args.keep_float)
            if args.sensitivity:
                ranked = rank_layers(args, info, prepared, batches, excluded, layers, output, ranges)
                kept += [row.layer for row in ranked[: args.keep_float_top] if row.layer not in kept]
            quantize_with_ort(prepared, raw, inputs, info.input.name, args.method, args.target, excluded + [nodes[k] for k in kept], ranges)
        else:
            quantize_with_modelopt(source, raw, inputs, info.input.name, args.method)
        graph = check_and_infer(onnx.load(str(raw)))
    if graph_precision(graph) != "int8":
        raise ArtifactError(f"the quantizer left no Q/DQ nodes in {str(output)!r}: nothing was quantized")
    save_atomic(graph, output)
    info.precision, info.parity = "int8", None
    info.source = {**info.source, "artifact": str(source.resolve()), "artifact_sha256": sha256_of(source)}
    info.versions["onnxruntime"] = onnxruntime.__version__
    info.extra.update(
        quantization={
            "quantizer": args.quantizer,
            "format": "QDQ",
            "method": args.method,
            "target": args.target,
            "weights": "int8 per channel, symmetric",
            "activations": "int8 symmetric" if args.target == "tensorrt" else "uint8 asymmetric",
            "kept_float": kept,
            "calibration": {"dataset": args.data, "split": args.calibration_split or info.data.get("train_split", "train"), "batches": len(inputs)},
        }
    )
    return gate_artifact(output, info, traced, args)


# exit status: 0 written and its parity gate passed, 1 the gate failed, 2 a user's mistake (one line on stderr).
cli = command(main, lambda report: 0 if report.passed else 1)


if __name__ == "__main__":
    sys.exit(cli())
