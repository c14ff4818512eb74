"""IFVD, intra-class feature variation distillation (docs/loss_math.md §8; official ``CriterionIFV``).

Each network's feature map f (B, C, H, W) is compared with its own per-image class prototypes, so the
channel counts of student and teacher may differ (no adapter):

    y      = labels resized to H x W with legacy ``nearest`` (the top-left pixel of each cell)
    mu^b_k = sum_{p: y_p = k} f_p / (|{p: y_p = k}| + 1e-6)          (image b, class k)
    M(p)   = cos(f_p, mu^b_{y_p})                                     (eps 1e-8)
    loss   = 1 / (B H W) sum_p (M^s(p) - M^t(p))^2                    (MSE mean)

Any label outside [0, K) is ignored: such a pixel's "prototype" is its own feature, so M = 1 in both
networks; it adds 0 to the error but still counts in the mean's denominator (as in the official code).
The gradient reaches the student's feature also through its prototypes. A student map of another size is
resized bilinearly to the teacher's first (another output stride). Default binding: the ``head`` feature (the
PSP-module output in the official PSPNet pair); the labels come from the loss context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segdistill.labels import resize_labels
from segdistill.losses.base import DistillLoss, LossContext
from segdistill.losses.connectors import match_size, require_maps
from segdistill.losses.registry import LOSSES


def prototype_similarity(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """M(p) = cos(f_p, mean feature of p's class in its image), (B, H, W); 1 where the label is ignored."""
    b, c = features.shape[:2]
    flat = features.flatten(2)  # (B, C, P)
    y = labels.flatten(1)  # (B, P)
    valid = (y >= 0) & (y < num_classes)
    one_hot = F.one_hot(torch.where(valid, y, 0), num_classes).to(flat.dtype) * valid[..., None]  # (B, P, K)
    sums = flat @ one_hot  # (B, C, K)
    prototypes = sums / (one_hot.sum(1)[:, None, :] + 1e-6)
    centre = torch.where(valid[:, None, :], prototypes @ one_hot.transpose(1, 2), flat)  # (B, C, P)
    return F.cosine_similarity(flat, centre, dim=1, eps=1e-8).view(b, *features.shape[2:])


@LOSSES.register("ifvd")
class IFVD(DistillLoss):
    default_student = "head"
    default_teacher = "head"

    def __init__(self, params, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__(params, student_shape, teacher_shape)
        require_maps(student_shape, teacher_shape)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, context: LossContext) -> torch.Tensor:
        student = match_size(student, teacher)
        labels = resize_labels(context.labels, student.shape[2:])
        m_s = prototype_similarity(student, labels, context.num_classes)
        m_t = prototype_similarity(teacher, labels, context.num_classes)
        return F.mse_loss(m_s, m_t)
