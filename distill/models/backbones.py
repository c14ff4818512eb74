"""Backbones that return the last four stages (c1..c4), NCHW, at output stride 8, 16 or 32.

``output_stride=None`` means "8 where the backbone can dilate, else its native 32" (timm's
transformers and hybrids such as pvt_v2, efficientvit, fastvit, repvit and swin take no
``output_stride``); an explicit stride a model cannot give is a :class:`ConfigError`.

* timm, any name with ``features_only`` support (``resnet18``, ``mobilenetv2_100``, ...). ImageNet
  weights come from timm's hub when ``pretrained="hub"``, or from a local file (``pretrained=PATH``,
  loaded through timm's ``pretrained_cfg_overlay=dict(file=...)``).
* torchvision ResNets with dilation, named ``torchvision:resnet50`` etc. (``pretrained="hub"`` uses
  torchvision's ImageNet weights; a path loads a state dict with ``weights_only=True``).
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from segdistill.errors import ConfigError, unknown_choice
from segdistill.safe_load import LOAD_ERRORS, UnreadableTensors, load_tensors, refusal_reason

TORCHVISION_PREFIX = "torchvision:"
TORCHVISION_RESNETS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
    "wide_resnet50_2", "wide_resnet101_2",
)  # fmt: skip
BASIC_BLOCK_RESNETS = ("resnet18", "resnet34")
STRIDES = (8, 16, 32)
# timm families that need their input in whole windows/patches: the kwargs that free the input size,
# and the multiple the input is padded to inside the backbone (features are cropped back).
FIXED_SIZE_FAMILIES = {"swin": ({"dynamic_img_size": True}, 32)}


def fixed_size_family(name: str) -> tuple[dict, int]:
    family = next((f for f in FIXED_SIZE_FAMILIES if name.startswith(f)), None)
    return FIXED_SIZE_FAMILIES[family] if family else ({}, 1)


class Backbone(nn.Module):
    """``forward(x)`` returns ``[c1, c2, c3, c4]``; ``channels`` and ``strides`` describe them."""

    channels: list[int]
    strides: list[int]


class TimmBackbone(Backbone):
    def __init__(self, name: str, output_stride: int, pretrained: str | None, extra: dict | None = None) -> None:
        super().__init__()
        size_kwargs, self.pad_multiple = fixed_size_family(name)
        kwargs: dict = {**size_kwargs, **(extra or {}), "features_only": True, "out_indices": (-4, -3, -2, -1)}
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        if pretrained == "hub":
            kwargs["pretrained"] = True
        elif pretrained is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained)})
        try:
            self.body = timm.create_model(name, **kwargs)
        except TypeError as err:  # a keyword of model.backbone_kwargs that this model's constructor lacks
            if not extra or "unexpected keyword argument" not in str(err):
                raise
            raise ConfigError(f"model.backbone_kwargs {extra!r}: timm's {name} does not take them ({err})") from None
        except LOAD_ERRORS as err:
            if pretrained in (None, "hub"):
                raise
            raise ConfigError(f"backbone weights file {pretrained!r} could not be loaded into {name}: {refusal_reason(err)}") from None
        self.channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        self.channels_last = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        height, width = x.shape[-2:]
        if self.pad_multiple > 1:
            x = F.pad(x, (0, -width % self.pad_multiple, 0, -height % self.pad_multiple))
        feats = [f.permute(0, 3, 1, 2) if self.channels_last else f for f in self.body(x)]
        if self.pad_multiple == 1:
            return feats
        # Crop each stage back to what the unpadded input gives (ceil(size / stride), as CNNs do).
        return [f[..., : -(-height // s), : -(-width // s)] for f, s in zip(feats, self.strides, strict=True)]


class TorchvisionResNet(Backbone):
    def __init__(self, name: str, output_stride: int, pretrained: str | None) -> None:
        super().__init__()
        dilate = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]
        weights = "DEFAULT" if pretrained == "hub" else None
        net = getattr(torchvision.models, name)(weights=weights, replace_stride_with_dilation=dilate)
        if pretrained not in (None, "hub"):
            try:
                state = load_tensors(pretrained)
            except UnreadableTensors as err:
                raise ConfigError(f"backbone weights file {pretrained!r} could not be read: {err}") from None
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise ConfigError(
                    f"weights file {pretrained!r} does not fit torchvision {name}: "
                    f"missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        expansion = 1 if name in BASIC_BLOCK_RESNETS else 4
        self.channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        self.strides = [4, 8, min(16, output_stride), min(32, output_stride)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, x = [], self.stem(x)
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


@functools.cache
def timm_strides(name: str) -> tuple[int, ...]:
    """The output strides timm can build ``name`` at (on the meta device: no memory, no weights)."""
    size_kwargs = fixed_size_family(name)[0]
    supported = []
    for stride in STRIDES:
        kwargs = {} if stride == 32 else {"output_stride": stride}
        try:
            with torch.device("meta"):
                timm.create_model(name, features_only=True, out_indices=(-4, -3, -2, -1), **size_kwargs, **kwargs)
        except (TypeError, ValueError, AssertionError, NotImplementedError):
            continue
        supported.append(stride)
    return tuple(supported)


def backbone_strides(name: str) -> tuple[int, ...]:
    if name.startswith(TORCHVISION_PREFIX):
        return (32,) if name[len(TORCHVISION_PREFIX) :] in BASIC_BLOCK_RESNETS else STRIDES
    return timm_strides(name.split(".")[0])


def resolve_output_stride(name: str, output_stride: int | None) -> int:
    """``None``: 8 where the backbone can dilate, else its native 32."""
    if output_stride is not None:
        return output_stride
    return 8 if 8 in backbone_strides(name) else 32


def check_backbone(name: str, output_stride: int | None, pretrained: str | None, where: str) -> None:
    if name.startswith(TORCHVISION_PREFIX):
        short = name[len(TORCHVISION_PREFIX) :]
        if short not in TORCHVISION_RESNETS:
            raise unknown_choice("torchvision backbone", name, [TORCHVISION_PREFIX + n for n in TORCHVISION_RESNETS], f"{where}.backbone")
        if short in BASIC_BLOCK_RESNETS and output_stride not in (None, 32):
            raise ConfigError(
                f"{where}: torchvision's {short} cannot be dilated (BasicBlock); use output_stride 32 "
                f"or the timm backbone {short!r}, which can"
            )
    elif name.split(".")[0] not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"unknown backbone {name!r} (at {where}.backbone).{hint} Valid choices: any of the "
            f"{len(timm.list_models())} names of timm.list_models(), or "
            + ", ".join(TORCHVISION_PREFIX + n for n in TORCHVISION_RESNETS)
        )
    elif output_stride is not None and output_stride not in backbone_strides(name):
        supported = backbone_strides(name)
        raise ConfigError(
            f"config key '{where}.output_stride': backbone {name!r} cannot give output stride {output_stride} "
            f"(it cannot dilate); it supports {', '.join(map(str, supported))} or null (its native stride)"
        )
    if pretrained not in (None, "hub") and not Path(pretrained).is_file():
        raise ConfigError(f"config key '{where}.pretrained': weights file {pretrained!r} does not exist")


def build_backbone(name: str, output_stride: int | None, pretrained: str | None, extra: dict | None = None) -> Backbone:
    """``extra``: keyword arguments for ``timm.create_model`` (lists become tuples)."""
    output_stride = resolve_output_stride(name, output_stride)
    if name.startswith(TORCHVISION_PREFIX):
        if extra:
            raise ConfigError(f"model.backbone_kwargs are passed to timm; torchvision backbone {name!r} takes none")
        return TorchvisionResNet(name[len(TORCHVISION_PREFIX) :], output_stride, pretrained)
    extra = {k: tuple(v) if isinstance(v, list) else v for k, v in (extra or {}).items()}
    return TimmBackbone(name, output_stride, pretrained, extra)
