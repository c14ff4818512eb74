"""Parameters and CPU forward + backward time of each documented backbone with one decode head.

    OMP_NUM_THREADS=2 python benchmarks/backbones.py [--head segformer] [--batch 2] [--size 180 240]

Random weights (nothing is downloaded), the default output stride (8 where the model can dilate, else
its native 32), training mode; the time is the median of ``--repeats`` steps after one warm-up step.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from segdistill.config import ModelConfig
from segdistill.models import build_model, count_parameters

BACKBONES = (
    "resnet18", "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv4_conv_small", "efficientvit_b0",
    "fastvit_t8", "repvit_m1_0", "convnext_atto", "pvt_v2_b0", "swin_tiny_patch4_window7_224",
)  # fmt: skip
NUM_CLASSES = 11  # CamVid


def step_seconds(model: torch.nn.Module, images: torch.Tensor) -> float:
    start = time.perf_counter()
    model(images).logits.mean().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", default="segformer")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(180, 240), metavar=("H", "W"), help="the CamVid crop")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    images = torch.randn(args.batch, 3, *args.size)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, input {args.batch}x3x{args.size[0]}x{args.size[1]}")
    print(f"\n| backbone | strides | parameters (M, with {args.head}) | forward + backward (s) |\n|---|---|---:|---:|")
    for name in BACKBONES:
        torch.manual_seed(0)
        model = build_model(ModelConfig(backbone=name, head=args.head, aux_head=False), NUM_CLASSES).train()
        step_seconds(model, images)
        median = statistics.median(step_seconds(model, images) for _ in range(args.repeats))
        strides = "/".join(map(str, model.backbone.strides))
        print(f"| {name} | {strides} | {count_parameters(model) / 1e6:.1f} | {median:.2f} |", flush=True)


if __name__ == "__main__":
    main()
