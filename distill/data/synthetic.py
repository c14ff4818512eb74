"""The built-in default dataset: procedural scenes, generated on the fly, deterministic per index.

Colour carries no class information: every region and object draws its colours from the same
distribution. What tells the classes apart is texture and context:

* sky / ground: smooth low-frequency texture above a wavy horizon, fine grain below it;
* five textured object classes: stripes with periods of 3, 4.5 and 7 pixels and checkerboards of
  3.5- and 6-pixel squares, at any orientation; neighbouring periods are close, so telling them apart
  takes more than a few filters;
* flyer / crawler: identical dotted blobs, labelled by whether they lie above or below the horizon,
  so telling them apart needs a receptive field that reaches the horizon.

Small networks (little context, few channels) confuse these; a larger one separates them, which is
what makes the teacher/student gap visible in a few minutes on a CPU.

Like human annotations, the training labels are imperfect: with probability ``label_noise`` an
object is labelled as another object class (validation and test labels are always clean). A teacher
trained on such labels predicts the majority answer, so its soft labels carry information the noisy
hard labels lack: the situation in which distillation is known to help.
"""

from __future__ import annotations

import numpy as np
import torch

from segdistill.data.base import DatasetInfo

# Object textures: (pattern, period in pixels). Similar periods make the classes hard to tell apart.
TEXTURES = {
    "fine stripes": ("stripes", 3.0),
    "medium stripes": ("stripes", 4.5),
    "coarse stripes": ("stripes", 7.0),
    "small checker": ("checker", 3.5),
    "large checker": ("checker", 6.0),
}
CLASSES = ("sky", "ground", *TEXTURES, "flyer", "crawler")
PALETTE = (
    (70, 130, 180), (152, 251, 152), (220, 20, 60), (255, 140, 0), (255, 0, 255), (106, 90, 205), (0, 255, 255),
    (255, 255, 0), (0, 0, 142),
)  # fmt: skip
FIRST_OBJECT = 2
FLYER, CRAWLER = len(CLASSES) - 2, len(CLASSES) - 1
IGNORE_INDEX = 255
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(40, 215, size=3)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled random grid in [0, 1]: low-frequency texture."""
    grid = torch.from_numpy(rng.uniform(0, 1, size=(1, 1, cells, cells)).astype(np.float32))
    up = torch.nn.functional.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True)
    return up[0, 0].numpy()


def _blend(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]


def render_scene(rng: np.random.Generator, h: int, w: int, label_noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One scene: float image (H, W, 3) in 0..255 and int64 labels (H, W); ``label_noise`` is the
    probability that an object is labelled as one of the other object classes."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase, amp, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.02, 0.08) * h, rng.uniform(1, 3)
    horizon = rng.uniform(0.3, 0.7) * h + amp * np.sin(2 * np.pi * freq * xx[0] / w + phase)
    below = yy >= horizon[None, :]

    sky = _blend(_colour(rng), _colour(rng), _smooth_noise(rng, h, w, 4))
    grain = np.clip(rng.normal(0.5, 0.25, size=(h, w)), 0, 1)
    ground = _blend(_colour(rng), _colour(rng), grain)
    image = np.where(below[..., None], ground, sky)
    label = below.astype(np.int64)  # 0 sky, 1 ground

    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(FIRST_OBJECT, FLYER + 1))  # a texture, or a dotted blob (flyer or crawler)
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
        if rng.uniform() < 0.5:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        angle = rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        if kind < FLYER:
            pattern_kind, period = TEXTURES[CLASSES[kind]]
            if pattern_kind == "stripes":
                pattern = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
            else:
                pattern = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
        else:
            pattern = np.zeros((h, w), np.float32)
            for _ in range(int(rng.integers(15, 30))):
                dy, dx = rng.uniform(-ry, ry), rng.uniform(-rx, rx)
                pattern[((yy - cy - dy) ** 2 + (xx - cx - dx) ** 2) <= rng.uniform(1.5, 2.5) ** 2] = 1.0
            above_horizon = cy < horizon[int(np.clip(cx, 0, w - 1))]
            kind = FLYER if above_horizon else CRAWLER
        image = np.where(inside[..., None], _blend(_colour(rng), _colour(rng), pattern), image)
        others = [k for k in range(FIRST_OBJECT, len(CLASSES)) if k != kind]
        relabel, other = rng.uniform() < label_noise, int(rng.choice(others))
        kind = other if relabel else kind  # both drawn always: the image does not depend on the noise
        label = np.where(inside, kind, label)

    contrast, brightness = rng.uniform(0.7, 1.3), rng.uniform(-25, 25)
    image = (image - 128) * contrast + 128 + brightness + rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255), label


class SyntheticScenes(torch.utils.data.Dataset):
    """``length`` scenes of size ``size`` (H, W); scene i of a split is the same on every machine."""

    def __init__(self, split: str, length: int, size: tuple[int, int], seed: int = 0, label_noise: float = 0.0) -> None:
        if split not in SPLIT_IDS:
            raise ValueError(f"synthetic split {split!r} unknown; choose one of {sorted(SPLIT_IDS)}")
        self.split_id, self.length, self.size, self.seed = SPLIT_IDS[split], length, tuple(size), seed
        self.label_noise = label_noise if split == "train" else 0.0
        self.info = DatasetInfo("synthetic", CLASSES, PALETTE, IGNORE_INDEX)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.split_id, index])
        image, label = render_scene(rng, *self.size, self.label_noise)
        return torch.from_numpy(image.astype(np.uint8)).permute(2, 0, 1).contiguous(), torch.from_numpy(label)

    def label(self, index: int) -> torch.Tensor:
        """Item ``index``'s label (the scene is drawn whole: the image and its label come from one draw)."""
        return self[index][1]
