"""Per-class weights of the task loss (``train.class_weight``): a list given in the config, or median frequency
balancing computed from the training labels (README.md, "Training")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import torch

from segdistill.data import DatasetInfo
from segdistill.errors import ConfigError


class LabelledDataset(Protocol):
    """What :func:`class_weight` reads: every dataset of ``build_dataset`` has a label-only reader."""

    def __len__(self) -> int: ...

    def label(self, index: int) -> torch.Tensor: ...


def median_frequency(labels: Iterable[torch.Tensor], info: DatasetInfo) -> torch.Tensor:
    """Median frequency balancing (Eigen & Fergus 2015, as SegNet trains CamVid): ``w_c = median(f) / f_c`` with
    ``f_c`` the pixels of class c over the pixels of the training labels that contain c. Ignored pixels count in
    neither; a class absent from every label gets weight 1 (it is never a target)."""
    pixels = np.zeros(info.num_classes, np.int64)
    present_in = np.zeros(info.num_classes, np.int64)
    for label_t in labels:
        label = label_t.numpy().ravel()
        counts = np.bincount(label[label != info.ignore_index], minlength=info.num_classes)
        pixels += counts
        present_in += (counts > 0) * int((label != info.ignore_index).sum())
    seen = pixels > 0
    if not seen.any():
        raise ConfigError(
            "config key 'train.class_weight': median_frequency found no labelled pixel in the training set"
        )
    freq = pixels[seen] / present_in[seen]
    weight = np.ones(info.num_classes)
    weight[seen] = np.median(freq) / freq
    return torch.tensor(weight, dtype=torch.float32)


def class_weight(
    value: list[float] | str | None, dataset: LabelledDataset, info: DatasetInfo
) -> torch.Tensor | None:
    """The task loss's class weights for config value ``value`` (None: unweighted); median frequency reads the
    training labels only, not the images."""
    if value is None:
        return None
    if value == "median_frequency":
        return median_frequency((dataset.label(index) for index in range(len(dataset))), info)
    if len(value) != info.num_classes or min(value) < 0 or max(value) <= 0:
        raise ConfigError(
            f"config key 'train.class_weight': expected {info.num_classes} weights >= 0, not all 0 (one per class of "
            f"{info.name!r}: {', '.join(info.classes)}), or 'median_frequency'; got {value!r}"
        )
    return torch.tensor(value, dtype=torch.float32)
