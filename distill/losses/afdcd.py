"""Af-DCD, augmentation-free dense contrastive distillation (docs/loss_math.md §4): masked reconstruction plus
omni-contrast, both from one masked generator (official ``OmniContrastiveFeatureLoss``, OSVAI/Af-DCD).

    G     = generation(align(F^s) * M)       the MGD generator of mgd.py (random mask, ratio zeta = 0.75)
    L_fd  = (1/B) sum (G - F^t)^2            per-image sum of squares
    L_ctr = (1/(B*H'*W')) sum over anchors of the InfoNCE cross-entropy, computed on
            G' = maxpool_pool(G), T' = maxpool_pool(F^t)   (the "4*" variant: pool 4, then 4x4 patches)
            tokens: each patch x patch patch gives patch^2 * groups tokens of C/groups channels (token n*M + m);
            similarity -||g_k - t_l||_1 / tau; positive: the teacher token at the same (n, m); negatives: every
            teacher token of the patch in another channel group; same group at other positions: excluded.
    L     = lambda_fd * L_fd + lambda_contrast * L_ctr

The contrast needs the generator output of the reconstruction, so one loss holds both terms with their own
weights (config weight 1) and returns them as two parts, logged as ``afdcd_fd`` and ``afdcd_contrast``.
Defaults (§4.6): tau = 0.07, groups M = 16, patch N = 4 after 4x4 max-pooling, zeta = 0.75, random mask, plain
generator; lambda_fd = 2e-5 (the paper; the official Cityscapes script uses 2e-6, VOC/ADE20K 1e-6, CamVid 8e-6,
COCO-Stuff 5e-6) and lambda_contrast = 5e-3 (scripts: ADE20K 0.04, CamVid 0.01). The pixel-KD term (lambda_1)
is a separate ``pixel_kd`` loss in the config. The contrast runs through ``kernels.patch_contrast``.

Remainders: a pooled map whose sides are not multiples of ``patch`` is CROPPED to its top-left whole patches
(the official code crops CamVid maps to [:44, :44] and crashes on others); a map smaller than one patch after
pooling cannot be used and stops before training (checked on the dry-run shapes, and again at every step in case
training crops are smaller than the dry-run images). ``pool: 1`` turns pooling off (the official CamVid setting).
The teacher's channel count must be divisible by ``groups``. Default binding: ``c4`` of both models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segdistill.errors import ConfigError
from segdistill.kernels import patch_contrast
from segdistill.losses.base import DistillLoss, LossContext
from segdistill.losses.connectors import match_size, require_maps, require_positive
from segdistill.losses.mgd import MaskedFeatureGenerator, check_mask_ratio
from segdistill.losses.registry import LOSSES


@dataclass
class AfDCDParams:
    lambda_fd: float = 2e-5
    lambda_contrast: float = 5e-3
    tau: float = 0.07
    groups: int = 16  # M
    patch: int = 4  # N: patches of N x N pooled positions
    pool: int = 4  # max-pool kernel and stride before the patches ("4*"); 1 = no pooling
    mask_ratio: float = 0.75  # zeta
    random_mask: bool = True  # False: the fixed centre block of the official rand_mask=False

    def __post_init__(self) -> None:
        require_positive(self.tau, "tau")
        check_mask_ratio(self.mask_ratio)
        for key in ("patch", "pool"):
            if getattr(self, key) < 1:
                raise ConfigError(f"loss parameter {key!r} must be at least 1, got {getattr(self, key)!r}")
        if self.groups < 2:
            raise ConfigError(f"loss parameter 'groups' must be at least 2 (negatives come from other groups), got {self.groups!r}")


@LOSSES.register("afdcd")
class AfDCD(DistillLoss):
    Params = AfDCDParams
    default_student = "c4"
    default_teacher = "c4"

    def __init__(self, params: AfDCDParams, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__(params, student_shape, teacher_shape)
        require_maps(student_shape, teacher_shape)
        if teacher_shape[1] % params.groups:
            raise ConfigError(
                f"the teacher tensor has {teacher_shape[1]} channels, which do not split into groups={params.groups} "
                "channel groups; choose a 'groups' that divides it"
            )
        self.check_map_size(teacher_shape[-2:])
        self.generator = MaskedFeatureGenerator(student_shape[1], teacher_shape[1], params.mask_ratio, params.random_mask)

    def check_map_size(self, size: torch.Size) -> None:
        p = self.params
        need = p.pool * p.patch
        if min(size) < need:
            raise ConfigError(
                f"Af-DCD: the teacher map is {size[0]}x{size[1]}, smaller than one contrast patch: pool {p.pool} x patch "
                f"{p.patch} needs at least {need}x{need}; lower 'pool' or 'patch', or bind a larger map"
            )

    def contrast(self, generated: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        p = self.params
        self.check_map_size(teacher.shape[-2:])
        if p.pool > 1:
            generated, teacher = F.max_pool2d(generated, p.pool), F.max_pool2d(teacher, p.pool)
        b, _, h, w = teacher.shape
        h, w = h - h % p.patch, w - w % p.patch  # whole patches only (top-left crop)
        generated, teacher = generated[..., :h, :w], teacher[..., :h, :w]
        return patch_contrast(generated, teacher, p.patch, p.groups, p.tau) / (b * h * w)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, context: LossContext) -> dict[str, torch.Tensor]:
        generated = self.generator(match_size(student, teacher))
        reconstruction = (generated - teacher).pow(2).sum() / teacher.shape[0]
        return {
            "fd": self.params.lambda_fd * reconstruction,
            "contrast": self.params.lambda_contrast * self.contrast(generated, teacher),
        }
