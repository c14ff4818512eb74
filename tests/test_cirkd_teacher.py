"""CIRKD teachers: a checkpoint with CIRKD's key layout (built here by a small re-statement of CIRKD's
ResNet-v1s + DeepLabV3 / PSPNet, fed BGR 0..255 minus the mean as CIRKD feeds it) converts into our
model, which then gives the same logits from our RGB pipeline; a checkpoint that does not fit is refused
with the keys that differ."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segdistill.checkpoint import load_model
from segdistill.config import DataConfig, TeacherConfig
from segdistill.convert_cirkd import CIRKD_MEAN_BGR, convert, detect
from segdistill.data import DatasetInfo
from segdistill.data.cityscapes import CLASSES, IGNORE_INDEX, PALETTE
from segdistill.errors import ConfigError
from segdistill.teacher import build_teacher

IMAGENET = DataConfig()


def cbr(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Basic(nn.Module):
    """CIRKD's BasicBlockV1b: conv1 at ``dilation``, conv2 at ``previous_dilation``."""

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, previous: int, down: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, previous, previous, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)) if down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class CirkdResNet18V1s(nn.Module):
    """Deep stem 64-64-128, layers of 2 blocks, layer3 dilated 2 and layer4 dilated 4 (output stride 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64)
        self.conv3, self.bn3 = nn.Conv2d(64, 128, 3, 1, 1, bias=False), nn.BatchNorm2d(128)
        # (planes, stride, dilation of the first block's conv1, dilation of the stage)
        stages = [(64, 1, 1, 1), (128, 2, 1, 1), (256, 1, 1, 2), (512, 1, 2, 4)]
        cin = 128
        for i, (planes, stride, first, dilation) in enumerate(stages, 1):
            blocks = [Basic(cin, planes, stride, first, dilation, down=stride != 1 or cin != planes), Basic(planes, planes, 1, dilation, dilation, False)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = planes

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 3, 2, 1)
        feats = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats


class AsppConv(nn.Module):
    def __init__(self, cin: int, cout: int, rate: int) -> None:
        super().__init__()
        self.block = cbr(cin, cout, 3, rate)


class AsppPooling(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Aspp(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.b0 = cbr(cin, cout, 1)
        self.b1, self.b2, self.b3 = AsppConv(cin, cout, 12), AsppConv(cin, cout, 24), AsppConv(cin, cout, 36)
        self.b4 = AsppPooling(cin, cout)
        self.project = nn.Sequential(*cbr(5 * cout, cout, 1), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.b4.gap(x), x.shape[-2:], mode="bilinear", align_corners=True)
        return self.project(torch.cat([self.b0(x), self.b1.block(x), self.b2.block(x), self.b3.block(x), pooled], 1))


class DeepLabHead(nn.Module):
    def __init__(self, cin: int, width: int, classes: int) -> None:
        super().__init__()
        self.aspp = Aspp(cin, width)
        self.block = nn.Sequential(*cbr(width, width), nn.Dropout(0.1), nn.Conv2d(width, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.aspp(x))


class PyramidPooling(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        for i in range(1, 5):
            setattr(self, f"conv{i}", cbr(cin, cin // 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(getattr(self, f"conv{i}")(F.adaptive_avg_pool2d(x, b)), size, mode="bilinear", align_corners=True)
                  for i, b in zip(range(1, 5), (1, 2, 3, 6), strict=True)]  # fmt: skip
        return torch.cat([x, *pooled], 1)


class PSPHead(nn.Module):
    def __init__(self, cin: int, width: int, classes: int) -> None:
        super().__init__()
        self.psp = PyramidPooling(cin)
        self.block = nn.Sequential(*cbr(2 * cin, width), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.block(self.psp(x)))


class CirkdSegmentor(nn.Module):
    """CIRKD's attribute names: ``pretrained`` (backbone), ``head``, ``auxlayer`` (FCN on c3, in // 4 wide)."""

    def __init__(self, head: str, width: int, classes: int = 19) -> None:
        super().__init__()
        self.pretrained = CirkdResNet18V1s()
        self.head = DeepLabHead(512, width, classes) if head == "aspp" else PSPHead(512, width, classes)
        self.auxlayer = nn.Module()
        self.auxlayer.block = nn.Sequential(*cbr(256, 64), nn.Dropout(0.1), nn.Conv2d(64, classes, 1))

    def forward(self, bgr_minus_mean: torch.Tensor) -> torch.Tensor:
        return self.head(self.pretrained(bgr_minus_mean)[-1])


def randomised(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that a wrong mapping shows."""
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=gen))
    return model.eval()


@pytest.mark.parametrize(("head", "width"), [("aspp", 128), ("psp", 128)])
def test_converted_cirkd_teacher_gives_the_same_logits(tmp_path, head, width):
    torch.manual_seed(0)
    reference = randomised(CirkdSegmentor(head, width))
    ckpt = tmp_path / "cirkd.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, ckpt)  # a DDP-saved file
    result = convert(ckpt, tmp_path / "ours", "cityscapes")
    assert result["model"].backbone == "resnet18" and result["model"].head == head and result["model"].head_channels == width
    assert result["not_converted"] and all(k.startswith("auxlayer.") for k in result["not_converted"])

    rgb = torch.randint(0, 256, (2, 3, 64, 80), generator=torch.Generator().manual_seed(1)).float()
    with torch.no_grad():
        expected = reference(rgb.flip(1) - torch.tensor(CIRKD_MEAN_BGR).view(1, 3, 1, 1))  # what CIRKD feeds
        info = DatasetInfo("cityscapes", CLASSES, PALETTE, IGNORE_INDEX)
        teacher = build_teacher(TeacherConfig(checkpoint=str(tmp_path / "ours")), info, IMAGENET)  # our pipeline: RGB, ImageNet norm
        ours = teacher((rgb / 255 - torch.tensor(IMAGENET.mean).view(1, 3, 1, 1)) / torch.tensor(IMAGENET.std).view(1, 3, 1, 1))
    assert ours.logits.shape == expected.shape == (2, 19, 8, 10)
    torch.testing.assert_close(ours.logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

    meta = json.loads((tmp_path / "ours" / "model.json").read_text())
    assert meta["data"]["name"] == "cityscapes" and meta["source"]["format"] == "cirkd"
    model, _ = load_model(tmp_path / "ours")  # a plain checkpoint of ours: rebuilt from model.json, loaded strictly
    assert model.head.__class__.__name__ == {"aspp": "ASPPHead", "psp": "PSPHead"}[head]


def test_a_checkpoint_that_does_not_fit_is_refused_with_its_keys(tmp_path):
    state = CirkdSegmentor("aspp", 128).state_dict()
    wrong = dict(state)
    wrong["head.block.0.weight"] = wrong["head.block.0.weight"][:, :64]
    torch.save(wrong, tmp_path / "shape.pth")
    with pytest.raises(ConfigError, match=r"'head.block.0.weight' -> 'head.bottleneck.0.weight': checkpoint \(128, 64, 3, 3\) vs model \(128, 128, 3, 3\)"):
        convert(tmp_path / "shape.pth", tmp_path / "out1")
    missing = {k: v for k, v in state.items() if not k.startswith("pretrained.layer2.1.conv2")}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match=r"model key 'backbone.body.layer2.1.conv2.weight' is not in the checkpoint"):
        convert(tmp_path / "missing.pth", tmp_path / "out2")
    torch.save({**state, "head.extra.weight": torch.zeros(3)}, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match=r"checkpoint key 'head.extra.weight' has no place in the model"):
        convert(tmp_path / "extra.pth", tmp_path / "out3")
    torch.save(state, tmp_path / "classes.pth")
    with pytest.raises(ConfigError, match="predicts 19 classes but dataset 'camvid' has 11"):
        convert(tmp_path / "classes.pth", tmp_path / "out4", "camvid")
    assert not any((tmp_path / f"out{i}").exists() for i in range(1, 5))  # nothing written for a refused file


def test_depth_and_head_width_are_read_from_a_resnet101_layout():
    """CIRKD's released teacher, DeepLabV3-ResNet101 (23 bottleneck blocks in layer3, a 256-wide head)."""
    keys = {"pretrained.conv1.weight": (64, 3, 3, 3), "pretrained.conv2.weight": (64, 64, 3, 3),
            "head.aspp.b0.0.weight": (256, 2048, 1, 1), "head.block.4.weight": (19, 256, 1, 1)}  # fmt: skip
    for layer, blocks in zip(range(1, 5), (3, 4, 23, 3), strict=True):
        for block in range(blocks):
            keys[f"pretrained.layer{layer}.{block}.conv3.weight"] = (1, 1, 1, 1)
    cfg, classes = detect({k: torch.empty(shape, device="meta") for k, shape in keys.items()}, "test")
    assert (cfg.backbone, cfg.backbone_kwargs, cfg.head, cfg.head_channels, classes) == ("resnet101", {"stem_type": "deep", "stem_width": 64}, "aspp", 256, 19)
