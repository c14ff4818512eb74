"""SKD holistic (adversarial) distillation (docs/loss_math.md §7.3): a discriminator D learns to tell the
teacher's logits from the student's; the student learns to make D score its logits like the teacher's.

Student (generator) term, this loss's value; the config ``weight`` is lambda_adv (SKD's script reuses
lambda_d = 0.1; TorchDistiller, IFVD and CIRKD use 0.001):

    - E D(z^s)

Discriminator loss, minimised by the trainer's discriminator step with its own optimiser
(``train.discriminator``), on the same step's outputs with the student's detached:

    wgan-gp (SKD, official):  lambda_d [E D(z^s) - E D(z^t)] + lambda_d lambda_gp E_x[(||grad_x D(x)||_2 - 1)^2],
                              x = alpha z^t + (1 - alpha) z^s, alpha ~ U(0, 1) per sample
    hinge (CIRKD):            lambda_d [E relu(1 - D(z^t)) + E relu(1 + D(z^s))]

E is the mean over the batch and D's score map. D is :class:`SAGANDiscriminator` on the logits only (the
official code; the paper's conditional D that also sees the image is not implemented there either).
Student and teacher tensors must have the same channels (D scores both; the penalty mixes them); a student
tensor of another size is resized bilinearly to the teacher's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from segdistill.errors import ConfigError
from segdistill.losses.base import AdversarialLoss, LossContext
from segdistill.losses.connectors import match_size, require_same_channels
from segdistill.losses.discriminator import SAGANDiscriminator
from segdistill.losses.registry import LOSSES


@dataclass
class SKDAdversarialParams:
    variant: Literal["wgan-gp", "hinge"] = "wgan-gp"
    discriminator_weight: float = 0.1  # lambda_d: scales the whole discriminator loss
    gradient_penalty: float = 10.0  # lambda_gp (wgan-gp only)
    conv_dim: int = 64  # width of D's first convolution (official adv_conv_dim)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Run ``module`` without recording gradients for its parameters (inputs still get theirs)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@LOSSES.register("skd_adversarial")
class SKDAdversarial(AdversarialLoss):
    Params = SKDAdversarialParams

    def __init__(self, params: SKDAdversarialParams, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        require_same_channels(student_shape, teacher_shape, "the discriminator scores both")
        if params.conv_dim < 1 or params.discriminator_weight <= 0 or params.gradient_penalty < 0:
            raise ConfigError(
                f"expected params conv_dim >= 1, discriminator_weight > 0 and gradient_penalty >= 0, got {params}"
            )
        super().__init__(params, student_shape, teacher_shape, SAGANDiscriminator(student_shape[1], params.conv_dim))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, context: LossContext) -> torch.Tensor:
        # The student's step must not train D: its gradient reaches the student only.
        with frozen(self.discriminator):
            return -self.discriminator(match_size(student, teacher)).mean()

    def discriminator_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        p, student = self.params, match_size(student, teacher)
        d_student, d_teacher = self.discriminator(student), self.discriminator(teacher)
        if p.variant == "hinge":
            return p.discriminator_weight * (torch.relu(1 - d_teacher).mean() + torch.relu(1 + d_student).mean())
        loss = d_student.mean() - d_teacher.mean()
        if p.gradient_penalty > 0:
            loss = loss + p.gradient_penalty * self.gradient_penalty(student, teacher)
        return p.discriminator_weight * loss

    def gradient_penalty(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """E[(||grad D(x)||_2 - 1)^2] at x = alpha t + (1 - alpha) s, one alpha ~ U(0, 1) per sample."""
        alpha = torch.rand(student.shape[0], 1, 1, 1, device=student.device, dtype=student.dtype)
        mixed = (alpha * teacher + (1 - alpha) * student).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.discriminator(mixed).sum(), mixed, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).square().mean()
