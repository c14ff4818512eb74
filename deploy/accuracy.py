"""Accuracy of a deployed artifact on a dataset: the mIoU of what the artifact predicts, through the
same path as in production (uint8 images in, labels out), not the mIoU of the PyTorch model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from segdistill.config import DataConfig
from segdistill.data import build_dataset, data_option
from segdistill.deploy.artifact import ArtifactError, ArtifactInfo
from segdistill.deploy.predictor import Predictor
from segdistill.deploy.shapes import ImageShape
from segdistill.errors import ConfigError
from segdistill.labels import resize_labels
from segdistill.metrics import ConfusionMatrix, SegMetrics
from segdistill.parsing import parse_dataclass


def open_dataset(spec: str | None, data_settings: dict[str, Any], split: str | None = None) -> Dataset:
    """``spec`` is NAME or NAME:ROOT (None: the dataset the model was trained on); ``split`` defaults to
    the training run's validation split. Images are rescaled by ``data.resize`` as in training."""
    cfg = parse_dataclass(DataConfig, dict(data_settings), "data") if data_settings else DataConfig()
    if spec:
        cfg = data_option(spec, cfg)
    return build_dataset(cfg, split or cfg.val_split)


def default_shape(data_settings: dict[str, Any]) -> ImageShape:
    """Batch 1 at the size of the first validation image as the model saw it (after ``data.resize``),
    or at the training crop size where the dataset cannot be read here."""
    try:
        image, _ = open_dataset(None, data_settings)[0]
        return ImageShape(1, int(image.shape[-2]), int(image.shape[-1]))
    except ConfigError:
        crop = data_settings.get("crop_size", (512, 512))
        return ImageShape(1, int(crop[0]), int(crop[1]))


def check_classes(dataset: Dataset, info: ArtifactInfo, where: str) -> None:
    if dataset.info.num_classes != info.num_classes:
        raise ArtifactError(
            f"{where} predicts {info.num_classes} classes but dataset {dataset.info.name!r} has {dataset.info.num_classes}"
        )


def image_dims(info: ArtifactInfo) -> tuple[int | str, int | str, int | str]:
    """Batch, height and width of the artifact's input (ints, or names where dynamic)."""
    shape = info.input.shape
    return (shape[0], shape[1], shape[2]) if info.input.layout == "NHWC" else (shape[0], shape[2], shape[3])


def batch_size(info: ArtifactInfo) -> int:
    """The batch size to feed: the fixed one, or 1 where the batch is dynamic."""
    n = image_dims(info)[0]
    return n if isinstance(n, int) else 1


def image_batches(dataset: Dataset, info: ArtifactInfo, max_images: int | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """uint8 (N, H, W, 3) batches that the artifact accepts, and their labels (N, h, w) at the label size.

    A dimension the artifact fixes is met by resizing the image (the prediction is resized back to the
    label, nearest); a fixed batch size takes images in groups of that size (a last partial group is left).
    """
    _, h, w = image_dims(info)
    batch = batch_size(info)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    for first in range(0, count - batch + 1, batch):
        items = [dataset[i] for i in range(first, first + batch)]
        images = []
        for image, _ in items:
            size = [h if isinstance(h, int) else image.shape[-2], w if isinstance(w, int) else image.shape[-1]]
            if list(image.shape[-2:]) != size:
                image = TF.resize(image, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
            images.append(image)
        if len({tuple(i.shape) for i in images}) > 1 or len({tuple(lab.shape) for _, lab in items}) > 1:
            raise ArtifactError(f"the artifact takes batches of {batch} images; the dataset's images differ in size")
        yield torch.stack(images).permute(0, 2, 3, 1).numpy(), torch.stack([lab for _, lab in items])


def evaluate(
    predictor: Predictor, dataset: Dataset, max_images: int | None = None, progress: bool = True, keep: list[torch.Tensor] | None = None
) -> SegMetrics:
    """mIoU and per-class IoU of the artifact's labels; with ``keep``, each batch's labels (at the label size) are appended to it."""
    info = predictor.info
    check_classes(dataset, info, predictor.name)
    matrix = ConfusionMatrix(info.num_classes, dataset.info.ignore_index)
    batches = (len(dataset) if max_images is None else min(max_images, len(dataset))) // batch_size(info)
    steps = tqdm(image_batches(dataset, info, max_images), f"accuracy {predictor.name}", batches, disable=not progress, leave=False)
    for images, labels in steps:
        predictions = resize_labels(torch.from_numpy(predictor.predict(images)), labels.shape[-2:])
        if keep is not None:
            keep.append(predictions.to(torch.int32))
        try:
            matrix.update(predictions, labels)
        except ValueError as err:  # ids outside the classes: the artifact's or the dataset's, said with their names
            raise ArtifactError(f"{predictor.name} on {dataset.info.name}: {err}") from err
    return matrix.result()
