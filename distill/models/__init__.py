"""Model builders: one ``build_model(model_config, num_classes)`` for every architecture."""

from __future__ import annotations

from torch import nn

from segdistill.errors import ConfigError, unknown_choice
from segdistill.models.backbones import build_backbone, check_backbone
from segdistill.models.factory import build_factory_model, check_factory_config
from segdistill.models.heads import HEADS, build_head
from segdistill.models.output import FEATURE_NAMES, TENSOR_NAMES, SegOutput
from segdistill.models.segmentor import Segmentor, aux_fcn_head
from segdistill.models.torchvision_seg import TORCHVISION_SEGMENTATION, TorchvisionSegmentor


def check_model_config(cfg, where: str = "model") -> None:
    """Validate names and files of a :class:`segdistill.config.ModelConfig` without building it."""
    if cfg.factory is not None:
        check_factory_config(cfg, where)
        return
    if cfg.features:
        raise ConfigError(f"config key '{where}.features': recording module outputs needs a '{where}.factory' model; ours name theirs (c1..c4, head)")
    if cfg.torchvision_model is not None:
        if cfg.torchvision_model not in TORCHVISION_SEGMENTATION:
            raise unknown_choice("torchvision segmentation model", cfg.torchvision_model, TORCHVISION_SEGMENTATION, f"{where}.torchvision_model")
        if cfg.pretrained not in (None, "hub"):
            raise ConfigError(f"{where}.pretrained: a torchvision segmentation model takes null or 'hub'; give a weights file as teacher.weights")
        return
    HEADS.get(cfg.head, f"{where}.head")
    check_backbone(cfg.backbone, cfg.output_stride, cfg.pretrained, where)


def build_model(cfg, num_classes: int, where: str = "model") -> nn.Module:
    """A model whose forward returns :class:`SegOutput`; ``where`` is its config key in error messages."""
    check_model_config(cfg, where)
    if cfg.factory is not None:
        return build_factory_model(cfg, num_classes, where)
    if cfg.torchvision_model is not None:
        return TorchvisionSegmentor(cfg.torchvision_model, num_classes, hub_weights=cfg.pretrained == "hub", aux=cfg.aux_head)
    backbone = build_backbone(cfg.backbone, cfg.output_stride, cfg.pretrained, cfg.backbone_kwargs)
    head = build_head(cfg.head, backbone.channels, backbone.strides, cfg.head_channels, num_classes, cfg.dropout, backbone.strides[-1], cfg.head_kwargs)
    aux = aux_fcn_head(backbone.channels[-2], cfg.head_channels, num_classes, cfg.dropout) if cfg.aux_head else None
    return Segmentor(backbone, head, aux)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "FEATURE_NAMES", "HEADS", "TENSOR_NAMES", "SegOutput", "build_model", "check_model_config", "count_parameters",
]  # fmt: skip
