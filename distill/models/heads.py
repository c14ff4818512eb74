"""Decode heads. Each maps the backbone stages to (head feature, logits): the single-scale heads (fcn,
psp, aspp) read c4 and predict at its stride; the multi-scale decoders (lraspp, segformer, fpn, uper)
read c1..c4, with the channels and strides the backbone reports, and predict at stride 8 or 4."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segdistill.errors import ConfigError
from segdistill.registry import Registry

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

    multi_scale = False  # True: ``forward`` takes the list [c1, c2, c3, c4] instead of c4

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
        return self.bottleneck(torch.cat([x, *pyramid_pooling(x, self.bins, self.stages, self.align_corners)], dim=1))


def pyramid_pooling(x: torch.Tensor, bins: Sequence[int], stages: nn.ModuleList, align_corners: bool = False) -> list[torch.Tensor]:
    """PSPNet's pooled maps, each brought back to the size of ``x``. ``F.adaptive_avg_pool2d`` is looked
    up at call time so that export/shape_generic.py can swap in its shape-generic form."""
    size = x.shape[-2:]
    return [
        F.interpolate(stage(F.adaptive_avg_pool2d(x, b)), size=size, mode="bilinear", align_corners=align_corners)
        for b, stage in zip(bins, stages, strict=True)
    ]


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize to the runtime size of ``like`` (a traced size, so dynamic shapes stay dynamic)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


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


class MultiScaleHead(DecodeHead):
    """A decoder over ``[c1, c2, c3, c4]``: ``in_channels`` and ``strides`` are the backbone's four stages."""

    multi_scale = True


@HEADS.register("lraspp")
class LRASPPHead(MultiScaleHead):
    """MobileNetV3's Lite R-ASPP (Howard et al. 2019): a 1x1 conv-BN-ReLU on c4 gated by a sigmoid of a
    1x1 conv of its global average, upsampled to the first stage at stride 8; logits are a classifier on
    that plus a classifier on the stride-8 stage, so they come out at stride 8."""

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], channels: int, num_classes: int, dropout: float = 0.1, **_) -> None:
        super().__init__(channels, num_classes, dropout)
        if 8 not in strides:
            raise ConfigError(f"config key 'model.head': lraspp needs a backbone stage at stride 8; this backbone's are at {list(strides)}")
        self.low = list(strides).index(8)
        self.reduce = conv_bn_relu(in_channels[-1], channels, kernel=1)
        self.gate = nn.Sequential(nn.Conv2d(in_channels[-1], channels, 1, bias=False), nn.Sigmoid())
        self.low_classifier = nn.Conv2d(in_channels[self.low], num_classes, 1)

    def features(self, stages: list[torch.Tensor]) -> torch.Tensor:
        high = stages[-1]
        # the mean, not adaptive pooling: it is the same at every input size in an exported graph
        gated = self.reduce(high) * self.gate(high.mean(dim=(2, 3), keepdim=True))
        return upsample_to(gated, stages[self.low])

    def forward(self, stages: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        feature, logits = super().forward(stages)
        return feature, logits + self.low_classifier(stages[self.low])


@HEADS.register("segformer")
class SegFormerHead(MultiScaleHead):
    """SegFormer's all-MLP decoder (Xie et al. 2021): each stage linearly projected (a 1x1 conv) to
    ``channels``, upsampled to c1 (stride 4), concatenated, fused by a 1x1 conv-BN-ReLU."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int, dropout: float = 0.1, **_) -> None:
        super().__init__(channels, num_classes, dropout)
        self.projections = nn.ModuleList([nn.Conv2d(c, channels, 1) for c in in_channels])
        self.fuse = conv_bn_relu(channels * len(in_channels), channels, kernel=1)

    def features(self, stages: list[torch.Tensor]) -> torch.Tensor:
        projected = [upsample_to(project(x), stages[0]) for project, x in zip(self.projections, stages, strict=True)]
        return self.fuse(torch.cat(projected[::-1], dim=1))  # c4 first, as the paper's code concatenates


@HEADS.register("fpn")
class FPNHead(MultiScaleHead):
    """Semantic FPN (Kirillov et al. 2019): FPN laterals and top-down sums, then per level a chain of 3x3
    conv-BN-ReLU + 2x upsampling down to stride 4 (one conv for c1), summed at c1's size."""

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], channels: int, num_classes: int, dropout: float = 0.1, **_) -> None:
        super().__init__(channels, num_classes, dropout)
        self.laterals = nn.ModuleList([nn.Conv2d(c, channels, 1) for c in in_channels])
        self.outputs = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels])
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            doublings = (stride // strides[0]).bit_length() - 1
            layers: list[nn.Module] = []
            for _ in range(max(1, doublings)):
                layers.append(conv_bn_relu(channels, channels))
                if doublings:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))

    def features(self, stages: list[torch.Tensor]) -> torch.Tensor:
        pyramid = top_down([lateral(x) for lateral, x in zip(self.laterals, stages, strict=True)])
        levels = [head(out(p)) for head, out, p in zip(self.scale_heads, self.outputs, pyramid, strict=True)]
        # 2x steps overshoot odd sizes by a pixel: every level is brought to c1's exact size
        return sum(upsample_to(level, levels[0]) for level in levels[1:]) + levels[0]


def top_down(laterals: list[torch.Tensor]) -> list[torch.Tensor]:
    """FPN's top-down pathway: each level plus the coarser (already summed) level upsampled to it."""
    merged = [laterals[-1]]
    for lateral in reversed(laterals[:-1]):
        merged.insert(0, lateral + upsample_to(merged[0], lateral))
    return merged


@HEADS.register("uper")
class UPerHead(MultiScaleHead):
    """UPerNet (Xiao et al. 2018): pyramid pooling (bins 1, 2, 3, 6) on c4 as the top of an FPN, 3x3
    conv-BN-ReLU on every merged level, all upsampled to c1 (stride 4), concatenated, a 3x3 fuse conv."""

    def __init__(
        self, in_channels: Sequence[int], channels: int, num_classes: int, dropout: float = 0.1, bins: Sequence[int] = (1, 2, 3, 6), **_
    ) -> None:
        super().__init__(channels, num_classes, dropout)
        self.bins = tuple(bins)
        self.stages = nn.ModuleList([conv_bn_relu(in_channels[-1], channels, kernel=1) for _ in bins])
        self.bottleneck = conv_bn_relu(in_channels[-1] + channels * len(bins), channels)
        self.laterals = nn.ModuleList([conv_bn_relu(c, channels, kernel=1) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([conv_bn_relu(channels, channels) for _ in in_channels[:-1]])
        self.fuse = conv_bn_relu(channels * len(in_channels), channels)

    def features(self, stages: list[torch.Tensor]) -> torch.Tensor:
        c4 = stages[-1]
        top = self.bottleneck(torch.cat([c4, *pyramid_pooling(c4, self.bins, self.stages)], dim=1))
        pyramid = top_down([lateral(x) for lateral, x in zip(self.laterals, stages[:-1], strict=True)] + [top])
        levels = [conv(p) for conv, p in zip(self.fpn_convs, pyramid[:-1], strict=True)] + [top]
        return self.fuse(torch.cat([levels[0], *(upsample_to(level, levels[0]) for level in levels[1:])], dim=1))


def build_head(
    name: str,
    in_channels: Sequence[int],
    strides: Sequence[int],
    channels: int,
    num_classes: int,
    dropout: float,
    output_stride: int,
    extra: dict | None = None,
) -> DecodeHead:
    """``in_channels`` and ``strides``: the backbone's c1..c4 (a single-scale head gets c4's channels).
    ``extra``: the head's own keyword arguments (``model.head_kwargs``); unknown ones are an error."""
    head = HEADS.get(name, "model.head")
    given = {"in_channels", "strides", "channels", "num_classes", "dropout", "output_stride", "_"}
    own = set(inspect.signature(head).parameters) - given
    unknown = sorted(set(extra or {}) - own)
    if unknown:
        raise ConfigError(f"config key 'model.head_kwargs': head {name!r} takes no {unknown}; it takes {sorted(own) or 'none'}")
    return head(
        in_channels=list(in_channels) if head.multi_scale else in_channels[-1],
        strides=list(strides),
        channels=channels,
        num_classes=num_classes,
        dropout=dropout,
        output_stride=output_stride,
        **(extra or {}),
    )
