"""Distillation overhead: time of one distillation step divided by (one student training step + one
teacher forward), for the demo pair, measured in one run with the trainer's own modules.

    python benchmarks/distill_overhead.py [--config configs/demo/student_kd.yaml] [--steps 20]

Target: at most 1.10 (the KD loss and the bookkeeping cost at most 10% on top of the two networks).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segdistill.config import load_config
from segdistill.data import build_dataset
from segdistill.data.loader import DataPosition, train_loader
from segdistill.losses import LossContext, TaskLoss, build_criterion
from segdistill.models import build_model
from segdistill.teacher import freeze
from segdistill.train import Objective, dry_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo/student_kd.yaml")
    parser.add_argument("--teacher", default="configs/demo/teacher.yaml", help="config whose model is the teacher")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    cfg = load_config(args.config, ["teacher=null", "losses=[]"])
    kd_losses = load_config(args.config).losses
    torch.manual_seed(0)

    dataset = build_dataset(cfg.data, cfg.data.train_split)
    info = dataset.info
    loader, _ = train_loader(dataset, cfg.data, 0, 1, 0, DataPosition())
    images, labels, _ = next(iter(loader))
    context = LossContext(labels, info.ignore_index, info.num_classes)
    teacher = freeze(build_model(load_config(args.teacher).model, info.num_classes))
    task = TaskLoss(info.ignore_index, cfg.train.aux_weight)

    def objective(losses):
        student = build_model(cfg.model, info.num_classes)
        s_out, t_out = dry_run(student, teacher, images)
        obj = Objective(student, build_criterion(losses, task, s_out, t_out))
        return obj, torch.optim.SGD(obj.parameters(), lr=1e-4, momentum=0.9)

    supervised, opt_s = objective([])
    distilled, opt_d = objective(kd_losses)

    def student_step():
        opt_s.zero_grad()
        parts, _ = supervised(images, context, None)
        sum(parts.values()).backward()
        opt_s.step()

    def teacher_forward():
        with torch.no_grad():
            teacher(images)

    def distill_step():
        opt_d.zero_grad()
        with torch.no_grad():
            t_out = teacher(images)
        parts, _ = distilled(images, context, t_out)
        sum(parts.values()).backward()
        opt_d.step()

    timings = {"student step": [], "teacher forward": [], "distillation step": []}
    for i in range(args.steps + 3):  # interleaved, so drifts in machine load hit all three alike
        for name, fn in zip(timings, (student_step, teacher_forward, distill_step), strict=True):
            start = time.perf_counter()
            fn()
            if i >= 3:
                timings[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in timings.items()}
    ratio = med["distillation step"] / (med["student step"] + med["teacher forward"])
    print(f"batch {tuple(images.shape)}, {args.steps} timed steps each (median), torch threads {torch.get_num_threads()}")
    print("| measurement | median (ms) |\n|---|---:|")
    for name, value in med.items():
        print(f"| {name} | {1000 * value:.1f} |")
    print(f"| **overhead ratio** distillation / (student + teacher) | **{ratio:.3f}** (target <= 1.10) |")


if __name__ == "__main__":
    main()
