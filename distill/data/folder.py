"""A user's own data: a folder of images and a folder of single-channel index masks with the same names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from segdistill.data.base import DatasetError, DatasetInfo, SegmentationDataset, default_palette, require_dir
from segdistill.errors import ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
LAYOUT = """ROOT/
  images/SPLIT/NAME.{jpg,jpeg,png,bmp,tif}   RGB images
  masks/SPLIT/NAME.png                       single-channel class indices (data.classes), data.ignore_index"""


def _by_name(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in files:
                raise DatasetError(f"{str(files[path.stem])!r} and {str(path)!r} have the same name; keep one")
            files[path.stem] = path
    return files


def image_folder(
    root: str | Path, split: str, classes: Sequence[str] | None, ignore_index: int, resize: float = 1.0
) -> SegmentationDataset:
    if not classes:
        raise ConfigError("config key 'data.classes': the folder dataset needs the list of class names")
    if 0 <= ignore_index < len(classes):
        raise ConfigError(
            f"config key 'data.ignore_index': {ignore_index} is one of the {len(classes)} class indices; "
            f"use a value outside 0..{len(classes) - 1} (e.g. 255)"
        )
    root = require_dir(Path(root), "dataset root", LAYOUT)
    images = _by_name(require_dir(root / "images" / split, f"images of split {split!r}", LAYOUT), IMAGE_SUFFIXES)
    masks = _by_name(require_dir(root / "masks" / split, f"masks of split {split!r}", LAYOUT), (".png",))
    if unmasked := sorted(images.keys() - masks.keys()):
        mask = root / "masks" / split / f"{unmasked[0]}.png"
        raise DatasetError(
            f"image {str(images[unmasked[0]])!r} has no mask {str(mask)!r} ({len(unmasked)} images lack a mask)"
        )
    if orphans := sorted(masks.keys() - images.keys()):
        raise DatasetError(
            f"mask {str(masks[orphans[0]])!r} has no image of that name in {str(root / 'images' / split)!r} "
            f"({len(orphans)} masks lack an image)"
        )
    samples = [(images[name], masks[name]) for name in images]
    info = DatasetInfo("folder", tuple(classes), default_palette(len(classes)), ignore_index)
    return SegmentationDataset(samples, info, resize=resize)
