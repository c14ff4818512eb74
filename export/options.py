"""Command-line options shared by the exporters that start from a checkpoint (to_onnx, to_torchscript)."""

from __future__ import annotations

import argparse
from typing import Any

from segdistill.deploy.accuracy import default_shape
from segdistill.deploy.shapes import ImageShape, parse_shape
from segdistill.deploy.wrapper import OUTPUT_KINDS
from segdistill.errors import ConfigError

DYNAMIC_DIMS = ("batch", "height", "width")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="student folder (model.safetensors + model.json)")
    parser.add_argument("--shape", help="N x 3 x H x W to trace at (default: the size of the training run's validation images)")
    parser.add_argument("--dynamic", default="", help=f"comma-separated dimensions left free: {', '.join(DYNAMIC_DIMS)}")
    parser.add_argument("--output", choices=OUTPUT_KINDS, default="logits", help="full-resolution logits, or int32 labels (argmax in the graph)")
    parser.add_argument("--fold-normalize", action="store_true", help="take uint8 NHWC images; normalisation happens in the graph")
    parser.add_argument("--out", help="file to write (default: CHECKPOINT/export/...)")


def parse_dynamic(text: str) -> set[str]:
    names = {d.strip() for d in text.split(",") if d.strip()}
    unknown = sorted(names - set(DYNAMIC_DIMS))
    if unknown:
        raise ConfigError(f"--dynamic: unknown dimension(s) {unknown}; choose from {', '.join(DYNAMIC_DIMS)}")
    return names


def export_shape(args: argparse.Namespace, meta: dict[str, Any]) -> ImageShape:
    return parse_shape(args.shape) if args.shape else default_shape(meta.get("data", {}))


def traced_shape(shape: ImageShape, dynamic: set[str]) -> list[int | str]:
    """N, 3, H, W with the names of the dynamic dimensions in their place."""
    n, h, w = (name if name in dynamic else value for name, value in zip(DYNAMIC_DIMS, (shape.batch, shape.height, shape.width), strict=True))
    return [n, 3, h, w]


def model_name(meta: dict[str, Any]) -> str:
    """How messages name the exported model: its factory, torchvision model, or backbone and head."""
    model = meta["model"]
    if model.get("factory"):
        return f"model {model['factory']!r}"
    if model.get("torchvision_model"):
        return f"model {model['torchvision_model']!r}"
    return f"model {model['backbone']!r} + {model.get('head', 'fcn')!r}"
