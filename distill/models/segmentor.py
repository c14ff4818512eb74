"""Backbone + decode head (+ optional auxiliary FCN head on c3), returning :class:`SegOutput`."""

from __future__ import annotations

import torch
from torch import nn

from segdistill.models.backbones import Backbone
from segdistill.models.heads import DecodeHead, FCNHead
from segdistill.models.output import SegOutput


class Segmentor(nn.Module):
    def __init__(self, backbone: Backbone, head: DecodeHead, aux_head: DecodeHead | None = None) -> None:
        super().__init__()
        self.backbone, self.head, self.aux_head = backbone, head, aux_head

    def forward(self, images: torch.Tensor) -> SegOutput:
        stages = self.backbone(images)
        c1, c2, c3, c4 = stages
        head_feature, logits = self.head(stages if self.head.multi_scale else c4)
        aux_logits = self.aux_head(c3)[1] if self.aux_head is not None else None
        return SegOutput(logits, aux_logits, {"c1": c1, "c2": c2, "c3": c3, "c4": c4, "head": head_feature})


def aux_fcn_head(in_channels: int, channels: int, num_classes: int, dropout: float) -> FCNHead:
    return FCNHead(in_channels, channels, num_classes, dropout, num_convs=1)
