"""Losses: the task loss and the registry of distillation losses (LOSSES.md)."""

from distill.losses import pixel_kd  # noqa: F401  (registers its loss)
from distill.losses.base import DistillLoss, LossContext
from distill.losses.criterion import Criterion, build_criterion, build_loss_params
from distill.losses.registry import LOSSES
from distill.losses.task import TaskLoss

__all__ = ["LOSSES", "Criterion", "DistillLoss", "LossContext", "TaskLoss", "build_criterion", "build_loss_params"]
