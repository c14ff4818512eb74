"""Parameters no loss reaches: found by one backward on a copy, which leaves the model, its buffers and the
random state as they were; frozen, they are named in one note."""

from __future__ import annotations

import torch

from segdistill.config import load_config
from segdistill.losses import LossContext, TaskLoss, build_criterion
from segdistill.models import build_model
from segdistill.train import Objective
from segdistill.unreached import freeze_unreached
from tests.helpers import TINY


def tiny_objective(aux_weight: float) -> tuple[Objective, torch.Tensor, LossContext]:
    cfg = load_config(None, TINY)
    student = build_model(cfg.model, 9)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        shapes = student.eval()(images)
    criterion = build_criterion([], TaskLoss(255, aux_weight), shapes, None)
    return Objective(student.train(), criterion), images, LossContext(torch.randint(0, 9, (2, 32, 32)), 255, 9)


def test_an_aux_head_without_loss_weight_is_frozen_and_nothing_else_changes() -> None:
    objective, images, context = tiny_objective(aux_weight=0.0)
    state = {k: v.clone() for k, v in objective.state_dict().items()}
    rng = torch.get_rng_state()
    note = freeze_unreached(objective, images, context, None)
    assert note is not None and note.startswith("note: no loss reaches student.aux_head: frozen")
    frozen = {name for name, p in objective.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith("student.aux_head.") for name in frozen)
    assert all(p.grad is None for p in objective.parameters())
    assert all(torch.equal(state[k], v) for k, v in objective.state_dict().items()), "the probe changed the model"
    assert torch.equal(torch.get_rng_state(), rng), "the probe used the run's random stream"
    assert objective.training


def test_nothing_is_frozen_when_every_loss_is_weighted() -> None:
    objective, images, context = tiny_objective(aux_weight=0.4)
    assert freeze_unreached(objective, images, context, None) is None
    assert all(p.requires_grad for p in objective.parameters())
