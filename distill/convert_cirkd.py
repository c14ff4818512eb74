"""Convert a teacher released with CIRKD (winycg/CIRKD) into a model checkpoint of ours.

    python distill/convert_cirkd.py deeplabv3_resnet101_citys_best_model.pth runs/teachers/cirkd_deeplabv3_r101 \
        [--dataset cityscapes]

CIRKD's segmentation models (``models/deeplabv3.py``, ``models/pspnet.py``) are a dilated ResNet "v1s"
(``models/base_models/resnetv1b.py``: deep stem of three 3x3 convolutions 64-64-128, 1x1 strided
downsampling, output stride 8 with dilations 2 and 4) plus a DeepLabV3 head (``head.aspp.b0..b4``,
``head.aspp.project``, ``head.block``) or a PSPNet head (``head.psp.conv1..4``, ``head.block``,
``head.classifier``), and an auxiliary FCN head on c3 (``auxlayer``). Ours: timm's ResNet with
``stem_type=deep, stem_width=64`` (timm's ``resnet101s``) at output stride 8, which dilates exactly as
CIRKD does, and our ASPP / PSP heads (PSP with ``align_corners: true``, as CIRKD's pooling upsamples).

The depth (18/34/50/101/152), the head and its width and the number of classes are read from the
checkpoint's keys and shapes; every tensor is mapped by name and checked for shape, and a checkpoint
that does not fit stops with the keys that differ. The auxiliary head is not converted (a teacher is
only run for its outputs; CIRKD's is narrower than ours). CIRKD feeds BGR images in 0..255 minus the
mean (104.01, 116.67, 122.68): the first convolution's input channels are reordered to RGB and the
checkpoint's mean/std say the rest, so the teacher loader and evaluate.py feed it what it expects.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path
from typing import Any

import torch

from segdistill.checkpoint import save_model, sha256_of
from segdistill.config import ModelConfig
from segdistill.data import DatasetInfo
from segdistill.errors import ConfigError, command
from segdistill.models import build_model

# CIRKD's input: BGR in 0..255 minus this mean (BGR order), no std. Our models see RGB; after the first
# convolution's channels are flipped, the same map is (rgb01 - MEAN_RGB01) / (1 / 255).
CIRKD_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
MEAN_RGB01 = tuple(m / 255 for m in reversed(CIRKD_MEAN_BGR))
STD_01 = (1 / 255,) * 3
DEPTHS = {("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34, ("bottleneck", (3, 4, 6, 3)): 50,
          ("bottleneck", (3, 4, 23, 3)): 101, ("bottleneck", (3, 8, 36, 3)): 152}  # fmt: skip
DATASETS = ("cityscapes", "camvid", "voc", "ade20k", "cocostuff")

# (CIRKD key pattern, our key); applied in order, the first match wins.
DEEP_STEM = [(r"pretrained\.conv1\.", "backbone.body.conv1.0."), (r"pretrained\.bn1\.", "backbone.body.conv1.1."),
             (r"pretrained\.conv2\.", "backbone.body.conv1.3."), (r"pretrained\.bn2\.", "backbone.body.conv1.4."),
             (r"pretrained\.conv3\.", "backbone.body.conv1.6."), (r"pretrained\.bn3\.", "backbone.body.bn1.")]  # fmt: skip
PLAIN_STEM = [(r"pretrained\.conv1\.", "backbone.body.conv1."), (r"pretrained\.bn1\.", "backbone.body.bn1.")]
LAYERS = [(r"pretrained\.(layer\d\.)", r"backbone.body.\1")]
ASPP_HEAD = [(r"head\.aspp\.b0\.", "head.branches.0."), (r"head\.aspp\.b([123])\.block\.", r"head.branches.\1."),
             (r"head\.aspp\.b4\.gap\.1\.", "head.branches.4.conv.0."), (r"head\.aspp\.b4\.gap\.2\.", "head.branches.4.conv.1."),
             (r"head\.aspp\.project\.", "head.project."), (r"head\.block\.4\.", "head.classifier."),
             (r"head\.block\.([01])\.", r"head.bottleneck.\1.")]  # fmt: skip
PSP_HEAD = [(r"head\.psp\.conv([1-4])\.", lambda m: f"head.stages.{int(m.group(1)) - 1}."),
            (r"head\.block\.([01])\.", r"head.bottleneck.\1."), (r"head\.classifier\.", "head.classifier.")]  # fmt: skip
NOT_CONVERTED = (r"auxlayer\.", r"pretrained\.fc\.")  # auxiliary head; CIRKD's ResNet has no classifier, some forks do


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a CIRKD checkpoint (plain, or under 'state_dict' / 'model'; DDP's 'module.' dropped)."""
    if not path.is_file():
        raise ConfigError(f"CIRKD checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle that is not plain tensors, or not a torch file at all
        raise ConfigError(f"CIRKD checkpoint {str(path)!r} could not be read as a state dict (weights_only): {err}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"CIRKD checkpoint {str(path)!r} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def detect(state: dict[str, torch.Tensor], where: str) -> tuple[ModelConfig, int]:
    """Our model config and class count for a CIRKD state dict, from its keys and shapes."""
    if "head.aspp.b0.0.weight" in state:
        head, width, classes = "aspp", state["head.aspp.b0.0.weight"].shape[0], state["head.block.4.weight"].shape[0]
    elif "head.psp.conv1.0.weight" in state:
        head, width, classes = "psp", state["head.block.0.weight"].shape[0], state["head.classifier.weight"].shape[0]
    else:
        raise ConfigError(f"{where}: neither a CIRKD DeepLabV3 (head.aspp.*) nor a PSPNet (head.psp.*) checkpoint")
    blocks = tuple(len({k.split(".")[2] for k in state if k.startswith(f"pretrained.layer{i}.")}) for i in range(1, 5))
    kind = "bottleneck" if "pretrained.layer1.0.conv3.weight" in state else "basic"
    if (kind, blocks) not in DEPTHS:
        raise ConfigError(f"{where}: a ResNet with {kind} blocks {blocks} per stage is not ResNet-18/34/50/101/152")
    deep_stem = "pretrained.conv2.weight" in state
    cfg = ModelConfig(
        backbone=f"resnet{DEPTHS[kind, blocks]}",
        backbone_kwargs={"stem_type": "deep", "stem_width": 64} if deep_stem else {},
        head=head,
        output_stride=8,
        head_channels=int(width),
        head_kwargs={"align_corners": True} if head == "psp" else {},
        aux_head=False,
    )
    return cfg, int(classes)


def rename(key: str, rules: list) -> str | None:
    for pattern, target in rules:
        if re.match(pattern, key):
            return re.sub(pattern, target, key, count=1)
    return None


def convert_state(state: dict[str, torch.Tensor], model: torch.nn.Module, rules: list, where: str) -> tuple[dict, list[str]]:
    """Our state dict from CIRKD's (shape-checked; ConfigError listing every difference) and the keys left out."""
    own = model.state_dict()
    converted, dropped, problems = {}, [], []
    for key, tensor in state.items():
        if any(re.match(p, key) for p in NOT_CONVERTED):
            dropped.append(key)
            continue
        target = rename(key, rules)
        if target is None or target not in own:
            problems.append(f"checkpoint key {key!r} has no place in the model" + (f" (mapped to {target!r})" if target else ""))
        elif own[target].shape != tensor.shape:
            problems.append(f"{key!r} -> {target!r}: checkpoint {tuple(tensor.shape)} vs model {tuple(own[target].shape)}")
        else:
            converted[target] = tensor
    for key in own:  # BatchNorm's step counter is not a weight; checkpoints of old PyTorch versions lack it
        if key.endswith("num_batches_tracked") and key not in converted:
            converted[key] = own[key]
    problems += [f"model key {k!r} is not in the checkpoint" for k in own if k not in converted]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise ConfigError(f"{where} does not fit a CIRKD ResNet-v1s + DeepLabV3/PSPNet layout: {shown}")
    return converted, dropped


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ConfigError(f"--dataset {name!r}: expected one of {', '.join(DATASETS)}")
    module = importlib.import_module(f"segdistill.data.{name}")
    return DatasetInfo(name, module.CLASSES, module.PALETTE, module.IGNORE_INDEX)


def convert(checkpoint: str | Path, output: str | Path, dataset: str = "cityscapes") -> dict[str, Any]:
    """Write our checkpoint folder for a CIRKD checkpoint; returns its metadata."""
    checkpoint = Path(checkpoint)
    where = f"CIRKD checkpoint {str(checkpoint)!r}"
    state = read_state(checkpoint)
    cfg, classes = detect(state, where)
    info = dataset_info(dataset)
    if classes != info.num_classes:
        raise ConfigError(f"{where} predicts {classes} classes but dataset {dataset!r} has {info.num_classes}; pass --dataset")
    model = build_model(cfg, classes)
    stem = DEEP_STEM if cfg.backbone_kwargs else PLAIN_STEM
    converted, dropped = convert_state(state, model, [*stem, *LAYERS, *(ASPP_HEAD if cfg.head == "aspp" else PSP_HEAD)], where)
    first_conv = "backbone.body.conv1.0.weight" if cfg.backbone_kwargs else "backbone.body.conv1.weight"
    converted[first_conv] = converted[first_conv].flip(1)  # BGR -> RGB input channels
    model.load_state_dict(converted)
    data = {"name": dataset, "mean": list(MEAN_RGB01), "std": list(STD_01)}
    source = {"format": "cirkd", "file": str(checkpoint), "sha256": sha256_of(checkpoint), "not_converted": dropped}
    save_model(model, output, cfg, info, {"mean": list(MEAN_RGB01), "std": list(STD_01), "data": data, "source": source})
    return {"model": cfg, "classes": classes, "not_converted": dropped}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="CIRKD .pth file (a state dict, loaded with weights_only=True)")
    parser.add_argument("output", help="folder for model.safetensors + model.json")
    parser.add_argument("--dataset", default="cityscapes", help=f"the checkpoint's label set: {', '.join(DATASETS)}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    result = convert(args.checkpoint, args.output, args.dataset)
    cfg = result["model"]
    print(f"converted {args.checkpoint}: {cfg.backbone} (deep stem: {bool(cfg.backbone_kwargs)}) + {cfg.head} "
          f"{cfg.head_channels}, {result['classes']} classes -> {args.output}")  # fmt: skip
    print(f"not converted: {len(result['not_converted'])} tensors (auxiliary head): {', '.join(result['not_converted'][:4])} ...")
    return Path(args.output)


cli = command(main)


if __name__ == "__main__":
    sys.exit(cli())
