"""The multi-scale decoders (lraspp, segformer, fpn, uper): logits at their stride, the fused decoder
feature as ``head``, the auxiliary head on c3, gradients, training through distill/train.py, and a
feature loss between two different decoders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segdistill.checkpoint import load_model
from segdistill.config import ModelConfig
from segdistill.errors import ConfigError
from segdistill.models import FEATURE_NAMES, build_model, check_model_config
from segdistill.train import main
from tests.helpers import TINY, run_python

B, K, SIZE = 2, 5, 32
DECODERS = {"lraspp": 8, "segformer": 4, "fpn": 4, "uper": 4}  # head -> stride of its logits and feature


@pytest.mark.parametrize("output_stride", [8, 32])
@pytest.mark.parametrize("head", list(DECODERS))
def test_decoder_shapes_aux_head_and_gradients(head: str, output_stride: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="lcnet_050", head=head, head_channels=16, output_stride=output_stride), K)
    out = model(torch.randn(B, 3, SIZE, SIZE))
    side = SIZE // DECODERS[head]
    assert out.logits.shape == (B, K, side, side)
    assert tuple(out.features) == FEATURE_NAMES
    assert out.features["head"].shape == (B, 16, side, side)
    c3_side = SIZE // min(16, output_stride)
    assert out.aux_logits is not None and out.aux_logits.shape == (B, K, c3_side, c3_side)

    (out.logits.sum() + out.aux_logits.sum()).backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def test_decoders_take_their_channels_from_the_backbone() -> None:
    """resnet10t's stages have other widths than lcnet_050's; nothing in the heads is hand-typed."""
    for backbone in ("lcnet_050", "resnet10t"):
        model = build_model(ModelConfig(backbone=backbone, head="uper", head_channels=8, output_stride=32), K)
        lateral_inputs = [lateral[0].in_channels for lateral in model.head.laterals]
        assert lateral_inputs == model.backbone.channels[:3], backbone
        assert model.head.stages[0][0].in_channels == model.backbone.channels[3]


@pytest.mark.parametrize("head", ["segformer", "fpn"])
def test_decoder_trains_two_steps(head: str, tmp_path: Path) -> None:
    result = main([*TINY, f"model.head={head}", "train.iterations=2", f"output_dir={tmp_path}"])
    assert 0.0 <= result["miou"] <= 1.0
    model, meta = load_model(tmp_path / "final")
    assert meta["model"]["head"] == head and model.head.multi_scale


def test_cwd_on_head_between_two_different_decoders(tmp_path: Path) -> None:
    """An UPerNet teacher (stride 4) distils into an LR-ASPP student (stride 8) through CWD on 'head': the
    connector adapts the channels (16 -> 24) and the spatial size."""
    teacher = tmp_path / "teacher"
    main([*TINY, "model.head=uper", "model.head_channels=24", "train.iterations=2", f"output_dir={teacher}"])
    student = tmp_path / "student"
    losses = "losses=[{name: cwd, student: head, teacher: head, weight: 1.0}]"
    result = main([*TINY, "model.head=lraspp", "train.iterations=2", f"teacher.checkpoint={teacher / 'final'}", losses, f"output_dir={student}"])
    assert 0.0 <= result["miou"] <= 1.0
    meta = json.loads((student / "final/model.json").read_text())
    assert meta["losses"] == ["cwd"] and meta["model"]["head"] == "lraspp"


def test_unknown_head_names_the_decoders() -> None:
    with pytest.raises(ConfigError) as info:
        check_model_config(ModelConfig(backbone="lcnet_050", head="upernet"))
    assert "model.head" in str(info.value) and all(name in str(info.value) for name in DECODERS)


def test_lraspp_on_a_backbone_without_a_stride_8_stage_is_a_config_error(tmp_path: Path) -> None:
    """A ViT's stages are all at stride 16: one message, exit status 2, no traceback."""
    result = run_python(["distill/train.py", *TINY, "model.backbone=vit_tiny_patch16_224", "model.output_stride=32", "model.head=lraspp", f"output_dir={tmp_path}"])
    assert result.returncode == 2, result.stderr
    assert "error: config key 'model.head': lraspp needs a backbone stage at stride 8" in result.stderr
    assert "[16, 16, 16, 16]" in result.stderr and "Traceback" not in result.stderr
