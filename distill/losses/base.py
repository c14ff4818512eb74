"""The contract every distillation loss follows (DESIGN.md, "Losses").

A loss is an ``nn.Module`` registered by name, with a dataclass of hyper-parameters (``Params``) and a
default binding of its two inputs to named tensors of the student's and the teacher's
:class:`SegOutput` (``logits``, ``aux_logits``, ``c1``..``c4``, ``head``). It is built after one dry-run
forward, from the shapes of the tensors it is bound to, so adapters between different channel counts
are sized automatically. It returns a scalar with the normalisation stated in LOSSES.md, so a
published loss weight keeps its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass
class LossContext:
    """What some losses need besides the two bound tensors."""

    labels: torch.Tensor  # (B, H, W) int64 at the input resolution
    ignore_index: int
    num_classes: int


@dataclass
class NoParams:
    pass


class DistillLoss(nn.Module):
    Params: ClassVar[type] = NoParams
    default_student: ClassVar[str] = "logits"
    default_teacher: ClassVar[str] = "logits"
    needs_teacher: ClassVar[bool] = True

    def __init__(self, params, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__()
        self.params = params

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, context: LossContext) -> torch.Tensor:
        raise NotImplementedError
