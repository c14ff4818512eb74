"""Images without labels, for pre-training (KDEP, distill/pretrain.py): every image under a folder,
searched recursively (e.g. ImageNet's train folder, or ../shared/data/camvid/train), or the images of
the built-in synthetic scenes. Items are uint8 tensors (3, H, W); augmentation is applied by
:class:`SeededViews` under a per-sample seed, so a resumed run sees the same views."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from segdistill.data.base import DatasetError, read_image
from segdistill.data.synthetic import SyntheticScenes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageFolder(Dataset):
    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"image folder {str(root)!r} does not exist")
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise DatasetError(f"image folder {str(root)!r} holds no images (searched recursively for {', '.join(IMAGE_SUFFIXES)})")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(read_image(self.files[index])).permute(2, 0, 1)


class SyntheticImages(Dataset):
    """The images of :class:`SyntheticScenes` (its labels unused)."""

    def __init__(self, scenes: SyntheticScenes) -> None:
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.scenes[index][0]


def view_transform(size: int, scale: tuple[float, float], hflip: bool, mean, std) -> v2.Compose:
    """RandomResizedCrop + horizontal flip + normalisation (the ImageNet recipe KDEP trains with)."""
    steps: list[v2.Transform] = [v2.RandomResizedCrop(size, scale=scale, antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


class SeededViews(Dataset):
    """Applies ``transform`` under the seed that comes with each key ``(index, seed)``."""

    def __init__(self, images: Dataset, transform: v2.Compose) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index, seed = key
        image = self.images[index]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.transform(image)
