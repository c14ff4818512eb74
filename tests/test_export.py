"""Export: ONNX (PSPNet and DeepLabV3 heads, dynamic shapes), QDQ INT8, TensorRT's clear failure here, and the parity
gate, on tiny LCNet students saved as real checkpoints. The dynamo exports are shared per module."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from segdistill.checkpoint import read_metadata, save_model, sha256_of
from segdistill.config import DataConfig, ModelConfig, config_to_dict
from segdistill.data.base import DatasetInfo
from segdistill.data.synthetic import CLASSES, IGNORE_INDEX, PALETTE
from segdistill.deploy.artifact import ArtifactError, read_artifact_info, sidecar_path
from segdistill.deploy.backends import load_predictor
from segdistill.deploy.backends.ort_session import fused_nodes
from segdistill.deploy.backends.torch_modules import eager_predictor
from segdistill.deploy.shapes import ImageShape, parse_range, parse_shape
from segdistill.errors import ConfigError
from segdistill.export import to_int8, to_onnx, to_trt
from segdistill.export.onnx_graph import graph_precision
from segdistill.export.parity import THRESHOLDS, run_parity
from segdistill.export.shape_generic import adaptive_avg_pool2d_matmul
from segdistill.models import build_model
from tests.helpers import run_python

SIZE = (40, 56)  # synthetic validation scenes, H x W
PARITY = ["--data", "synthetic", "--parity-images", "3"]


def save_student(
    folder: Path, head: str, seed: int, backbone: str = "lcnet_050", output_stride: int = 8, cfg: ModelConfig | None = None
) -> Path:
    """A random-initialised student (LCNet-0.5 by default, or the model of ``cfg``) saved exactly as training saves one."""
    torch.manual_seed(seed)
    cfg = cfg or ModelConfig(backbone=backbone, head=head, head_channels=16, output_stride=output_stride)
    model = build_model(cfg, len(CLASSES)).eval()
    data = DataConfig(crop_size=SIZE)
    data.synthetic.size, data.synthetic.num_val = SIZE, 3
    extra = {"mean": list(data.mean), "std": list(data.std), "data": config_to_dict(data)}
    save_model(model, folder, cfg, DatasetInfo("synthetic", CLASSES, PALETTE, IGNORE_INDEX), extra)
    return folder


@pytest.fixture(scope="module")
def psp_labels_dynamic(tmp_path_factory) -> tuple[Path, Path, object]:
    """PSPNet head, uint8 NHWC in, int32 labels out, every dimension dynamic."""
    checkpoint = save_student(tmp_path_factory.mktemp("psp"), "psp", seed=1)
    out = checkpoint / "psp.onnx"
    report = to_onnx.main(
        ["--checkpoint", str(checkpoint), "--dynamic", "batch,height,width", "--output", "labels", "--fold-normalize", "--out", str(out), *PARITY]
    )
    return checkpoint, out, report


@pytest.fixture(scope="module")
def aspp_logits(tmp_path_factory) -> tuple[Path, Path]:
    """DeepLabV3 (ASPP) head, float NCHW in, logits out, height and width dynamic, batch fixed at 1."""
    checkpoint = save_student(tmp_path_factory.mktemp("aspp"), "aspp", seed=2)
    out = checkpoint / "aspp.onnx"
    assert to_onnx.cli(["--checkpoint", str(checkpoint), "--dynamic", "height,width", "--slim", "--out", str(out), *PARITY]) == 0
    return checkpoint, out


def pooled_by_definition(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Adaptive average pooling from its definition: bin i covers [floor(i H / b), ceil((i + 1) H / b))."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, out_h, out_w))
    for i in range(out_h):
        r0, r1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)
        for j in range(out_w):
            c0, c1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 23), st.integers(1, 23), st.integers(1, 7), st.integers(1, 7))
def test_shape_generic_pooling_is_adaptive_average_pooling(h: int, w: int, out_h: int, out_w: int) -> None:
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    got = adaptive_avg_pool2d_matmul(x, (out_h, out_w))
    np.testing.assert_allclose(got.numpy(), pooled_by_definition(x.numpy(), out_h, out_w), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, F.adaptive_avg_pool2d(x, (out_h, out_w)))
    torch.testing.assert_close(adaptive_avg_pool2d_matmul(x, (None, out_w)), F.adaptive_avg_pool2d(x, (None, out_w)))


def test_dynamic_psp_graph_is_right_at_every_shape(psp_labels_dynamic) -> None:
    checkpoint, path, report = psp_labels_dynamic
    assert report.passed, report.table()
    random_shapes = {c.shape for c in report.checks if c.inputs == "synthetic/val resized"}
    assert len(random_shapes) >= 2 and all(c.label_agreement == 1.0 for c in report.checks)
    dataset = [c for c in report.checks if c.inputs == "synthetic/val"]
    assert dataset and dataset[0].images == 3 and dataset[0].miou_artifact == pytest.approx(dataset[0].miou_reference)

    graph = onnx.load(str(path))
    assert next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 18
    (inp,), (out,) = graph.graph.input, graph.graph.output
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8 and out.type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", "height", "width", 3]

    # A shape the gate did not use, with bin sizes that do not divide the pooled map.
    artifact = load_predictor(path, "ort-cpu")
    assert 0 < fused_nodes(path) < len(graph.graph.node)  # ONNX Runtime fused (Conv + Relu, ...) what it runs
    reference = eager_predictor(checkpoint, output="labels", uint8_input=True)
    images = np.random.default_rng(5).integers(0, 256, size=(3, 77, 45, 3), dtype=np.uint8)
    assert np.array_equal(artifact.predict(images), reference.predict(images))


@pytest.mark.parametrize("head", ["lraspp", "segformer", "fpn", "uper"])
def test_dynamic_multi_scale_decoder_is_right_at_every_shape(head: str, tmp_path) -> None:
    """Dynamic batch, height and width; the gate checks the export shape, an odd size and the corners of
    the range. UPerNet's pyramid pooling and LR-ASPP's global pooling must not specialise to the export
    shape: at output stride 8, c4 is 5x7 there, which bins 2, 3 and 6 do not divide (without
    export/shape_generic.py the UPerNet graph fails at every other shape)."""
    checkpoint = save_student(tmp_path / head, head, seed=4)
    out = tmp_path / f"{head}.onnx"
    report = to_onnx.main(["--checkpoint", str(checkpoint), "--dynamic", "batch,height,width", "--out", str(out), *PARITY])
    assert report.passed, report.table()
    shapes = {parse_shape(c.shape) for c in report.checks}
    assert len(shapes) >= 3 and any(s.height % 2 or s.width % 2 for s in shapes)
    assert all(c.max_abs_error < 1e-4 for c in report.checks)
    artifact, reference = load_predictor(out, "ort-cpu"), eager_predictor(checkpoint)
    images = np.random.default_rng(6).integers(0, 256, size=(3, 77, 45, 3), dtype=np.uint8)
    assert np.array_equal(artifact.predict(images), reference.predict(images))


def test_sidecar_states_the_shape_range_whose_corners_the_gate_checked(psp_labels_dynamic) -> None:
    _, path, report = psp_labels_dynamic
    info = read_artifact_info(path)
    assert info.shape_range == {"min": "1x3x30x42", "opt": f"1x3x{SIZE[0]}x{SIZE[1]}", "max": "2x3x53x74"}
    corners = {f"{n}x3x{h}x{w}" for n in (1, 2) for h in (30, 53) for w in (42, 74)}
    checked = {c.shape for c in report.checks}
    assert corners | {info.shape_range["opt"]} <= checked
    assert all(c.images >= 8 for c in report.checks if c.inputs == "synthetic/val resized")


def test_shape_range_must_hold_the_export_shape() -> None:
    with pytest.raises(ConfigError, match=r"--shape-range '1x3x48x64/1x3x96x128': each dimension must satisfy MIN <= the export shape 1x3x40x56"):
        parse_range("1x3x48x64/1x3x96x128", ImageShape(1, *SIZE))
    assert parse_range("1x3x20x28/4x3x40x56", ImageShape(1, *SIZE)).max == ImageShape(4, *SIZE)


def test_bad_shape_range_stops_int8_before_it_quantizes(aspp_logits, capsys) -> None:
    _, source = aspp_logits
    out = source.with_name("int8_bad_range.onnx")
    argv = ["--onnx", str(source), "--shape-range", "1x3x20x28/1x3x30x40", "--out", str(out), *PARITY]
    assert to_int8.cli(argv) == 2
    assert "--shape-range '1x3x20x28/1x3x30x40': each dimension must satisfy MIN <=" in capsys.readouterr().err
    assert not out.exists()


def test_uint8_input_is_cast_to_float_before_any_other_node(psp_labels_dynamic) -> None:
    """TensorRT has no UINT8 Transpose: a uint8 network input may only feed a Cast (onnx-tensorrt operators.md)."""
    _, path, _ = psp_labels_dynamic
    graph = onnx.load(str(path)).graph
    consumers = [n.op_type for n in graph.node if graph.input[0].name in n.input]
    assert consumers == ["Cast"]


def test_sidecar_links_the_artifact_to_its_checkpoint(aspp_logits) -> None:
    checkpoint, path = aspp_logits
    info = read_artifact_info(path)
    assert info.sha256 == sha256_of(path)
    assert info.source["weights_sha256"] == read_metadata(checkpoint)["weights_sha256"]
    assert info.input.shape == [1, 3, "height", "width"] and info.output.shape == [1, len(CLASSES), "height", "width"]
    assert info.classes == list(CLASSES) and info.parity["passed"] and info.extra["slim"] and info.versions["onnxslim"]
    # the export shape, an odd size, the four corners of the height x width range, the dataset
    assert len(info.parity["checks"]) == 7 and all(c["max_abs_error"] < 1e-4 for c in info.parity["checks"])
    predictor = load_predictor(path)
    with pytest.raises(ArtifactError, match="does not fit"):
        predictor.predict(np.zeros((2, 32, 32, 3), np.uint8))
    path.write_bytes(path.read_bytes() + b"\0")  # replaced after export: the hash no longer matches
    with pytest.raises(ArtifactError, match="SHA-256"):
        read_artifact_info(path)
    path.write_bytes(path.read_bytes()[:-1])


def test_sidecars_hash_the_weights_file_not_model_json(tmp_path, capsys) -> None:
    checkpoint = save_student(tmp_path / "student", "fcn", seed=8)
    onnx_path = checkpoint / "export" / "model.onnx"
    assert to_onnx.cli(["--checkpoint", str(checkpoint)]) == 0
    other = save_student(tmp_path / "other", "fcn", seed=9)
    (checkpoint / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())  # after model.json
    swapped = sha256_of(checkpoint / "model.safetensors")
    assert swapped != read_metadata(checkpoint)["weights_sha256"]
    assert to_trt.cli(["--onnx", str(onnx_path)]) == 2  # the gate's reference is no longer what was exported
    assert "has other weights" in capsys.readouterr().err
    assert to_onnx.cli(["--checkpoint", str(checkpoint)]) == 0
    assert read_artifact_info(onnx_path).source["weights_sha256"] == swapped
    assert eager_predictor(checkpoint).info.sha256 == swapped


def test_fp16_graph_for_strongly_typed_engines(tmp_path) -> None:
    checkpoint = save_student(tmp_path / "student", "fcn", seed=6)
    out = tmp_path / "fp16.onnx"
    assert to_onnx.cli(["--checkpoint", str(checkpoint), "--precision", "fp16", "--shape", "1x3x32x48", "--out", str(out)]) == 0
    graph = onnx.load(str(out))
    assert graph_precision(graph) == "fp16"  # what to_trt.py reads to build a strongly typed FP16 engine
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    info = read_artifact_info(out)
    assert info.precision == "fp16" and info.parity["passed"]
    assert info.parity["thresholds"]["min_label_agreement"] == THRESHOLDS["fp16"].min_label_agreement
    assert 0 < info.parity["checks"][0]["max_abs_error"] < 0.05


def test_gate_fails_when_the_artifact_computes_something_else(aspp_logits, tmp_path) -> None:
    _, path = aspp_logits
    other = save_student(tmp_path / "other", "aspp", seed=3)
    report = run_parity(eager_predictor(other), load_predictor(path), [ImageShape(1, *SIZE)], THRESHOLDS["fp32"])
    assert not report.passed and "labels equal on" in report.failures[0]
    assert report.checks[0].max_abs_error > 1e-2


@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime-cpu"])
def test_int8_is_an_explicit_qdq_graph(aspp_logits, target: str) -> None:
    _, source = aspp_logits
    out = source.with_name(f"int8_{target}.onnx")
    argv = ["--onnx", str(source), "--target", target, "--calibration-images", "4", "--method", "minmax", "--out", str(out), *PARITY]
    assert to_int8.cli(argv) == 0
    graph = onnx.load(str(out))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer}
    quantize = [n for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    weights = [n for n in graph.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0], np.zeros(0)).ndim == 4]
    assert quantize and weights
    for node in weights:  # per output channel, symmetric
        assert inits[node.input[1]].shape == (inits[node.input[0]].shape[0],)
        assert not inits[node.input[2]].any()
    zero_points = [inits[n.input[2]] for n in quantize]
    if target == "tensorrt":  # TensorRT needs int8 activations with zero point 0
        assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
    else:
        assert all(z.dtype == np.uint8 for z in zero_points)
    info = read_artifact_info(out)
    assert info.precision == "int8" and info.parity["passed"]
    assert info.source["artifact_sha256"] == sha256_of(source)


def test_failed_gate_exits_1_and_the_artifact_is_not_deployed(aspp_logits) -> None:
    _, source = aspp_logits
    out = source.with_name("int8_failed.onnx")
    argv = ["--onnx", str(source), "--calibration-images", "2", "--out", str(out), "--min-label-agreement", "1.01", *PARITY]
    assert to_int8.cli(argv) == 1
    info = read_artifact_info(out)
    assert info.parity["passed"] is False and info.parity["failures"]
    with pytest.raises(ArtifactError, match="failed its parity gate"):
        load_predictor(out)
    assert load_predictor(out, allow_failed_parity=True).predict(np.zeros((1, *SIZE, 3), np.uint8)).shape == (1, *SIZE)


def test_export_errors_name_the_option(aspp_logits, capsys) -> None:
    checkpoint, source = aspp_logits
    assert to_onnx.cli(["--checkpoint", str(checkpoint), "--dynamic", "time"]) == 2
    assert "--dynamic: unknown dimension(s) ['time']" in capsys.readouterr().err
    assert to_onnx.cli(["--checkpoint", str(checkpoint / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert to_trt.cli(["--onnx", str(source), "--precision", "int8"]) == 2
    assert "quantize it first: python export/to_int8.py" in capsys.readouterr().err


def test_trt_profile_defaults_to_the_shape_range_of_the_sidecar(psp_labels_dynamic, aspp_logits) -> None:
    export = ImageShape(1, *SIZE)
    psp = read_artifact_info(psp_labels_dynamic[1])  # batch, height and width dynamic
    low, high = (parse_shape(psp.shape_range[k], k) for k in ("min", "max"))
    assert (low.height, high.height) != (SIZE[0], SIZE[0])  # the range is wider than the export size
    assert to_trt.sidecar_profile(psp, export, max_batch=4) == (
        ImageShape(1, low.height, low.width), export, ImageShape(4, high.height, high.width)
    )
    psp.shape_range = None  # a sidecar from before shape ranges: the export size
    assert to_trt.sidecar_profile(psp, export, max_batch=4) == (export, export, ImageShape(4, *SIZE))
    aspp = read_artifact_info(aspp_logits[1])  # height and width dynamic, batch 1
    assert to_trt.sidecar_profile(aspp, export, max_batch=4) == tuple(
        parse_shape(aspp.shape_range[k], k) for k in ("min", "opt", "max")
    )
    with pytest.raises(ConfigError, match="--max-batch 0"):
        to_trt.sidecar_profile(psp, export, max_batch=0)


def test_trt_checks_shapes_before_needing_tensorrt(psp_labels_dynamic, capsys) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the build itself is tested by test_trt_engine_matches_pytorch")
    _, path, _ = psp_labels_dynamic
    assert to_trt.cli(["--onnx", str(path), "--shapes", "1x3x64x64/1x3x32x32/1x3x96x96"]) == 2
    assert "MIN <= OPT <= MAX" in capsys.readouterr().err
    assert to_trt.cli(["--onnx", str(path)]) == 2  # a dynamic export needs no --shapes: only TensorRT is missing
    out, err = capsys.readouterr()
    low, high = (parse_shape(read_artifact_info(path).shape_range[k], k) for k in ("min", "max"))
    assert f"min 1x3x{low.height}x{low.width}, opt 1x3x{SIZE[0]}x{SIZE[1]}, max 8x3x{high.height}x{high.width}" in out
    assert "TensorRT is not installed" in err and "--shapes" not in err


def test_to_trt_without_tensorrt_says_what_to_install(aspp_logits) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the build itself is tested by test_trt_engine_matches_pytorch")
    _, source = aspp_logits
    shapes = f"1x3x32x32/1x3x{SIZE[0]}x{SIZE[1]}/1x3x64x64"
    result = run_python(["export/to_trt.py", "--onnx", str(source), "--shapes", shapes], timeout=300)
    assert result.returncode == 2, result.stderr
    assert "TensorRT is not installed" in result.stderr and "docker build" in result.stderr


def test_trt_engine_matches_pytorch(aspp_logits, tmp_path) -> None:
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (it needs NVIDIA's packages and a GPU)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: TensorRT engines are built on the GPU that runs them")
    _, source = aspp_logits
    plan, cache = tmp_path / "aspp.plan", tmp_path / "timing.cache"
    shapes = f"1x3x32x32/1x3x{SIZE[0]}x{SIZE[1]}/1x3x96x96"
    argv = ["--onnx", str(source), "--shapes", shapes, "--out", str(plan), "--timing-cache", str(cache), *PARITY]
    assert to_trt.cli(argv) == 0
    info = read_artifact_info(plan)
    assert info.extra["tensorrt"]["version"] == trt.__version__ and info.parity["passed"] and cache.is_file()
    assert to_trt.cli([*argv, "--reuse"]) == 0
    assert json.loads(sidecar_path(plan).read_text())["sha256"] == sha256_of(plan)


def test_trt_replaces_a_timing_cache_it_cannot_use(aspp_logits, tmp_path, capsys) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (it needs NVIDIA's packages and a GPU)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: TensorRT engines are built on the GPU that runs them")
    _, source = aspp_logits
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"not a timing cache of this TensorRT")  # set_timing_cache returns False for it
    assert to_trt.cli(["--onnx", str(source), "--out", str(tmp_path / "aspp.plan"), "--timing-cache", str(cache)]) == 0
    assert "does not fit this TensorRT / GPU" in capsys.readouterr().err
    assert cache.read_bytes() != b"not a timing cache of this TensorRT"
