"""Angular distillation, LAD and CAD (docs/loss_math.md §5.2, "Rethinking KD with Raw Features").

RECONSTRUCTED: no official code exists and the paper's text was not available; the definitions below are
inferred from the decomposition of naive feature distillation (feature.py) and the method names. They drop the
magnitude term and the 2mn/N factor of the angular term, so the loss no longer depends on feature norms:

    LAD (layer-wise):   (1/B)     sum_b        scale * (1 - cos(vec F^s_b,   vec F^t_b))     vectors in R^{C*H*W}
    CAD (channel-wise): (1/(B*C)) sum_b sum_c  scale * (1 - cos(vec F^s_b,c, vec F^t_b,c))   vectors in R^{H*W}

``scale`` is exposed because whether the paper keeps a factor 2 is unknown: scale 1 gives 1 - cos (default);
scale 2 gives ||x/|x| - y/|y| ||^2. Norms are clamped at ``eps`` (a zero map has cosine 0, not NaN). The student
map passes through a 1x1 adapter when the channel counts differ (an assumption of the spec), or with
``always_adapt`` also when they are equal; it has no bias, so both losses are invariant to scaling the student.
Default binding: ``c4`` of both models (the layer and the segmentation loss weight are not in the supplement;
detection used weight 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segdistill.losses.connectors import require_positive
from segdistill.losses.feature import AdaptedFeatureLoss, FeatureParams
from segdistill.losses.registry import LOSSES


@dataclass
class AngularParams(FeatureParams):
    scale: float = 1.0
    eps: float = 1e-8

    def __post_init__(self) -> None:
        require_positive(self.scale, "scale")
        require_positive(self.eps, "eps")


def one_minus_cosine(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """1 - cos between the rows of two (..., D) tensors, norms clamped at eps."""
    x_hat = x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
    y_hat = y / y.norm(dim=-1, keepdim=True).clamp_min(eps)
    return 1 - (x_hat * y_hat).sum(dim=-1)


@LOSSES.register("lad")
class LayerAngularDistillation(AdaptedFeatureLoss):
    """LAD: one angle per sample over the whole flattened map (reconstructed, see the module docstring)."""

    Params = AngularParams

    def compare(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return self.params.scale * one_minus_cosine(student.flatten(1), teacher.flatten(1), self.params.eps).mean()


@LOSSES.register("cad")
class ChannelAngularDistillation(AdaptedFeatureLoss):
    """CAD: one angle per (sample, channel) over the spatial map (reconstructed, see the module docstring)."""

    Params = AngularParams

    def compare(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return self.params.scale * one_minus_cosine(student.flatten(2), teacher.flatten(2), self.params.eps).mean()
