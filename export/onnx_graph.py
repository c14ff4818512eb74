"""ONNX files after the exporter: readable dynamic dimension names, the full checker and shape inference,
optional onnxslim clean-up, atomic writes, and what a graph's precision is."""

from __future__ import annotations

import math
from pathlib import Path

import onnx

from segdistill.atomic_files import atomic_write
from segdistill.errors import ConfigError

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


def shapes_after_uint8_cast(model: onnx.ModelProto) -> None:
    """TensorRT takes a UINT8 network input only into a Cast to float (its DataType::kUINT8 rule), but the
    exporter reads the dynamic sizes with Shape nodes on the uint8 input itself: those read the Cast's
    output instead, which has the same shape, and the Cast moves to the front so the order stays valid."""
    nodes = model.graph.node
    for value in model.graph.input:
        if value.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
            continue
        cast = next((n for n in nodes if n.op_type == "Cast" and value.name in n.input), None)
        if cast is None:
            continue
        for node in nodes:
            if node.op_type == "Shape" and node.input[0] == value.name:
                node.input[0] = cast.output[0]
        moved = onnx.NodeProto()
        moved.CopyFrom(cast)
        nodes.remove(cast)
        nodes.insert(0, moved)


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
