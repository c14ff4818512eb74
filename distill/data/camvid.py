"""CamVid in the SegNet layout: 11 classes, label 11 (Unlabelled) ignored."""

from __future__ import annotations

from pathlib import Path

from segdistill.data.base import DatasetInfo, SegmentationDataset, read_split_list, require_dir

CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist")
PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip
IGNORE_INDEX = 11
LAYOUT = """ROOT/
  train/ trainannot/ val/ valannot/ [test/ testannot/]   RGB images and single-channel label PNGs (0..11)
  train.txt val.txt [test.txt]   lines 'train/NAME.png trainannot/NAME.png' relative to ROOT"""


def camvid(root: str | Path, split: str, resize: float = 1.0) -> SegmentationDataset:
    root = require_dir(Path(root), "CamVid root", LAYOUT)
    samples = read_split_list(root / f"{split}.txt", root, LAYOUT)
    return SegmentationDataset(samples, DatasetInfo("camvid", CLASSES, PALETTE, IGNORE_INDEX), resize=resize)
