"""MGD, masked generative distillation (docs/loss_math.md §9), and the masked generator Af-DCD reuses (§4.2-4.3).

    A = align(F^s)                          Conv1x1(C_s -> C_t, bias) only when C_s != C_t
    M[b, 1, h, w] = 0 if U[b, h, w] > 1 - ratio else 1,  U ~ Uniform[0, 1)   shared over channels, redrawn every step
    G = generation(A * M)                   Conv3x3(C_t -> C_t) -> ReLU -> Conv3x3(C_t -> C_t), padding 1, bias
    L_MGD = (1/B) sum_{b,c,h,w} (G - F^t)^2  (a per-image sum of squares; the official code's MSE sum / B)

The official alpha = 2e-5 is the config weight, not a parameter here, so the published weight keeps its
meaning. As in the official code the mask is drawn by ``torch.rand`` on the CPU generator and then moved to
the device, so a seeded run draws the same masks on CPU and GPU. The published segmentation setting adds a CWD
term on the logits (tau 4, weight 3) as a second loss of the config. Default binding: ``c4`` of both models;
the student map is resized to the teacher's spatial size before the align convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from segdistill.errors import ConfigError
from segdistill.losses.base import DistillLoss, LossContext
from segdistill.losses.connectors import match_size, require_maps
from segdistill.losses.registry import LOSSES


@dataclass
class MGDParams:
    mask_ratio: float = 0.75  # lambda_mgd: the probability that a location is masked

    def __post_init__(self) -> None:
        check_mask_ratio(self.mask_ratio)


def check_mask_ratio(ratio: float) -> None:
    if not 0 <= ratio < 1:
        raise ConfigError(f"loss parameter 'mask_ratio' must be in [0, 1), got {ratio!r}")


class MaskedFeatureGenerator(nn.Module):
    """align -> mask -> generation: the student's attempt to generate the teacher's map from a masked copy."""

    def __init__(self, student_channels: int, teacher_channels: int, mask_ratio: float, random_mask: bool = True) -> None:
        super().__init__()
        self.mask_ratio, self.random_mask = mask_ratio, random_mask
        if student_channels != teacher_channels:
            self.align: nn.Module = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        else:
            self.align = nn.Identity()
        self.generation = nn.Sequential(
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1),
        )

    def mask(self, b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(B, 1, H, W): 0 where masked. Random (drawn on the CPU generator) or, if ``random_mask`` is off,
        the fixed centre block [H/3:2H/3, W/3:2W/3] of Af-DCD's ``rand_mask=False``."""
        if self.random_mask:
            keep = torch.rand((b, 1, h, w)) <= 1 - self.mask_ratio
            return keep.float().to(device)
        mask = torch.ones((b, 1, h, w), device=device)
        mask[:, :, h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = 0
        return mask

    def forward(self, student: torch.Tensor) -> torch.Tensor:
        aligned = self.align(student)
        b, _, h, w = aligned.shape
        return self.generation(aligned * self.mask(b, h, w, aligned.device))


@LOSSES.register("mgd")
class MGD(DistillLoss):
    Params = MGDParams
    default_student = "c4"
    default_teacher = "c4"

    def __init__(self, params: MGDParams, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__(params, student_shape, teacher_shape)
        require_maps(student_shape, teacher_shape)
        self.generator = MaskedFeatureGenerator(student_shape[1], teacher_shape[1], params.mask_ratio)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, context: LossContext) -> torch.Tensor:
        generated = self.generator(match_size(student, teacher))
        return (generated - teacher).pow(2).sum() / teacher.shape[0]
