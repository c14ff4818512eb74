"""Optimiser (SGD, Adam or AdamW) with parameter groups, and the iteration-based learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn

from segdistill.config import OptimizerConfig, ScheduleConfig


def build_optimizer(backbone: nn.Module, rest: list[nn.Module], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The backbone learns at ``lr``; heads and loss modules at ``lr * head_lr_mult``."""
    groups = [
        {"params": [p for p in backbone.parameters() if p.requires_grad], "lr_mult": 1.0},
        {"params": [p for m in rest for p in m.parameters() if p.requires_grad], "lr_mult": cfg.head_lr_mult},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def learning_rate(step: int, total: int, base_lr: float, cfg: ScheduleConfig) -> float:
    """Poly: (base - min) * (1 - step/total)^power + min, after an optional linear warm-up."""
    if cfg.name == "constant":
        lr = base_lr
    else:
        lr = (base_lr - cfg.min_lr) * (1 - min(step, total) / total) ** cfg.power + cfg.min_lr
    if step < cfg.warmup_iters:
        lr *= (step + 1) / cfg.warmup_iters
    return lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
