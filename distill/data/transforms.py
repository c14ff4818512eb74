"""Joint image / label transforms (torchvision transforms v2).

Training: random scale (a ratio of the image's own size), random crop padded with the ignore index,
horizontal flip, normalisation. Evaluation: the whole image, normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


class RandomScale(v2.Transform):
    """Resize image and mask by one factor drawn uniformly from ``scale_range``."""

    def __init__(self, scale_range: tuple[float, float]) -> None:
        super().__init__()
        self.scale_range = scale_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        image = next(x for x in flat_inputs if isinstance(x, tv_tensors.Image))
        h, w = image.shape[-2:]
        low, high = self.scale_range
        factor = low + (high - low) * float(torch.rand(()))
        return {"size": [max(1, round(h * factor)), max(1, round(w * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image | tv_tensors.Mask):
            return F.resize(inpt, params["size"], antialias=True)  # masks use nearest
        return inpt


def train_transform(
    crop_size: Sequence[int],
    scale_range: Sequence[float],
    hflip: bool,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int,
) -> v2.Compose:
    steps: list[v2.Transform] = []
    if tuple(scale_range) != (1.0, 1.0):
        steps.append(RandomScale(tuple(scale_range)))
    steps.append(
        v2.RandomCrop(list(crop_size), pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index})
    )
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def eval_transform(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def apply(transform: v2.Compose, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    image_out, label_out = transform(tv_tensors.Image(image), tv_tensors.Mask(label))
    return image_out.as_subclass(torch.Tensor), label_out.as_subclass(torch.Tensor).long()
