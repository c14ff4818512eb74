"""The frozen teacher: eval mode (BatchNorm uses its running statistics), no gradients."""

from __future__ import annotations

from torch import nn

from distill.checkpoint import CheckpointError, load_model, load_weights
from distill.config import TeacherConfig
from distill.data import DatasetInfo
from distill.models import build_model


def build_teacher(cfg: TeacherConfig, info: DatasetInfo) -> nn.Module:
    if cfg.checkpoint is not None:
        teacher, meta = load_model(cfg.checkpoint)
        if meta["num_classes"] != info.num_classes:
            raise CheckpointError(
                f"teacher checkpoint {cfg.checkpoint!r} predicts {meta['num_classes']} classes "
                f"(dataset {meta.get('dataset')!r}), but dataset {info.name!r} has {info.num_classes}"
            )
    else:
        teacher = build_model(cfg.model, info.num_classes)
        if cfg.weights is not None:
            load_weights(teacher, cfg.weights)
    return freeze(teacher)


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model
