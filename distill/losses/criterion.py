"""Task loss + weighted distillation losses, each bound to named tensors of student and teacher.

Built once from a dry-run forward, so a loss that reads a tensor a model does not provide fails before
training with a message that lists what the model has. All losses run in float32 with autocast off,
whatever the mixed-precision setting; teacher tensors are detached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from segdistill.errors import ConfigError
from segdistill.losses.base import AdversarialLoss, DistillLoss, LossContext
from segdistill.losses.registry import LOSSES
from segdistill.losses.task import TaskLoss
from segdistill.models import SegOutput
from segdistill.parsing import parse_dataclass

if TYPE_CHECKING:  # the config module imports the losses to validate them; the losses need its types only
    from segdistill.config import LossConfig


def loss_params(cfg: LossConfig, where: str):
    """The loss's typed ``Params``, parsed from ``cfg.params`` on first use (when the config is validated) and
    kept on ``cfg``, so that validation and the build share one parse."""
    if cfg.parsed_params is None:
        cfg.parsed_params = parse_dataclass(LOSSES.get(cfg.name, f"{where}.name").Params, cfg.params, f"{where}.params")
    return cfg.parsed_params


@dataclass
class Binding:
    label: str  # the name this term is logged under
    weight: float
    student: str
    teacher: str


def _lookup(output: SegOutput | None, name: str, side: str, loss: str) -> torch.Tensor:
    if output is None:
        raise ConfigError(f"loss {loss!r} reads the teacher's {name!r}, but there is no teacher")
    try:
        return output.tensor(name)
    except KeyError as err:
        raise ConfigError(f"loss {loss!r} reads the {side}'s tensor {name!r}: {err.args[0]}") from None


class Criterion(nn.Module):
    def __init__(self, task: TaskLoss, terms: list[DistillLoss], bindings: list[Binding]) -> None:
        super().__init__()
        self.task = task
        self.terms = nn.ModuleList(terms)
        self.bindings = bindings

    def forward(
        self, student: SegOutput, teacher: SegOutput | None, context: LossContext
    ) -> dict[str, torch.Tensor]:
        """Named, weighted loss parts; their sum is the training loss."""
        device_type = student.logits.device.type
        with torch.autocast(device_type, enabled=False):
            parts = self.task(_to_float(student), context.labels)
            for term, bind in zip(self.terms, self.bindings, strict=True):
                s = student.tensor(bind.student).float()
                t = teacher.tensor(bind.teacher).detach().float() if term.needs_teacher else None
                value = term(s, t, context)
                # a loss with several published terms returns them by name, each logged on its own
                named = value.items() if isinstance(value, dict) else [(None, value)]
                for part, v in named:
                    parts[bind.label if part is None else f"{bind.label}_{part}"] = bind.weight * v
        return parts

    def adversary(self) -> Adversary | None:
        """The discriminators of the adversarial terms, or None when there is none."""
        pairs = [(t, b) for t, b in zip(self.terms, self.bindings, strict=True) if isinstance(t, AdversarialLoss)]
        return Adversary(pairs) if pairs else None


class Adversary(nn.Module):
    """The discriminators of the adversarial loss terms, as one module with its own optimiser.

    The trainer calls it after the student's backward, on the same outputs: each discriminator learns to
    tell the teacher's tensor from the student's (detached) one. Its parameters are the discriminators'
    only; the loss terms stay registered in the :class:`Criterion` alone.
    """

    def __init__(self, pairs: list[tuple[AdversarialLoss, Binding]]) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList([term.discriminator for term, _ in pairs])
        self.pairs = pairs  # a plain list: not registered here

    def forward(self, student: SegOutput, teacher: SegOutput) -> dict[str, torch.Tensor]:
        """Named discriminator losses; the trainer minimises their sum."""
        with torch.autocast(student.logits.device.type, enabled=False):
            return {
                bind.label: term.discriminator_loss(
                    student.tensor(bind.student).detach().float(), teacher.tensor(bind.teacher).detach().float()
                )
                for term, bind in self.pairs
            }


def _to_float(output: SegOutput) -> SegOutput:
    aux = output.aux_logits.float() if output.aux_logits is not None else None
    return SegOutput(output.logits.float(), aux, output.features)


def build_criterion(
    loss_cfgs: list[LossConfig], task: TaskLoss, student: SegOutput, teacher: SegOutput | None
) -> Criterion:
    """Instantiate the configured losses from the shapes of a dry-run forward of both models."""
    terms, bindings, seen = [], [], set()
    for i, cfg in enumerate(loss_cfgs):
        where = f"losses[{i}]"
        cls = LOSSES.get(cfg.name, f"{where}.name")
        bind = Binding(cfg.name, cfg.weight, cfg.student or cls.default_student, cfg.teacher or cls.default_teacher)
        if bind.label in seen:
            bind.label = f"{cfg.name}_{i}"
        seen.add(bind.label)
        s_shape = _lookup(student, bind.student, "student", cfg.name).shape
        t_shape = _lookup(teacher, bind.teacher, "teacher", cfg.name).shape if cls.needs_teacher else None
        extra = {"num_classes": student.logits.shape[1]} if cls.needs_num_classes else {}
        try:
            terms.append(cls(loss_params(cfg, where), s_shape, t_shape, **extra))
        except ConfigError as err:  # the shapes of the bound tensors do not suit the loss: say which
            t_desc = f", teacher {bind.teacher!r} {tuple(t_shape)}" if t_shape is not None else ""
            raise ConfigError(
                f"{where}: loss {cfg.name!r} (student {bind.student!r} {tuple(s_shape)}{t_desc}): {err}"
            ) from None
        bindings.append(bind)
    return Criterion(task, terms, bindings)
