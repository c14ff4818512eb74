"""Label maps brought to another size: the one nearest-neighbour resizer of the project (losses reading labels
at a feature's size, deploy and export scoring predictions at the label's size)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_labels(labels: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """(B, H, W) integer labels as int64 at ``size`` with PyTorch's legacy ``nearest`` mode,
    ``lab[floor(i*H/h), floor(j*W/w)]``, as every official loss that reads labels does (docs/loss_math.md §14)."""
    if labels.shape[-2:] == tuple(size):
        return labels.long()
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()
