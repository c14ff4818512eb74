"""Evaluate a model checkpoint: mIoU (total intersection / total union over the set), per-class IoU,
pixel accuracy; whole image, sliding window, or multi-scale + flip.

    python distill/evaluate.py --checkpoint runs/demo/student_kd/final [--data camvid:PATH] \
        [--mode slide --crop 360 480 --stride 240 320] [--scales 0.75 1 1.25 --flip] [--output DIR]

Writes ``metrics.json``, a per-class IoU bar chart ``iou.png`` and ``overlays/`` (image | ground truth |
prediction) for the first few samples into the output folder (default: CHECKPOINT/eval_SPLIT).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from segdistill.atomic_files import atomic_write_text
from segdistill.checkpoint import load_model
from segdistill.config import DataConfig, EnergyConfig, EvalConfig
from segdistill.data import build_dataset, data_option
from segdistill.data.loader import eval_loader
from segdistill.energy import start_meter
from segdistill.errors import ConfigError, command
from segdistill.evaluation import confusion_matrix
from segdistill.inference import predict
from segdistill.parsing import parse_dataclass
from segdistill.plots import colourise, denormalise, iou_bar_chart, overlay_strip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model folder (model.safetensors + model.json)")
    parser.add_argument("--data", help="NAME or NAME:ROOT (default: the dataset the model was trained on)")
    parser.add_argument("--split", default=None, help="split to evaluate (default: the training run's val split)")
    parser.add_argument("--resize", type=float, default=None, help="rescale images (default: as in training)")
    parser.add_argument("--mode", choices=["whole", "slide"], default="whole")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="sliding-window size")
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="sliding-window stride")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--flip", action="store_true", help="also average the horizontally flipped image")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--overlays", type=int, default=4, help="how many overlay pictures to write")
    parser.add_argument("--output", help="output folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--country", default=EnergyConfig.country_iso_code, help="ISO alpha-3 code: electricity mix for the CO2 figure")
    parser.add_argument("--no-energy", action="store_true", help="skip the energy measurement (codecarbon, when installed)")
    return parser.parse_args(argv)


def data_config(meta: dict, args: argparse.Namespace) -> DataConfig:
    cfg = parse_dataclass(DataConfig, meta["data"], "data")
    if args.data:
        cfg = data_option(args.data, cfg)
    if args.resize is not None:
        cfg.resize = args.resize
    cfg.val_batch_size, cfg.num_workers = args.batch_size, args.workers
    return cfg


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model, meta = load_model(args.checkpoint)
    device = torch.device(args.device)
    model.to(device).eval()
    data_cfg = data_config(meta, args)
    split = args.split or data_cfg.val_split
    dataset = build_dataset(data_cfg, split)
    info = dataset.info
    if info.num_classes != meta["num_classes"]:
        raise ConfigError(
            f"checkpoint {args.checkpoint!r} predicts {meta['num_classes']} classes but dataset "
            f"{info.name!r} has {info.num_classes}"
        )
    eval_cfg = EvalConfig(
        mode=args.mode,
        crop_size=tuple(args.crop) if args.crop else None,
        stride=tuple(args.stride) if args.stride else None,
        scales=args.scales,
        flip=args.flip,
    )
    loader = eval_loader(dataset, data_cfg)
    meter = start_meter(EnergyConfig(enabled=False if args.no_energy else None, country_iso_code=args.country), where="--country")
    metrics = confusion_matrix(model, loader, info.num_classes, info.ignore_index, eval_cfg, device, progress=True).result()
    energy = meter.stop(images=len(dataset)) if meter is not None else None

    out = Path(args.output) if args.output else Path(args.checkpoint) / f"eval_{split}"
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    result = {
        "checkpoint": str(args.checkpoint),
        "dataset": info.name,
        "split": split,
        "images": len(dataset),
        "eval": {"mode": args.mode, "crop": args.crop, "stride": args.stride, "scales": args.scales, "flip": args.flip},
        "miou": metrics.miou,
        "pixel_accuracy": metrics.pixel_accuracy,
        "mean_accuracy": metrics.mean_accuracy,
        "iou": dict(zip(info.classes, metrics.iou, strict=True)),
        "energy": energy,
    }
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2))
    iou_bar_chart(list(info.classes), metrics.iou, f"{info.name} {split}: {Path(args.checkpoint).name}", out / "iou.png")
    for i in range(min(args.overlays, len(dataset))):
        image, label, _ = loader.dataset[i]
        scores = predict(model, image[None].to(device), args.mode, eval_cfg.crop_size, eval_cfg.stride, args.scales, args.flip)
        palette = [list(c) for c in info.palette]
        overlay_strip(
            denormalise(image, list(data_cfg.mean), list(data_cfg.std)),
            colourise(label, palette, info.ignore_index),
            colourise(scores[0].argmax(0), palette, info.ignore_index),
            out / "overlays" / f"{i:03d}.png",
        )
    print(metrics.table(info.classes))
    print(f"results in {out}")
    return result


cli = command(main)


if __name__ == "__main__":
    sys.exit(cli())
