"""CWD, channel-wise distillation (docs/loss_math.md §2), on logits or on features.

Each channel map of each sample is softmax-normalised over its H*W positions, and

    L_CWD = tau^2 / (N * C) * sum_{n, c} KL( softmax_HW(y^T_{n,c} / tau) || softmax_HW(y^S_{n,c} / tau) )

(the paper writes tau^2 / C; the official code also divides by the batch size N). The sum of KLs runs through
``kernels.spatial_softmax_kl``. Defaults follow the official code (TorchDistiller): logits, tau = 4, and the
published weight 3 goes in the config (mmrazor ships tau = 1 with weight 5, or 10 on ADE20K).

On features with different channel counts (or any, with ``always_adapt``), the student passes through a
learnable 1x1 adapter, created from the dry-run shapes: ``conv_bn_relu`` (TorchDistiller: Conv1x1 without
bias -> BN -> ReLU, default) or ``conv`` (the CIRKD re-implementation: Conv1x1 without bias). C is the
teacher's channel count (after the adapter, as in TorchDistiller); ``normalization: student_channels``
reproduces the CIRKD re-implementation, which divides by N * C_s, the student's count read before the
adapter (docs/loss_math.md §14). The student map is resized bilinearly to the teacher's spatial size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from segdistill.kernels import spatial_softmax_kl
from segdistill.losses.base import DistillLoss, LossContext
from segdistill.losses.connectors import AdapterKind, StudentConnector, require_positive
from segdistill.losses.registry import LOSSES


@dataclass
class CWDParams:
    tau: float = 4.0
    adapter: AdapterKind = "conv_bn_relu"
    always_adapt: bool = False  # an adapter even when the channel counts are equal (features, not logits)
    normalization: Literal["teacher_channels", "student_channels"] = "teacher_channels"

    def __post_init__(self) -> None:
        require_positive(self.tau, "tau")


@LOSSES.register("cwd")
class ChannelWiseDistillation(DistillLoss):
    Params = CWDParams

    def __init__(self, params: CWDParams, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__(params, student_shape, teacher_shape)
        self.connector = StudentConnector(params.adapter, student_shape, teacher_shape, params.always_adapt)
        side = teacher_shape if params.normalization == "teacher_channels" else student_shape
        self.normalizing_channels = side[1]

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, context: LossContext) -> torch.Tensor:
        tau = self.params.tau
        total = spatial_softmax_kl(self.connector(student, teacher), teacher, tau)
        return tau**2 * total / (teacher.shape[0] * self.normalizing_channels)
