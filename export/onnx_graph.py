"""ONNX files after the exporter: readable dynamic dimension names, the full checker and shape inference,
optional onnxslim clean-up, atomic writes, and what a graph's precision is."""

from __future__ import annotations

import math
from pathlib import Path

import onnx

from distill.atomic_files import atomic_write
from distill.registry import ConfigError

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def name_dynamic_dims(model: onnx.ModelProto, input_names: dict[int, str]) -> None:
    """Give the exporter's symbols (``s77``, ...) of the input's dynamic axes the names the user chose,
    everywhere they appear (inputs, outputs, intermediate shapes)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    rename = {dims[axis].dim_param: name for axis, name in input_names.items() if dims[axis].dim_param}
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]


def slim(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxslim
    except ImportError:
        raise ConfigError("--slim needs onnxslim: pip install 'segdistill[export]' (or pip install onnxslim)") from None
    return onnxslim.slim(model)


def check_and_infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """The full checker (which includes strict shape inference), then the inferred shapes kept."""
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def save_atomic(model: onnx.ModelProto, path: Path) -> None:
    """Weights inside the file (students are far below protobuf's 2 GB limit), written beside and renamed."""
    atomic_write(path, lambda tmp: onnx.save_model(model, tmp))


def graph_precision(model: onnx.ModelProto) -> str:
    """int8 for a QDQ graph, else the float type that holds most weight values (fp32, fp16 or bf16)."""
    if any(node.op_type in QDQ_OPS for node in model.graph.node):
        return "int8"
    counts = {"fp32": 0, "fp16": 0, "bf16": 0}
    names = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}
    for init in model.graph.initializer:
        if init.data_type in names:
            counts[names[init.data_type]] += math.prod(init.dims)
    return max(counts, key=counts.get)
