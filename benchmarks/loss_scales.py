"""What each weighted loss term of a preset starts at: one training batch through the untrained student
and the preset's teacher, the task loss and every distillation term printed as a table.

    python benchmarks/loss_scales.py configs/camvid/{cwd,hwd,dist,fitnet,mgd,afdcd}.yaml \
        --set teacher.checkpoint=runs/camvid/teacher/final

A published weight was chosen for the feature sizes and magnitudes of its paper's models; this shows where
it puts a term on yours, before any training (docs/losses.md, "CamVid presets").
"""

from __future__ import annotations

import argparse

import torch

from segdistill.config import load_config
from segdistill.data import build_dataset
from segdistill.data.loader import DataPosition, train_loader
from segdistill.losses import LossContext, TaskLoss, build_criterion
from segdistill.models import build_model
from segdistill.teacher import build_teacher


def weighted_terms(path: str, overrides: list[str], seed: int) -> dict[str, float]:
    cfg = load_config(path, overrides)
    train_set = build_dataset(cfg.data, cfg.data.train_split)
    info = train_set.info
    torch.manual_seed(seed)
    student = build_model(cfg.model, info.num_classes).train()
    teacher = build_teacher(cfg.teacher, info, cfg.data)
    loader, _ = train_loader(train_set, cfg.data, 0, 1, seed, DataPosition(0, 0))
    images, labels, _ = next(iter(loader))
    with torch.no_grad():
        s_out, t_out = student(images), teacher(images)
        criterion = build_criterion(cfg.losses, TaskLoss(info.ignore_index, cfg.train.aux_weight), s_out, t_out)
        parts = criterion(s_out, t_out, LossContext(labels, info.ignore_index, info.num_classes))
    return {name: float(value) for name, value in parts.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="preset YAML files (with a teacher and losses)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="key=value overrides for every preset")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"{'preset':40s} {'term':24s} {'weighted value':>14s}")
    for path in args.configs:
        for name, value in weighted_terms(path, ["data.num_workers=0", *args.overrides], args.seed).items():
            print(f"{path:40s} {name:24s} {value:14.4g}")


if __name__ == "__main__":
    main()
