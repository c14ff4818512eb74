"""The contract every distillation loss follows (docs/architecture.md §4.3).

A loss is an ``nn.Module`` registered by name, with a dataclass of hyper-parameters (``Params``) and a
default binding of its two inputs to named tensors of the student's and the teacher's
:class:`SegOutput` (``logits``, ``aux_logits``, ``c1``..``c4``, ``head``). It is built after one dry-run
forward, from the shapes of the tensors it is bound to, so adapters between different channel counts
are sized automatically. It returns a scalar with the normalisation stated in docs/loss_math.md, so a
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
    # True: the constructor also takes ``num_classes`` (e.g. to size per-class memories).
    needs_num_classes: ClassVar[bool] = False

    def __init__(self, params, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__()
        self.params = params

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, context: LossContext
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """A scalar, or named scalars for a loss made of several published terms (summed, logged apart)."""
        raise NotImplementedError


class AdversarialLoss(DistillLoss):
    """A loss played against a discriminator (docs/loss_math.md §7.3).

    ``forward`` is the student's (generator's) term: it reads the discriminator without training it.
    ``discriminator_loss`` is what the discriminator minimises; the trainer calls it (through
    :class:`segdistill.losses.criterion.Adversary`) after the student's backward and steps the
    discriminator with its own optimiser. The discriminator is deliberately not a registered submodule
    of the loss, so the student's optimiser, gradient clipping and DDP wrapper never see it; the
    ``Adversary`` registers it, and the trainer prepares that with Accelerate and saves it with the
    training state.
    """

    def __init__(self, params, student_shape: torch.Size, teacher_shape: torch.Size, discriminator: nn.Module) -> None:
        super().__init__(params, student_shape, teacher_shape)
        object.__setattr__(self, "discriminator", discriminator)  # bypasses nn.Module registration, see above

    def _apply(self, fn, recurse: bool = True):
        # .to(device) / .double() still move the discriminator with its loss, though it is not a submodule
        self.discriminator._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def discriminator_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The discriminator's loss on the (detached) student tensor and the teacher tensor."""
        raise NotImplementedError
