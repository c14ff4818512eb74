"""DIST, KD from a stronger teacher (docs/loss_math.md §11): Pearson correlation between class distributions.

The logits become rows Y in R^{P x K} (P = B*h*w pixels), Y = softmax(z / tau) over the K classes, and

    rho(a, b) = <a - mean a, b - mean b> / (||a - mean a|| * ||b - mean b|| + 1e-8)
    L_inter   = 1 - (1/P) sum_p rho(Y^s_p,:, Y^t_p,:)       per pixel, across classes
    L_intra   = 1 - (1/K) sum_k rho(Y^s_:,k, Y^t_:,k)       per class, across all P pixels of the batch
    L_DIST    = tau^2 * (beta * L_inter + gamma * L_intra)

The official segmentation code (hunto/DIST_KD ``segmentation/losses/dist_kd.py``) has no temperature, i.e.
tau = 1 (the default); mmrazor's ``DISTLoss`` multiplies each term by tau^2, which only matters for tau != 1.
The published setting adds a second DIST term on the auxiliary logits with 0.4 x the weight (a second entry of
the config's ``losses`` list bound to ``aux_logits``). The student's logits are resized to the teacher's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segdistill.losses.base import DistillLoss, LossContext
from segdistill.losses.connectors import match_size, require_positive, require_same_channels
from segdistill.losses.registry import LOSSES

EPS = 1e-8  # in the denominator of the correlation, as in the official code


@dataclass
class DISTParams:
    beta: float = 1.0  # weight of the inter-class (per pixel) relation
    gamma: float = 1.0  # weight of the intra-class (per class) relation
    tau: float = 1.0

    def __post_init__(self) -> None:
        require_positive(self.tau, "tau")


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of a with the same row of b, (R, D) -> (R,)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + EPS)


@LOSSES.register("dist")
class DIST(DistillLoss):
    Params = DISTParams

    def __init__(self, params: DISTParams, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__(params, student_shape, teacher_shape)
        require_same_channels(student_shape, teacher_shape, "DIST correlates class c of one with class c of the other")

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, context: LossContext) -> torch.Tensor:
        tau, k = self.params.tau, teacher.shape[1]
        y_s = torch.softmax(match_size(student, teacher) / tau, dim=1).movedim(1, -1).reshape(-1, k)
        y_t = torch.softmax(teacher / tau, dim=1).movedim(1, -1).reshape(-1, k)
        inter = 1 - pearson_rows(y_s, y_t).mean()
        intra = 1 - pearson_rows(y_s.T, y_t.T).mean()
        return tau**2 * (self.params.beta * inter + self.params.gamma * intra)
