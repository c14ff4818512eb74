"""SKD pair-wise (affinity) distillation (docs/loss_math.md §7.2; official ``CriterionPairWiseforWholeFeatAfterPool``).

Each network's feature map is max-pooled into N' "nodes"; the affinity of two nodes is the cosine of
their feature vectors (within one network, so channel counts may differ: no adapter); the student's
affinity matrix is matched to the teacher's:

    a_ij = f_i . f_j / (||f_i|| ||f_j||)
    loss = (1/B) sum_b (1/N'^2) sum_{i,j} (a^s_ij - a^t_ij)^2

``nodes`` picks the granularity (the published codes disagree, §7.2 / §13.4):

* ``scale`` (official SKD): ``MaxPool2d(kernel = stride = (int(H * pool_scale), int(W * pool_scale)),
  ceil_mode=True)``, ``pool_scale`` 0.5: a 2x2 grid of nodes for 64x64 maps, 3x3 for 65x65 (a kernel
  of at least 1 pixel on maps smaller than 2 pixels).
* ``patch`` (the CIRKD and HWD re-implementations): a fixed ``MaxPool2d(2, 2, ceil_mode=True)``, i.e.
  one node per 2x2 pixels: a far finer granularity.

``normalization``: ``detached`` (official, default) divides by ||f|| + 1e-8 with the norm detached, so no
gradient flows through the normaliser; ``normalize`` uses ``F.normalize`` (the re-implementations),
which keeps that gradient. The two give the same value and different gradients. A student map of another
size is resized bilinearly to the teacher's before pooling, so both have the same nodes.
Default binding: the ``head`` feature (the PSP-module output in the official pair).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from segdistill.errors import ConfigError
from segdistill.kernels import pairwise_affinity_mse
from segdistill.losses.base import DistillLoss, LossContext
from segdistill.losses.connectors import match_size, require_maps
from segdistill.losses.registry import LOSSES


@dataclass
class SKDPairwiseParams:
    nodes: Literal["scale", "patch"] = "scale"
    pool_scale: float = 0.5  # nodes: scale
    normalization: Literal["detached", "normalize"] = "detached"


def pool_into_nodes(features: torch.Tensor, params: SKDPairwiseParams) -> torch.Tensor:
    h, w = features.shape[2:]
    if params.nodes == "scale":
        kernel = (max(1, int(h * params.pool_scale)), max(1, int(w * params.pool_scale)))
    else:
        kernel = (2, 2)
    return F.max_pool2d(features, kernel, kernel, ceil_mode=True)


def unit_nodes(nodes: torch.Tensor, normalization: str) -> torch.Tensor:
    """(B, C, N') node features of unit length over channels."""
    flat = nodes.flatten(2)
    if normalization == "normalize":
        return F.normalize(flat, dim=1)
    return flat / (flat.norm(dim=1, keepdim=True).detach() + 1e-8)


@LOSSES.register("skd_pairwise")
class SKDPairwise(DistillLoss):
    Params = SKDPairwiseParams
    default_student = "head"
    default_teacher = "head"

    def __init__(self, params: SKDPairwiseParams, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__(params, student_shape, teacher_shape)
        require_maps(student_shape, teacher_shape)
        if not 0 < params.pool_scale <= 1:
            raise ConfigError(f"expected params.pool_scale in (0, 1], got {params.pool_scale}")

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, context: LossContext) -> torch.Tensor:
        norm = self.params.normalization
        s = unit_nodes(pool_into_nodes(match_size(student, teacher), self.params), norm)
        t = unit_nodes(pool_into_nodes(teacher, self.params), norm)
        b, _, n = t.shape
        return pairwise_affinity_mse(s, t) / n**2 / b
