"""Every timm backbone of the documented list, random weights: builds with each multi-scale decoder at its
native strides, trains (forward + backward) at an odd input size, and exports to ONNX with parity; an
output stride a model cannot give, or a size it cannot take, ends in one message or is padded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from segdistill.config import ModelConfig
from segdistill.errors import ConfigError
from segdistill.export import to_onnx
from segdistill.models import build_model
from tests.helpers import TINY, run_python
from tests.test_export import PARITY, save_student

CNNS = ["resnet18", "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv4_conv_small", "convnext_atto"]
NATIVE_ONLY = ["efficientvit_b0", "fastvit_t8", "repvit_m1_0", "pvt_v2_b0", "swin_tiny_patch4_window7_224"]
HEAD_STAGE = {"lraspp": "c2", "segformer": "c1", "fpn": "c1", "uper": "c1"}  # logits at its stride (8 or 4)
ODD = (70, 90)  # not a multiple of 32, nor of swin's patches and windows
K = 5


@pytest.mark.parametrize("backbone", CNNS + NATIVE_ONLY)
def test_backbone_trains_with_every_decoder_at_an_odd_size(backbone: str) -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, *ODD)
    for head, stage in HEAD_STAGE.items():
        model = build_model(ModelConfig(backbone=backbone, head=head, head_channels=16, aux_head=False), K)
        # Default output stride: dilated to 8 where timm can, else the model's native strides.
        assert model.backbone.strides == ([4, 8, 8, 8] if backbone in CNNS else [4, 8, 16, 32])
        out = model(images)
        for name, s in zip(("c1", "c2", "c3", "c4"), model.backbone.strides, strict=True):
            # ceil(size / stride), or floor where the model's convolutions do not pad (ConvNeXt's stem).
            assert out.features[name].shape[-2:] in {(-(-ODD[0] // s), -(-ODD[1] // s)), (ODD[0] // s, ODD[1] // s)}, (backbone, name)
        assert out.logits.shape == (2, K, *out.features[stage].shape[-2:]), (backbone, head)
        out.logits.square().mean().backward()
        assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad), (backbone, head)


SWIN = "swin_tiny_patch4_window7_224"


@pytest.mark.parametrize("backbone", CNNS + NATIVE_ONLY)
def test_backbone_exports_to_onnx_with_parity(tmp_path: Path, backbone: str) -> None:
    """Free batch, height and width; swin, padded inside to whole windows, free batch only (docs/models.md)."""
    if backbone != "efficientvit_b0" and not os.environ.get("SEGDISTILL_EXPORT_ALL"):
        pytest.skip("20 s to 3 min each here: the suite exports efficientvit_b0 (and pvt_v2_b0 below), SEGDISTILL_EXPORT_ALL=1 every backbone")
    checkpoint = save_student(tmp_path, "segformer", seed=3, backbone=backbone, output_stride=None)
    out = tmp_path / "model.onnx"
    dynamic = "batch" if backbone == SWIN else "batch,height,width"
    report = to_onnx.main(["--checkpoint", str(checkpoint), "--dynamic", dynamic, "--out", str(out), *PARITY])
    assert report.passed, report.table()
    assert len({c.shape for c in report.checks}) >= (2 if backbone == SWIN else 3)


def test_swin_with_free_height_or_width_is_refused_with_one_message(tmp_path: Path, capsys) -> None:
    """Refused from the checkpoint's metadata, before the model is built: its weights file, cut short here, is
    never read."""
    checkpoint = save_student(tmp_path, "segformer", seed=3, backbone=SWIN, output_stride=None)
    (weights,) = checkpoint.glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    out = tmp_path / "model.onnx"
    assert to_onnx.cli(["--checkpoint", str(checkpoint), "--dynamic", "batch,width", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --dynamic width: model '{SWIN}' + 'segformer' pads its input to whole 32-pixel windows inside the model, which no "
        "ONNX exporter keeps dynamic; export it with --dynamic batch at the --shape you deploy (one graph per size)"
    ]
    assert not out.exists()


def test_a_model_torch_export_cannot_trace_dynamically_goes_through_the_torchscript_exporter(tmp_path: Path, capsys) -> None:
    """PVTv2's reshapes defeat torch.export's symbolic shapes (height and width free): a note names the model and
    the reason, the TorchScript-based exporter traces it, the sidecar says so and the gate passes at other shapes."""
    checkpoint = save_student(tmp_path, "segformer", seed=3, backbone="pvt_v2_b0", output_stride=None)
    out = tmp_path / "model.onnx"
    report = to_onnx.main(["--checkpoint", str(checkpoint), "--dynamic", "batch,height,width", "--out", str(out), *PARITY])
    note = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("note:"))
    assert note.startswith("note: torch.export cannot trace model 'pvt_v2_b0' + 'segformer' with dynamic batch, height, width (")
    assert note.endswith("; trying the TorchScript-based exporter")
    assert json.loads(out.with_name("model.onnx.json").read_text())["extra"]["exporter"] == "torch.onnx.export(dynamo=False)"
    assert report.passed, report.table()
    assert len({tuple(c.shape.split("x")[2:]) for c in report.checks}) >= 3


@pytest.mark.parametrize("backbone", NATIVE_ONLY)
def test_a_stride_the_model_cannot_give_is_refused_before_building(backbone: str) -> None:
    with pytest.raises(ConfigError, match=rf"'model.output_stride': backbone '{backbone}' cannot give output stride 8 .*supports 32 or null"):
        build_model(ModelConfig(backbone=backbone, head="fpn", output_stride=8), K)


def test_train_names_the_key_model_and_supported_strides(tmp_path: Path) -> None:
    result = run_python(["distill/train.py", *TINY, "model.backbone=pvt_v2_b0", "model.output_stride=16", f"output_dir={tmp_path}"])
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: config key 'model.output_stride': backbone 'pvt_v2_b0' cannot give output stride 16 (it cannot dilate); "
        "it supports 32 or null (its native stride)"
    ]
    assert not (tmp_path / "final").exists()


def test_swin_pads_to_whole_windows_and_crops_back() -> None:
    """Swin takes its input in whole 32-pixel blocks (patches merged three times): an odd size is padded
    inside the backbone and each stage cropped back to ceil(size / stride), as a CNN gives it."""
    torch.manual_seed(0)
    backbone = build_model(ModelConfig(backbone=SWIN, head="fcn", aux_head=False), K).backbone.eval()
    image = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        stages, padded = backbone(image), backbone(torch.nn.functional.pad(image, (0, 64 - 47, 0, 64 - 33)))
    for stage, reference, stride in zip(stages, padded, backbone.strides, strict=True):
        size = (-(-33 // stride), -(-47 // stride))
        assert stage.shape[-2:] == size
        torch.testing.assert_close(stage, reference[..., : size[0], : size[1]])
