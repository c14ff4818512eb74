"""The task loss: cross-entropy with the ignore index on the logits upsampled to the label size,
plus ``aux_weight`` times the same on the auxiliary head's logits (0.4, as in PSPNet). With ``class_weight``,
each pixel's term is weighted by its class and the mean is over the weights (PyTorch's weighted mean)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segdistill.models import SegOutput


def upsample_to(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if logits.shape[-2:] == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class TaskLoss(nn.Module):
    def __init__(self, ignore_index: int, aux_weight: float = 0.4, class_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.ignore_index, self.aux_weight = ignore_index, aux_weight
        self.register_buffer("class_weight", class_weight, persistent=False)  # moves with .to(device), not saved

    def ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        resized = upsample_to(logits, labels.shape[-2:])
        return F.cross_entropy(resized, labels, weight=self.class_weight, ignore_index=self.ignore_index)

    def forward(self, output: SegOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = {"ce": self.ce(output.logits, labels)}
        if output.aux_logits is not None and self.aux_weight > 0:
            parts["aux_ce"] = self.aux_weight * self.ce(output.aux_logits, labels)
        return parts
