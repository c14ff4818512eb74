"""The frozen teacher: eval mode (BatchNorm uses its running statistics), no gradients, and fed the input
normalisation it was trained with."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segdistill.checkpoint import CheckpointError, load_model, load_weights
from segdistill.config import DataConfig, TeacherConfig
from segdistill.data import DatasetInfo
from segdistill.models import build_model


class Renormalize(nn.Module):
    """Runs ``model`` on images normalised with (mean, std) of the data pipeline, converted to the
    teacher's own (mean, std): ``x_t = (x * std_data + mean_data - mean_t) / std_t``, one affine map per
    channel. Teacher and student can then come from families with different preprocessing (ImageNet
    mean/std for ResNets and MobileNets, 0.5 / 0.5 for the EfficientNet-Lite weights)."""

    def __init__(
        self,
        model: nn.Module,
        data_mean: Sequence[float],
        data_std: Sequence[float],
        own_mean: Sequence[float],
        own_std: Sequence[float],
    ) -> None:
        super().__init__()
        self.model = model

        def column(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)

        self.register_buffer("scale", column(data_std) / column(own_std), persistent=False)
        self.register_buffer(
            "shift", (column(data_mean) - column(own_mean)) / column(own_std), persistent=False
        )

    def forward(self, images: torch.Tensor):
        return self.model(images * self.scale + self.shift)


def build_teacher(cfg: TeacherConfig, info: DatasetInfo, data: DataConfig) -> nn.Module:
    own_mean, own_std = cfg.mean, cfg.std
    if cfg.checkpoint is not None:
        teacher, meta = load_model(cfg.checkpoint)
        if meta["num_classes"] != info.num_classes:
            raise CheckpointError(
                f"teacher checkpoint {cfg.checkpoint!r} predicts {meta['num_classes']} classes "
                f"(dataset {meta.get('dataset')!r}), but dataset {info.name!r} has {info.num_classes}"
            )
        own_mean = own_mean or tuple(meta.get("mean", data.mean))
        own_std = own_std or tuple(meta.get("std", data.std))
    else:
        teacher = build_model(cfg.model, info.num_classes, "teacher.model")
        if cfg.weights is not None:
            load_weights(teacher, cfg.weights)
    own_mean, own_std = tuple(own_mean or data.mean), tuple(own_std or data.std)
    if (own_mean, own_std) != (tuple(data.mean), tuple(data.std)):
        teacher = Renormalize(teacher, data.mean, data.std, own_mean, own_std)
    return freeze(teacher)


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model
