"""Models: every head at every output stride returns SegOutput with the documented shapes; gradients
reach every parameter; torchvision backbones and models; local pretrained files; checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from segdistill.checkpoint import CheckpointError, load_model, load_weights, save_model
from segdistill.config import ModelConfig, config_to_dict
from segdistill.data import DatasetInfo
from segdistill.data.base import default_palette
from segdistill.errors import ConfigError
from segdistill.models import FEATURE_NAMES, SegOutput, build_model, check_model_config

B, K, SIZE = 2, 5, 32
WEIGHTS = (
    Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "mobilenetv2_100.imagenet.safetensors"
)


def tiny(**kwargs) -> ModelConfig:
    return ModelConfig(**{"backbone": "lcnet_050", "head_channels": 16, "pretrained": None, **kwargs})


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("head", ["psp", "aspp", "fcn"])
def test_heads_shapes_and_gradients(head: str, output_stride: int) -> None:
    cfg = tiny(head=head, output_stride=output_stride)
    model = build_model(cfg, K)
    images = torch.randn(B, 3, SIZE, SIZE)
    out = model(images)
    assert isinstance(out, SegOutput)
    side = SIZE // output_stride
    assert out.logits.shape == (B, K, side, side)
    assert out.aux_logits is not None
    assert out.aux_logits.shape == (B, K, side, side)  # aux head on c3, same stride as c4 when dilated
    assert tuple(out.features) == FEATURE_NAMES
    channels = model.backbone.channels
    strides = [4, 8, min(16, output_stride), output_stride]
    for i, name in enumerate(("c1", "c2", "c3", "c4")):
        assert out.features[name].shape == (B, channels[i], SIZE // strides[i], SIZE // strides[i]), name
    assert out.features["head"].shape == (B, 16, side, side)

    (out.logits.sum() + out.aux_logits.sum()).backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    zero_grad = [
        name for name, p in model.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0
    ]
    # a parameter may have an exactly zero gradient by chance (ReLU), but not whole modules
    assert len(zero_grad) < len(list(model.parameters())) // 4


def test_without_aux_head() -> None:
    model = build_model(tiny(head="fcn", aux_head=False), K)
    out = model(torch.randn(B, 3, SIZE, SIZE))
    assert out.aux_logits is None
    assert "aux_logits" not in out.names()
    assert not any(name.startswith("aux_head") for name, _ in model.named_parameters())
    with pytest.raises(KeyError, match="aux"):
        out.tensor("aux_logits")
    out.logits.sum().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def test_resnet18_timm_backbone_channels() -> None:
    model = build_model(tiny(backbone="resnet18", head="psp", output_stride=8), K)
    assert model.backbone.channels == [64, 128, 256, 512]
    out = model(torch.randn(B, 3, SIZE, SIZE))
    assert out.features["c4"].shape == (B, 512, SIZE // 8, SIZE // 8)
    assert out.logits.shape == (B, K, SIZE // 8, SIZE // 8)


def test_torchvision_resnet50_os8() -> None:
    model = build_model(tiny(backbone="torchvision:resnet50", head="fcn", output_stride=8), K)
    assert model.backbone.channels == [256, 512, 1024, 2048]
    out = model(torch.randn(B, 3, SIZE, SIZE))
    assert out.logits.shape == (B, K, SIZE // 8, SIZE // 8)
    expected = {"c1": (256, 4), "c2": (512, 8), "c3": (1024, 8), "c4": (2048, 8)}
    for name, (channels, stride) in expected.items():
        assert out.features[name].shape == (B, channels, SIZE // stride, SIZE // stride), name


def test_backbone_kwargs_the_model_does_not_take() -> None:
    cfg = ModelConfig(backbone="lcnet_050", backbone_kwargs={"channels": [8, 16, 32, 64]}, head="fcn", head_channels=8)
    with pytest.raises(ConfigError, match=r"model.backbone_kwargs \{'channels': \(8, 16, 32, 64\)\}: timm's lcnet_050 does not take them.*channels"):
        build_model(cfg, 3)


def test_torchvision_resnet18_cannot_dilate() -> None:
    with pytest.raises(ConfigError, match="BasicBlock") as info:
        check_model_config(tiny(backbone="torchvision:resnet18", output_stride=8))
    assert "resnet18" in str(info.value)
    assert "output_stride" in str(info.value)


@pytest.mark.parametrize(("name", "head_channels"), [("fcn_resnet50", 512), ("deeplabv3_resnet50", 256)])
def test_torchvision_segmentor_named_features(name: str, head_channels: int) -> None:
    model = build_model(ModelConfig(torchvision_model=name, pretrained=None), K).eval()
    images = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model(images)
        reference = model.net(images)  # torchvision's own forward (upsampled to the input)
    assert tuple(out.features) == FEATURE_NAMES
    expected = {"c1": 256, "c2": 512, "c3": 1024, "c4": 2048, "head": head_channels}
    for name, channels in expected.items():
        assert out.features[name].shape[:2] == (1, channels), name
    assert out.logits.shape == (1, K, SIZE // 8, SIZE // 8)
    assert out.aux_logits is not None and out.aux_logits.shape == (1, K, SIZE // 8, SIZE // 8)
    upsampled = F.interpolate(out.logits, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsampled, reference["out"])
    upsampled_aux = F.interpolate(out.aux_logits, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsampled_aux, reference["aux"])


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"local ImageNet weights not found at {WEIGHTS}")
def test_local_pretrained_file_is_loaded() -> None:
    model = build_model(
        tiny(backbone="mobilenetv2_100", head="fcn", output_stride=16, pretrained=str(WEIGHTS)), K
    )
    reference = load_file(str(WEIGHTS))
    own = model.backbone.body.state_dict()
    checked = 0
    for key in ("conv_stem.weight", "bn1.running_mean", "blocks.1.0.conv_dw.weight"):
        assert key in reference and key in own, key
        torch.testing.assert_close(own[key], reference[key], rtol=0, atol=0)
        checked += 1
    assert checked == 3
    # and a random init differs from the file (so the comparison above is meaningful)
    random_model = build_model(tiny(backbone="mobilenetv2_100", head="fcn", output_stride=16), K)
    assert not torch.equal(
        random_model.backbone.body.state_dict()["conv_stem.weight"], reference["conv_stem.weight"]
    )


# ----------------------------------------------------------------------------------------------------
# Checkpoints

INFO = DatasetInfo("synthetic", tuple(f"class{i}" for i in range(K)), default_palette(K), 255)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    cfg = tiny(head="psp", output_stride=8)
    model = build_model(cfg, K)
    # move BN statistics and weights away from their init so the comparison is meaningful
    model.train()
    model(torch.randn(B, 3, SIZE, SIZE))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    save_model(model, tmp_path / "ckpt", cfg, INFO, {"step": 3})
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    meta = json.loads((tmp_path / "ckpt" / "model.json").read_text())
    assert meta["model"] == config_to_dict(cfg)
    assert meta["num_classes"] == K and meta["step"] == 3

    loaded, loaded_meta = load_model(tmp_path / "ckpt")
    loaded.eval()
    assert loaded_meta["classes"] == list(INFO.classes)
    images = torch.randn(B, 3, SIZE, SIZE)
    with torch.no_grad():
        a, b = model(images), loaded(images)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.aux_logits, b.aux_logits)
    for name in FEATURE_NAMES:
        assert torch.equal(a.features[name], b.features[name]), name


def test_load_weights_into_other_architecture(tmp_path: Path) -> None:
    cfg = tiny(head="psp")
    save_model(build_model(cfg, K), tmp_path / "ckpt", cfg, INFO, {})
    other = build_model(tiny(head="fcn"), K)
    weights = tmp_path / "ckpt" / "model.safetensors"
    with pytest.raises(CheckpointError) as info:
        load_weights(other, weights)
    message = str(info.value)
    assert str(weights) in message
    assert "missing keys" in message and "unexpected keys" in message
    assert "head.stages" in message or "head.bottleneck" in message  # a PSP key the FCN model lacks
    assert "head.convs" in message  # an FCN key the PSP file lacks


def test_load_weights_wrong_class_count(tmp_path: Path) -> None:
    cfg = tiny(head="fcn")
    save_model(build_model(cfg, K), tmp_path / "ckpt", cfg, INFO, {})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_weights(build_model(cfg, K + 1), tmp_path / "ckpt" / "model.safetensors")


def test_corrupt_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"this is not a safetensors file" * 10)
    with pytest.raises(CheckpointError) as info:
        load_weights(build_model(tiny(head="fcn"), K), path)
    assert str(path) in str(info.value)


def test_missing_model_json(tmp_path: Path) -> None:
    cfg = tiny(head="fcn")
    save_model(build_model(cfg, K), tmp_path / "ckpt", cfg, INFO, {})
    (tmp_path / "ckpt" / "model.json").unlink()
    with pytest.raises(CheckpointError, match="model.json"):
        load_model(tmp_path / "ckpt")


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(build_model(tiny(head="fcn"), K), tmp_path / "absent.safetensors")
