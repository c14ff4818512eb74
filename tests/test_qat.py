"""Quantization-aware distillation (issue 14): a tiny FP32 student fine-tuned with ModelOpt's INT8 fake
quantization against its teacher, exported as a QDQ ONNX that ONNX Runtime runs with the labels of the
fake-quantized PyTorch model; a killed QAT run resumes bit for bit; each bad input ends in one message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file

from segdistill.checkpoint import CheckpointError, load_model
from segdistill.deploy.accuracy import evaluate, open_dataset
from segdistill.deploy.artifact import ArtifactError
from segdistill.deploy.backends.torch_modules import eager_predictor
from segdistill.deploy.wrapper import DeployModel
from segdistill.errors import ConfigError
from segdistill.export import to_int8, to_onnx
from segdistill.train import main as train
from tests.helpers import TINY, kill_training_after, run_python


def qat_args(fp32: Path) -> list[str]:
    """A QAT + KD run of the tiny student, started from (and taught by) the FP32 checkpoint ``fp32``."""
    return [
        *TINY,
        f"model.init_from={fp32}",
        f"teacher.checkpoint={fp32}",
        "losses=[{name: pixel_kd, weight: 1.0}]",
        "quantization.calibration_images=4",
    ]


@pytest.fixture(scope="module")
def qat_run(tiny_teacher: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("qat")
    train([*qat_args(tiny_teacher), f"output_dir={run}"])
    return run / "final"


def test_a_qat_run_saves_the_trained_scales_and_the_float_layers(qat_run: Path) -> None:
    meta = json.loads((qat_run / "model.json").read_text())
    float_layers = meta["quantization"]["float_layers"]
    # TensorRT's placement, as to_int8.py --target tensorrt: first convolution, classifiers, depthwise in float
    assert {"backbone.body.conv_stem", "head.classifier", "aux_head.classifier", "backbone.body.blocks.0.0.conv_dw"} <= set(float_layers)
    weights = load_file(qat_run / "model.safetensors")
    scales = [k for k in weights if k.endswith("_quantizer._amax")]
    assert "head.convs.0.0.weight_quantizer._amax" in scales and "head.convs.0.0.input_quantizer._amax" in scales
    assert not any(k.startswith(tuple(f"{name}." for name in float_layers)) for k in scales)
    assert weights["head.convs.0.0.weight_quantizer._amax"].shape[0] == weights["head.convs.0.0.weight"].shape[0]  # per output channel


def test_the_qdq_onnx_of_a_qat_model_gives_the_labels_of_the_fake_quantized_model(qat_run: Path, tiny_teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "qat.onnx"
    report = to_onnx.main(["--checkpoint", str(qat_run), "--out", str(out), "--dynamic", "batch,height,width", "--data", "synthetic"])
    assert report.passed, report.failures
    graph = onnx.load(str(out))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") >= 10
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["extra"]["quantization"]["qat"] is True
    assert sidecar["parity"]["thresholds"]["min_label_agreement"] == 0.97  # the QAT row, not PTQ INT8's 0.95
    # beside the mIoU of the FP32 student it was trained from, on the same images
    fp32 = evaluate(eager_predictor(tiny_teacher), open_dataset("synthetic", sidecar["data"]), progress=False)
    assert sidecar["extra"]["quantization"]["fp32_student"]["miou"] == pytest.approx(100 * fp32.miou)

    # The fake-quantized PyTorch model, rebuilt from the checkpoint, against the graph in ONNX Runtime
    model, meta = load_model(qat_run)
    reference = DeployModel(model, meta["mean"], meta["std"], "logits")
    images = torch.rand(6, 3, 40, 48)  # another batch and size than the export's (dynamic axes)
    with torch.no_grad():
        expected = reference(images).argmax(1).numpy()
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    assert np.mean(logits.argmax(1) == expected) >= 0.995


def test_a_killed_qat_run_resumes_bit_for_bit(tiny_teacher: Path, tmp_path: Path) -> None:
    args = [*qat_args(tiny_teacher), "train.iterations=9", "train.checkpoint_interval=3", "train.eval_interval=9"]
    reference = tmp_path / "reference"
    done = run_python(["-m", "segdistill.train", *args, f"output_dir={reference}"])
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    kill_training_after(args, killed)

    resumed = run_python(["-m", "segdistill.train", *args, f"output_dir={killed}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    a = load_file(reference / "final/model.safetensors")
    b = load_file(killed / "final/model.safetensors")
    assert a.keys() == b.keys() and any(k.endswith("_amax") for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# ---- bad inputs: one message each --------------------------------------------------------------


def test_qat_without_an_fp32_starting_checkpoint_is_one_message(tmp_path: Path) -> None:
    done = run_python(["-m", "segdistill.train", *TINY, "quantization.calibration_images=4", f"output_dir={tmp_path}"])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: config key 'quantization'")
    assert "model.init_from" in done.stderr


def test_a_model_with_no_quantizable_layer_is_refused(tiny_teacher: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'quantization': the model has no quantizable layer"):
        train([*qat_args(tiny_teacher), "quantization.keep_float=['*']", f"output_dir={tmp_path}"])


def test_a_qat_checkpoint_is_not_a_starting_point_for_qat(qat_run: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="'model.init_from'.*trained with quantization"):
        train([*qat_args(qat_run), f"output_dir={tmp_path}"])


def test_the_onnx_of_a_qat_checkpoint_is_not_quantized_again(qat_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "qat.onnx"
    assert to_onnx.main(["--checkpoint", str(qat_run), "--out", str(out)]).passed
    with pytest.raises(ArtifactError, match="already INT8.*trained with quantization"):
        to_int8.main(["--onnx", str(out), "--data", "synthetic"])
    with pytest.raises(ConfigError, match="--precision fp16.*trained with quantization"):
        to_onnx.main(["--checkpoint", str(qat_run), "--precision", "fp16", "--out", str(tmp_path / "fp16.onnx")])
