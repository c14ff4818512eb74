"""Pixel-wise KD with temperature (LOSSES.md §1): Hinton KD applied at every pixel of the logits.

    q^t_p = softmax(z^t_p / tau),  q^s_p = softmax(z^s_p / tau)      (over the K classes)
    loss  = tau^2 * KL(q^t_p || q^s_p), reduced over pixels as chosen by ``normalization``.

The KL form differs from the cross-entropy form of Niemann Eq. 3 only by the teacher's entropy, a
constant: same gradient, and zero when the student equals the teacher. ``normalization`` selects the
reductions of §1.3, so a weight published with any of the three codebases keeps its meaning:

* ``pixel_mean`` (default; §1.1, CIRKD / Af-DCD / HWD): mean over the B*h*w pixels, times tau^2.
* ``batch_sum`` (SKD ``CriterionPixelWise``): sum over the batch, divided by h*w: B x ``pixel_mean``.
* ``element_mean`` (TorchDistiller / IFVD ``nn.KLDivLoss()``): mean over all B*K*h*w elements, no tau^2.

The logits are compared at the teacher's resolution; if the student's differ in size they are resized
bilinearly to the teacher's first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from distill.losses.base import DistillLoss, LossContext
from distill.losses.registry import LOSSES


@dataclass
class PixelKDParams:
    tau: float = 1.0
    normalization: Literal["pixel_mean", "batch_sum", "element_mean"] = "pixel_mean"


def match_size(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    if student.shape[-2:] == teacher.shape[-2:]:
        return student
    return F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)


def class_softmax_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-pixel KL(softmax(t/tau) || softmax(s/tau)) over dim 1, summed over all pixels (no tau^2)."""
    log_q_s = F.log_softmax(student / tau, dim=1)
    log_q_t = F.log_softmax(teacher / tau, dim=1)
    return (log_q_t.exp() * (log_q_t - log_q_s)).sum()


@LOSSES.register("pixel_kd")
class PixelKD(DistillLoss):
    Params = PixelKDParams

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
