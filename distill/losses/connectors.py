"""What sits between a student tensor and the teacher tensor it is compared with (mmrazor's "connectors"):
a learnable 1x1 channel adapter when the channel counts differ (or always, when a loss's ``always_adapt`` asks
for one), bilinear resizing when the spatial sizes differ, and the build-time shape checks the losses share.

Every loss compares at the teacher's resolution. The student's tensor is resized bilinearly to it, after its
channel adapter (a 1x1 convolution commutes with bilinear resizing, so the order only matters for BN/ReLU).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from segdistill.errors import ConfigError

# "conv": Conv1x1(C_s -> C_t, bias=False) (FitNets regressor; CIRKD's CWD feature adapter).
# "conv_bn_relu": Conv1x1(bias=False) -> BatchNorm -> ReLU (TorchDistiller's CWD feature adapter).
AdapterKind = Literal["conv", "conv_bn_relu"]


def match_size(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The student map resized bilinearly to the teacher's height and width (unchanged if equal)."""
    if student.shape[-2:] == teacher.shape[-2:]:
        return student
    return F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)


def channel_adapter(kind: AdapterKind, student_channels: int, teacher_channels: int, always: bool = False) -> nn.Module:
    """A learnable 1x1 map from the student's channels to the teacher's; the identity if they are equal, unless
    ``always`` (two independently trained networks need not order equal channels alike)."""
    if student_channels == teacher_channels and not always:
        return nn.Identity()
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
    if kind == "conv":
        return conv
    return nn.Sequential(conv, nn.BatchNorm2d(teacher_channels), nn.ReLU(inplace=True))


class StudentConnector(nn.Module):
    """Channel adapter (if the channel counts differ, or ``always``), then resizing to the teacher's spatial size."""

    def __init__(
        self, kind: AdapterKind, student_shape: torch.Size, teacher_shape: torch.Size, always: bool = False
    ) -> None:
        super().__init__()
        require_maps(student_shape, teacher_shape)
        self.adapter = channel_adapter(kind, student_shape[1], teacher_shape[1], always)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return match_size(self.adapter(student), teacher)


def require_maps(student_shape: torch.Size, teacher_shape: torch.Size) -> None:
    """Both bound tensors must be (B, C, H, W) maps."""
    for side, shape in (("student", student_shape), ("teacher", teacher_shape)):
        if len(shape) != 4:
            raise ConfigError(f"the {side} tensor must be a (B, C, H, W) map, got shape {tuple(shape)}")


def require_same_channels(student_shape: torch.Size, teacher_shape: torch.Size, why: str) -> None:
    """For losses that compare channel c of the student with channel c of the teacher (logits: classes)."""
    require_maps(student_shape, teacher_shape)
    if student_shape[1] != teacher_shape[1]:
        raise ConfigError(
            f"the student and the teacher tensors must have the same number of channels ({why}); "
            f"got {student_shape[1]} and {teacher_shape[1]}"
        )


def require_positive(value: float, key: str) -> None:
    """Checked when the config is read, so a bad hyper-parameter stops before anything is built."""
    if not value > 0:
        raise ConfigError(f"loss parameter {key!r} must be positive, got {value!r}")
