"""Naive feature distillation and its magnitude term (docs/loss_math.md §5.1, "Rethinking KD with Raw Features").

Per sample, with F^s the (adapted) student map and F^t the teacher map, both of N = C*H*W values, and
n = ||F^s||_2, m = ||F^t||_2, theta the angle between them:

    L_naive = (1/N) sum_i (F^t_i - F^s_i)^2 = (1/N) [ (m - n)^2 + 2mn(1 - cos theta) ]
                                                     magnitude    angular (see angular.py)

Both losses average the per-sample value over the batch. The student map passes through a learnable 1x1
adapter when its channel count differs from the teacher's (FitNets' regressor; with ``always_adapt`` also when
they are equal), then is resized to the teacher's spatial size. Default binding: the last backbone stage ``c4``
of both models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segdistill.losses.base import DistillLoss, LossContext
from segdistill.losses.connectors import AdapterKind, StudentConnector
from segdistill.losses.registry import LOSSES


@dataclass
class FeatureParams:
    adapter: AdapterKind = "conv"
    always_adapt: bool = False  # an adapter even when the channel counts are equal


class AdaptedFeatureLoss(DistillLoss):
    """A loss between the teacher map and the student map brought to its shape by a :class:`StudentConnector`."""

    Params = FeatureParams
    default_student = "c4"
    default_teacher = "c4"

    def __init__(self, params, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__(params, student_shape, teacher_shape)
        self.connector = StudentConnector(params.adapter, student_shape, teacher_shape, params.always_adapt)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, context: LossContext) -> torch.Tensor:
        return self.compare(self.connector(student, teacher), teacher)

    def compare(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The loss between two (B, C, H, W) maps of the teacher's shape."""
        raise NotImplementedError


@LOSSES.register("fitnet")
class FitNet(AdaptedFeatureLoss):
    """FitNets: mean squared error over C*H*W per sample, mean over the batch (docs/loss_math.md §5.1)."""

    def compare(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (student - teacher).pow(2).mean()


@LOSSES.register("magnitude")
class MagnitudeDistillation(AdaptedFeatureLoss):
    """Magnitude-only distillation, the (m - n)^2 / N term of docs/loss_math.md §5.1, mean over the batch."""

    def compare(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        n, m = student.flatten(1).norm(dim=1), teacher.flatten(1).norm(dim=1)
        return ((m - n).pow(2) / teacher[0].numel()).mean()
