"""CIRKD mini-batch pixel-to-pixel distillation (docs/loss_math.md §10; official ``cirkd_mini_batch.py``, v1).

Pixel features are L2-normalised over channels in each network (S_i: image i's (C, HW) map); for every
ordered pair (i, j) of images in the per-process batch, i == j included, the cross-image affinity
A_ij = S_i^T S_j (HW x HW) of the student is matched to the teacher's, row by row:

    loss = 1/B^2 sum_{i,j} 1/HW sum_p KL( softmax(A^t_ij[p] / tau) || softmax(A^s_ij[p] / tau) )

(KL ``batchmean`` over the HW rows, averaged over the B^2 pairs; tau = 0.1, no tau^2 factor). Affinities
are computed within each network, so channel counts may differ (no adapter). As in the CVPR'22 code
the features are neither pooled nor gathered across processes (its all-gather is commented out; the
v2 code at the repository's HEAD average-pools large maps, which this loss does not). A student map of
another size is resized bilinearly to the teacher's first (another output stride).
Default binding: the ``head`` feature (the penultimate head feature in CIRKD).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segdistill.errors import ConfigError
from segdistill.kernels import cross_image_affinity_kl
from segdistill.losses.base import DistillLoss, LossContext
from segdistill.losses.connectors import match_size, require_maps
from segdistill.losses.registry import LOSSES


@dataclass
class CIRKDMiniBatchParams:
    tau: float = 0.1


@LOSSES.register("cirkd_minibatch")
class CIRKDMiniBatch(DistillLoss):
    Params = CIRKDMiniBatchParams
    default_student = "head"
    default_teacher = "head"

    def __init__(self, params: CIRKDMiniBatchParams, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__(params, student_shape, teacher_shape)
        require_maps(student_shape, teacher_shape)
        if params.tau <= 0:
            raise ConfigError(f"expected params.tau > 0, got {params.tau}")

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, context: LossContext) -> torch.Tensor:
        s = F.normalize(match_size(student, teacher).flatten(2), dim=1)
        t = F.normalize(teacher.flatten(2), dim=1)
        b, _, n = t.shape
        return cross_image_affinity_kl(s, t, self.params.tau) / n / b**2
