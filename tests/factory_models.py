"""Models that tests build through ``model.factory: "tests.factory_models:..."``: a home-made network of plain
torch modules (none of ours), with the module paths of the docs' example (``backbone.layer3``,
``decode_head.fuse``), one with an operator no ONNX exporter translates, and a factory that returns something
other than a module."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from segdistill.models import SegOutput


def conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinySegNet(nn.Module):
    """Stride-8 features, a squeeze-excitation gate (its ``gate`` returns a (B, C) vector, not a map), a fused
    decoder feature, logits and auxiliary logits; ``output`` picks the form forward returns them in."""

    def __init__(self, num_classes: int, width: int, output: str) -> None:
        super().__init__()
        self.output = output
        self.backbone = nn.Sequential(OrderedDict(
            stem=conv_block(3, width, 2), layer1=conv_block(width, width, 2),
            layer2=conv_block(width, 2 * width, 2), layer3=conv_block(2 * width, 2 * width, 1),
        ))  # fmt: skip
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 2 * width), nn.Sigmoid())
        self.decode_head = nn.ModuleDict({"fuse": conv_block(2 * width, 2 * width, 1), "classifier": nn.Conv2d(2 * width, num_classes, 1)})
        self.aux_classifier = nn.Conv2d(2 * width, num_classes, 1)

    def forward(self, images: torch.Tensor):
        c3 = self.backbone(images)
        c3 = c3 * self.gate(c3)[:, :, None, None]
        logits = self.decode_head["classifier"](self.decode_head["fuse"](c3))
        aux = self.aux_classifier(c3)  # always: a user's model need not allow its modules to be removed
        if self.output == "tensor":
            return logits
        if self.output == "dict":
            return OrderedDict(out=logits, aux=aux)
        if self.output == "seg_output":
            return SegOutput(logits, aux, {"c3": c3})
        return logits, aux  # "tuple": a form FactoryModel does not accept


def tiny_segnet(num_classes: int, width: int = 8, output: str = "dict") -> TinySegNet:
    return TinySegNet(num_classes, width, output)


class BesselSegNet(TinySegNet):
    """Logits through torch.special.bessel_j0, an operator that no ONNX exporter translates."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(super().forward(images))


def bessel_segnet(num_classes: int) -> BesselSegNet:
    return BesselSegNet(num_classes, 8, "tensor")


def not_a_module(**kwargs) -> dict:
    return kwargs
