"""Pascal VOC 2012 with the SBD augmented labels: 20 object classes and background, border 255 ignored."""

from __future__ import annotations

from pathlib import Path

from segdistill.data.base import DatasetError, DatasetInfo, SegmentationDataset, default_palette, require_dir

CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
PALETTE = default_palette(len(CLASSES))  # the VOC colour map
IGNORE_INDEX = 255
LAYOUT = """ROOT/   (VOCdevkit/VOC2012)
  JPEGImages/ID.jpg
  SegmentationClassAug/ID.png   single-channel class indices 0..20, 255 = ignore
                                (SegmentationClass/ is used when SegmentationClassAug/ is absent)
  ImageSets/Segmentation/{train_aug,train,val,trainval}.txt   one image ID per line"""


def voc(root: str | Path, split: str, resize: float = 1.0) -> SegmentationDataset:
    root = require_dir(Path(root), "Pascal VOC root", LAYOUT)
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise DatasetError(f"split list {str(list_file)!r} does not exist. Expected layout:\n{LAYOUT}")
    label_dir = root / "SegmentationClassAug"
    if not label_dir.is_dir():
        label_dir = require_dir(root / "SegmentationClass", "Pascal VOC labels", LAYOUT)
    samples = []
    for line in list_file.read_text().splitlines():
        if not line.strip():
            continue
        # Lists in the DeepLab format ('/JPEGImages/ID.jpg /SegmentationClassAug/ID.png') name the ID too.
        image_id = Path(line.split()[0]).stem
        image, label = root / "JPEGImages" / f"{image_id}.jpg", label_dir / f"{image_id}.png"
        for path in (image, label):
            if not path.is_file():
                raise DatasetError(f"{str(list_file)!r} lists {image_id!r} but {str(path)!r} does not exist")
        samples.append((image, label))
    return SegmentationDataset(samples, DatasetInfo("voc", CLASSES, PALETTE, IGNORE_INDEX), resize=resize)
