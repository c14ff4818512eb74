"""Decode heads. Each maps the backbone stages to (head feature, logits at the c4 stride)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.registry import ConfigError, Registry

HEADS: Registry[Callable[..., DecodeHead]] = Registry("head")


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DecodeHead(nn.Module):
    """``features(c4) -> head feature``; a dropout and a 1x1 classifier turn it into logits."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.channels = channels
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.features(x)
        return feature, self.classifier(self.dropout(feature))


@HEADS.register("fcn")
class FCNHead(DecodeHead):
    """Two 3x3 conv-BN-ReLU blocks (FCN, as in mmsegmentation's FCNHead with num_convs=2)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1, num_convs: int = 2, **_) -> None:
        super().__init__(channels, num_classes, dropout)
        layers = [conv_bn_relu(in_channels if i == 0 else channels, channels) for i in range(num_convs)]
        self.convs = nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


@HEADS.register("psp")
class PSPHead(DecodeHead):
    """Pyramid pooling (bins 1, 2, 3, 6) concatenated with the input, then a 3x3 conv (PSPNet).
    ``align_corners``: how the pooled maps are upsampled (True in CIRKD's PSPNet, whose weights expect it)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        dropout: float = 0.1,
        bins: Sequence[int] = (1, 2, 3, 6),
        align_corners: bool = False,
        **_,
    ) -> None:
        super().__init__(channels, num_classes, dropout)
        reduced = max(in_channels // len(bins), 8)
        self.bins = tuple(bins)
        self.align_corners = align_corners
        self.stages = nn.ModuleList([conv_bn_relu(in_channels, reduced, kernel=1) for _ in bins])
        self.bottleneck = conv_bn_relu(in_channels + reduced * len(bins), channels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(F.adaptive_avg_pool2d(x, b)), size=size, mode="bilinear", align_corners=self.align_corners)
            for b, stage in zip(self.bins, self.stages, strict=True)
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class ImagePooling(nn.Module):
    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(x.mean(dim=(2, 3), keepdim=True))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


@HEADS.register("aspp")
class ASPPHead(DecodeHead):
    """DeepLabV3: atrous spatial pyramid pooling (rates 12/24/36 at stride 8, 6/12/18 at 16, 3/6/9 at
    32) plus image pooling, a 1x1 projection and a 3x3 conv."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1, output_stride: int = 8, **_) -> None:
        super().__init__(channels, num_classes, dropout)
        rates = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}[output_stride]
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels, kernel=1)]
            + [conv_bn_relu(in_channels, channels, dilation=r) for r in rates]
            + [ImagePooling(in_channels, channels)]
        )
        self.project = conv_bn_relu(channels * len(self.branches), channels, kernel=1)
        self.bottleneck = conv_bn_relu(channels, channels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.project(torch.cat([branch(x) for branch in self.branches], dim=1)))


def build_head(
    name: str, in_channels: int, channels: int, num_classes: int, dropout: float, output_stride: int, extra: dict | None = None
) -> DecodeHead:
    """``extra``: the head's own keyword arguments (``model.head_kwargs``); unknown ones are an error."""
    head = HEADS.get(name, "model.head")
    own = set(inspect.signature(head).parameters) - {"in_channels", "channels", "num_classes", "dropout", "output_stride", "_"}
    unknown = sorted(set(extra or {}) - own)
    if unknown:
        raise ConfigError(f"config key 'model.head_kwargs': head {name!r} takes no {unknown}; it takes {sorted(own) or 'none'}")
    return head(
        in_channels=in_channels, channels=channels, num_classes=num_classes, dropout=dropout, output_stride=output_stride, **(extra or {})
    )
