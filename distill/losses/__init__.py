"""Losses: the task loss and the registry of distillation losses (docs/loss_math.md)."""

# importing a loss module registers its losses
from segdistill.losses import (  # noqa: F401
    afdcd,
    angular,
    cirkd_memory,
    cirkd_minibatch,
    cwd,
    dist,
    feature,
    hwd,
    ifvd,
    mgd,
    pixel_kd,
    skd_adversarial,
    skd_pairwise,
)
from segdistill.losses.base import DistillLoss, LossContext
from segdistill.losses.criterion import Criterion, build_criterion, loss_params
from segdistill.losses.registry import LOSSES
from segdistill.losses.task import TaskLoss

__all__ = ["LOSSES", "Criterion", "DistillLoss", "LossContext", "TaskLoss", "build_criterion", "loss_params"]
