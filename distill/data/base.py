"""A segmentation dataset on disk: a list of (image file, label file) pairs plus class metadata.

Every file problem a user can cause ends in a :class:`DatasetError` that names the file and says what
was expected: a missing root or split list, an unreadable image, a label whose size differs from its
image, label values outside the classes and the ignore index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from segdistill.errors import ConfigError
from segdistill.labels import resize_labels


class DatasetError(ConfigError):
    """A problem with dataset files on disk."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model trained on a dataset needs to know about it (saved in the student's metadata)."""

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The Pascal VOC colour map (bit-interleaved), a common choice for arbitrary class counts."""
    colours = []
    for index in range(num_classes):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def require_dir(path: Path, what: str, layout: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what}: folder {str(path)!r} does not exist. Expected layout:\n{layout}")
    return path


def read_image(path: Path) -> np.ndarray:
    """An RGB image as uint8 (H, W, 3)."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))  # a writable copy: tensors made from it may be changed in place
    except FileNotFoundError:
        raise DatasetError(f"image file {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"image file {str(path)!r} is corrupt or truncated ({err})") from None


def read_label(path: Path) -> np.ndarray:
    """A label image of class indices as uint8/uint16 (H, W); palette images give their indices."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(
                    f"label file {str(path)!r} has mode {img.mode!r}; expected a single-channel image of "
                    "class indices (mode L, P or I;16), not a colour rendering"
                )
            return np.asarray(img)
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"label file {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"label file {str(path)!r} is corrupt or truncated ({err})") from None


class SegmentationDataset(torch.utils.data.Dataset):
    """Image/label pairs on disk. ``label_map`` (a lookup table) turns stored values into train ids.

    Items are ``(image, label)``: a uint8 tensor (3, H, W) and an int64 tensor (H, W). Augmentation is
    applied by :class:`segdistill.data.loader.TransformedDataset`, not here.
    """

    def __init__(
        self,
        samples: list[tuple[Path, Path]],
        info: DatasetInfo,
        label_map: np.ndarray | None = None,
        resize: float = 1.0,
    ) -> None:
        if not samples:
            raise DatasetError(f"dataset {info.name!r} found no image/label pairs")
        self.samples = samples
        self.info = info
        self.label_map = label_map
        self.resize = resize

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.samples[index]
        image = read_image(image_path)
        label = self.read_train_ids(label_path)
        if image.shape[:2] != label.shape[:2]:
            raise DatasetError(
                f"label file {str(label_path)!r} is {label.shape[1]}x{label.shape[0]} but its image "
                f"{str(image_path)!r} is {image.shape[1]}x{image.shape[0]} (W x H); they must match"
            )
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        label_t = torch.from_numpy(label.astype(np.int64))
        if self.resize != 1.0:
            image_t, label_t = rescale(image_t, label_t, self.resize)
        return image_t, label_t

    def label(self, index: int) -> torch.Tensor:
        """Item ``index``'s label as ``self[index]`` gives it, without decoding the image (for label statistics)."""
        label_t = torch.from_numpy(self.read_train_ids(self.samples[index][1]).astype(np.int64))
        if self.resize != 1.0:
            label_t = resize_labels(label_t[None], scaled_size(label_t.shape, self.resize))[0]
        return label_t

    def read_train_ids(self, label_path: Path) -> np.ndarray:
        """The label file's values mapped to train ids and checked against the classes."""
        label = read_label(label_path)
        if self.label_map is not None:
            if label.max() >= len(self.label_map):
                raise DatasetError(f"label file {str(label_path)!r} has value {int(label.max())} beyond the label map")
            label = self.label_map[label]
        self.check_labels(label, label_path)
        return label

    def check_labels(self, label: np.ndarray, path: Path) -> None:
        values = np.unique(label)
        bad = [int(v) for v in values if v >= self.info.num_classes and v != self.info.ignore_index]
        if bad:
            raise DatasetError(
                f"label file {str(path)!r} contains values {bad[:10]} outside the {self.info.num_classes} "
                f"classes 0..{self.info.num_classes - 1} and the ignore index {self.info.ignore_index}"
            )


def rescale(image: torch.Tensor, label: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize an image (bilinear, antialiased) and its label (nearest) by ``factor``."""
    from torchvision.transforms.v2 import functional as F

    size = scaled_size(image.shape[-2:], factor)
    image = F.resize(image, size, interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    label = resize_labels(label[None], size)[0]
    return image, label


def scaled_size(size: Sequence[int], factor: float) -> list[int]:
    """(H, W) scaled by ``factor``, rounded, at least 1."""
    return [max(1, round(side * factor)) for side in size]


def pair_files(images: Iterable[Path], label_for: Callable[[Path], Path], layout: str) -> list[tuple[Path, Path]]:
    """(image, label) pairs in name order; an image without its label file is an error naming both."""
    samples = []
    for image in sorted(images):
        label = label_for(image)
        if not label.is_file():
            raise DatasetError(f"image {str(image)!r} has no label file {str(label)!r}. Expected layout:\n{layout}")
        samples.append((image, label))
    return samples


def read_split_list(list_file: Path, root: Path, layout: str) -> list[tuple[Path, Path]]:
    """A text file of lines ``image_path label_path`` relative to ``root``."""
    if not list_file.is_file():
        raise DatasetError(f"split list {str(list_file)!r} does not exist. Expected layout:\n{layout}")
    samples = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(f"{str(list_file)!r} line {number}: expected 'image_path label_path', got {line!r}")
        samples.append((root / parts[0].lstrip("/"), root / parts[1].lstrip("/")))
    return samples
