"""torchvision's complete segmentation models (FCN, DeepLabV3 on ResNet-50/101), typically as teachers.

They are wrapped to return :class:`SegOutput` with the same named features as our own models: the
backbone stages layer1..layer4 are c1..c4, and ``head`` is the classifier's input.
"""

from __future__ import annotations

import torch
import torchvision.models.segmentation as tvseg
from torch import nn

from segdistill.models.output import SegOutput

TORCHVISION_SEGMENTATION = ("deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50", "fcn_resnet101")


class TorchvisionSegmentor(nn.Module):
    def __init__(self, name: str, num_classes: int, hub_weights: bool = False, aux: bool = True) -> None:
        super().__init__()
        weights = "DEFAULT" if hub_weights else None
        self.net = getattr(tvseg, name)(weights=weights, weights_backbone=None, num_classes=num_classes, aux_loss=aux)

    def forward(self, images: torch.Tensor) -> SegOutput:
        body, feats, x = self.net.backbone, {}, images
        for name, module in body.items():
            x = module(x)
            if name.startswith("layer"):
                feats["c" + name[-1]] = x
        # Run the classifier's layers one by one: slicing it (classifier[:-1]) rebuilds torchvision's
        # FCNHead / DeepLabHead through their own __init__, which takes other arguments.
        layers = list(self.net.classifier.children())
        head_feature = feats["c4"]
        for layer in layers[:-1]:
            head_feature = layer(head_feature)
        logits = layers[-1](head_feature)
        aux = self.net.aux_classifier(feats["c3"]) if self.net.aux_classifier is not None else None
        return SegOutput(logits, aux, {**feats, "head": head_feature})
