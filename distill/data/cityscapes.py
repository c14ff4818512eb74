"""Cityscapes, fine annotations: the 34 stored label ids mapped to the 19 train ids, the rest ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdistill.data.base import DatasetInfo, SegmentationDataset, pair_files, require_dir

CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip
IGNORE_INDEX = 255
# labelId -> trainId, as in cityscapesScripts (helpers/labels.py). Every other stored value (void classes,
# parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer, license plate) is ignored.
TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
LAYOUT = """ROOT/
  leftImg8bit/{train,val,test}/CITY/NAME_leftImg8bit.png   RGB images
  gtFine/{train,val,test}/CITY/NAME_gtFine_labelIds.png    label ids 0..33 (mapped to the 19 train ids)"""


def label_map() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in TRAIN_IDS.items():
        table[label_id] = train_id
    return table


def cityscapes(root: str | Path, split: str, resize: float = 1.0) -> SegmentationDataset:
    root = require_dir(Path(root), "Cityscapes root", LAYOUT)
    image_dir = require_dir(root / "leftImg8bit" / split, f"Cityscapes images of split {split!r}", LAYOUT)
    label_dir = require_dir(root / "gtFine" / split, f"Cityscapes labels of split {split!r}", LAYOUT)
    samples = pair_files(
        image_dir.glob("*/*_leftImg8bit.png"),
        lambda image: label_dir / image.parent.name / image.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"),
        LAYOUT,
    )
    info = DatasetInfo("cityscapes", CLASSES, PALETTE, IGNORE_INDEX)
    return SegmentationDataset(samples, info, label_map(), resize)
