"""COCO-Stuff-164k: 80 thing and 91 stuff classes (171), 255 unlabeled.

The raw stuffthingmaps PNGs store the COCO category id minus one (0 = person, ..., 90 = id 91, 91..181 =
stuff ids 92..182), 255 = unlabeled. Eleven of those values belong to COCO ids that were never annotated
(ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91, i.e. stored values 11, 25, 28, 29, 44, 65, 67, 68, 70,
82, 90); the remaining 171 values are renumbered 0..170 in order, as the mmsegmentation conversion does.
Converted ``*_labelTrainIds.png`` files already hold those train ids and are used when present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdistill.data.base import DatasetError, DatasetInfo, SegmentationDataset, pair_files, require_dir

CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge", "building-other",
    "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes",
    "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other",
    "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip
# mmsegmentation's COCO-Stuff palette (it repeats a few colours).
PALETTE = (
    (0, 192, 64), (0, 192, 64), (0, 64, 96), (128, 192, 192), (0, 64, 64), (0, 192, 224), (0, 192, 192),
    (128, 192, 64), (0, 192, 96), (128, 192, 64), (128, 32, 192), (0, 0, 224), (0, 0, 64), (0, 160, 192),
    (128, 0, 96), (128, 0, 192), (0, 32, 192), (128, 128, 224), (0, 0, 192), (128, 160, 192),
    (128, 128, 0), (128, 0, 32), (128, 32, 0), (128, 0, 128), (64, 128, 32), (0, 160, 0), (0, 0, 0),
    (192, 128, 160), (0, 32, 0), (0, 128, 128), (64, 128, 160), (128, 160, 0), (0, 128, 0), (192, 128, 32),
    (128, 96, 128), (0, 0, 128), (64, 0, 32), (0, 224, 128), (128, 0, 0), (192, 0, 160), (0, 96, 128),
    (128, 128, 128), (64, 0, 160), (128, 224, 128), (128, 128, 64), (192, 0, 32), (128, 96, 0),
    (128, 0, 192), (0, 128, 32), (64, 224, 0), (0, 0, 64), (128, 128, 160), (64, 96, 0), (0, 128, 192),
    (0, 128, 160), (192, 224, 0), (0, 128, 64), (128, 128, 32), (192, 32, 128), (0, 64, 192), (0, 0, 32),
    (64, 160, 128), (128, 64, 64), (128, 0, 160), (64, 32, 128), (128, 192, 192), (0, 0, 160),
    (192, 160, 128), (128, 192, 0), (128, 0, 96), (192, 32, 0), (128, 64, 128), (64, 128, 96),
    (64, 160, 0), (0, 64, 0), (192, 128, 224), (64, 32, 0), (0, 192, 128), (64, 128, 224), (192, 160, 0),
    (0, 192, 0), (192, 128, 96), (192, 96, 128), (0, 64, 128), (64, 0, 96), (64, 224, 128), (128, 64, 0),
    (192, 0, 224), (64, 96, 128), (128, 192, 128), (64, 0, 224), (192, 224, 128), (128, 192, 64),
    (192, 0, 96), (192, 96, 0), (128, 64, 192), (0, 128, 96), (0, 224, 0), (64, 64, 64), (128, 128, 224),
    (0, 96, 0), (64, 192, 192), (0, 128, 224), (128, 224, 0), (64, 192, 64), (128, 128, 96),
    (128, 32, 128), (64, 0, 192), (0, 64, 96), (0, 160, 128), (192, 0, 64), (128, 64, 224), (0, 32, 128),
    (192, 128, 192), (0, 64, 224), (128, 160, 128), (192, 128, 0), (128, 64, 32), (128, 32, 64),
    (192, 0, 128), (64, 192, 32), (0, 160, 64), (64, 0, 0), (192, 192, 160), (0, 32, 64), (64, 128, 128),
    (64, 192, 160), (128, 160, 64), (64, 128, 0), (192, 192, 32), (128, 96, 192), (64, 0, 128),
    (64, 64, 32), (0, 224, 192), (192, 0, 0), (192, 64, 160), (0, 96, 192), (192, 128, 128), (64, 64, 160),
    (128, 224, 192), (192, 128, 64), (192, 64, 32), (128, 96, 64), (192, 0, 192), (0, 192, 32),
    (64, 224, 64), (64, 0, 64), (128, 192, 160), (64, 96, 64), (64, 128, 192), (0, 192, 160),
    (192, 224, 64), (64, 128, 64), (128, 192, 32), (192, 32, 192), (64, 64, 192), (0, 64, 32),
    (64, 160, 192), (192, 64, 64), (128, 64, 160), (64, 32, 192), (192, 192, 192), (0, 64, 160),
    (192, 160, 192), (192, 192, 0), (128, 64, 96), (192, 32, 64), (192, 64, 128), (64, 192, 96),
    (64, 160, 64), (64, 64, 0),
)  # fmt: skip
IGNORE_INDEX = 255
UNUSED_STORED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)  # COCO category ids minus one
NUM_STORED_IDS = 182
SPLITS = {"train": "train2017", "val": "val2017", "train2017": "train2017", "val2017": "val2017"}
LAYOUT = """ROOT/
  images/{train2017,val2017}/NAME.jpg
  annotations/{train2017,val2017}/NAME_labelTrainIds.png   train ids 0..170, 255 = unlabeled (preferred)
                               or /NAME.png                raw stuffthingmaps: COCO id - 1 (0..181), 255 = unlabeled"""


def label_map() -> np.ndarray:
    """Stored value -> train id; the unused ids are ignored, values past 181 pass unchanged to be reported."""
    table = np.arange(256, dtype=np.uint8)
    used = [v for v in range(NUM_STORED_IDS) if v not in UNUSED_STORED_IDS]
    table[:NUM_STORED_IDS] = IGNORE_INDEX
    table[used] = np.arange(len(used))
    return table


def cocostuff(root: str | Path, split: str, resize: float = 1.0) -> SegmentationDataset:
    if split not in SPLITS:
        raise DatasetError(f"COCO-Stuff split {split!r} unknown; choose one of {', '.join(SPLITS)}")
    root = require_dir(Path(root), "COCO-Stuff root", LAYOUT)
    folder = SPLITS[split]
    image_dir = require_dir(root / "images" / folder, f"COCO-Stuff images of split {split!r}", LAYOUT)
    label_dir = require_dir(root / "annotations" / folder, f"COCO-Stuff labels of split {split!r}", LAYOUT)
    converted = any(label_dir.glob("*_labelTrainIds.png"))
    suffix = "_labelTrainIds.png" if converted else ".png"
    samples = pair_files(image_dir.glob("*.jpg"), lambda image: label_dir / f"{image.stem}{suffix}", LAYOUT)
    info = DatasetInfo("cocostuff", CLASSES, PALETTE, IGNORE_INDEX)
    return SegmentationDataset(samples, info, None if converted else label_map(), resize)
