"""Pixel-wise KD with temperature (docs/loss_math.md §1): Hinton KD applied at every pixel of the logits.

    q^t_p = softmax(z^t_p / tau),  q^s_p = softmax(z^s_p / tau)      (over the K classes)
    loss  = tau^2 * KL(q^t_p || q^s_p), reduced over pixels as chosen by ``normalization``.

The KL form differs from the cross-entropy form of Niemann Eq. 3 only by the teacher's entropy, a
constant: same gradient, and zero when the student equals the teacher. ``normalization`` selects the
reductions of §1.3, so a weight published with any of the three codebases keeps its meaning:

* ``pixel_mean`` (default; §1.1, CIRKD / Af-DCD / HWD): mean over the B*h*w pixels, times tau^2.
* ``batch_sum`` (SKD ``CriterionPixelWise``): sum over the batch, divided by h*w: B x ``pixel_mean``.
* ``element_mean`` (TorchDistiller / IFVD ``nn.KLDivLoss()``): mean over all B*K*h*w elements, no tau^2.

The logits are compared at the teacher's resolution; if the student's differ in size they are resized
bilinearly to the teacher's first. The sum of KLs runs through ``kernels.class_softmax_kl`` (a fused Triton
kernel on CUDA, the PyTorch reference elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from segdistill.kernels import class_softmax_kl
from segdistill.losses.base import DistillLoss, LossContext
from segdistill.losses.connectors import match_size, require_positive, require_same_channels
from segdistill.losses.registry import LOSSES


@dataclass
class PixelKDParams:
    tau: float = 1.0
    normalization: Literal["pixel_mean", "batch_sum", "element_mean"] = "pixel_mean"

    def __post_init__(self) -> None:
        require_positive(self.tau, "tau")


@LOSSES.register("pixel_kd")
class PixelKD(DistillLoss):
    Params = PixelKDParams

    def __init__(self, params: PixelKDParams, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__(params, student_shape, teacher_shape)
        require_same_channels(student_shape, teacher_shape, "pixel KD compares class distributions")

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, context: LossContext) -> torch.Tensor:
        tau, norm = self.params.tau, self.params.normalization
        student = match_size(student, teacher)
        total = class_softmax_kl(student, teacher, tau)
        b, k, h, w = teacher.shape
        if norm == "pixel_mean":
            return total * tau**2 / (b * h * w)
        if norm == "batch_sum":
            return total * tau**2 / (h * w)
        return total / (b * k * h * w)
