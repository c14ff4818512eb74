"""Run a model over a data loader and count (label, prediction) pairs."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from segdistill.config import EvalConfig
from segdistill.inference import predict
from segdistill.metrics import ConfusionMatrix


@torch.no_grad()
def confusion_matrix(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    ignore_index: int,
    eval_cfg: EvalConfig,
    device: torch.device,
    progress: bool = False,
) -> ConfusionMatrix:
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index, device)
    for images, labels, _ in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        images, labels = images.to(device), labels.to(device)
        scores = predict(model, images, eval_cfg.mode, eval_cfg.crop_size, eval_cfg.stride, eval_cfg.scales, eval_cfg.flip)
        matrix.update(scores.argmax(1), labels)
    model.train(was_training)
    return matrix
