"""Pictures a person would rather look at than read: per-class IoU bars and prediction overlays."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from segdistill.atomic_files import atomic_write  # noqa: E402


def iou_bar_chart(classes: list[str], iou: list[float], title: str, path: Path) -> None:
    values = [0.0 if np.isnan(v) else 100 * v for v in iou]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(classes) + 2), 4))
    ax.bar(range(len(classes)), values, color="tab:blue")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    mean = float(np.nanmean(iou)) * 100
    ax.axhline(mean, color="tab:red", linestyle="--", label=f"mIoU {mean:.1f}")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


def colourise(labels: torch.Tensor, palette: list[list[int]], ignore_index: int) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8; ignored pixels are black."""
    table = np.zeros((max(ignore_index, len(palette)) + 1, 3), np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8)
    index = labels.cpu().numpy().astype(np.int64)
    index[(index >= len(table)) | (index < 0)] = ignore_index
    return table[index]


def overlay_strip(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, path: Path) -> None:
    """image | ground truth | prediction, side by side, with a 4-pixel white gap."""
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    strip = Image.fromarray(np.concatenate([image, gap, truth, gap, prediction], axis=1))
    atomic_write(path, strip.save)


def denormalise(image: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    """A normalised (3, H, W) tensor back to (H, W, 3) uint8."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return ((image.cpu() * s + m).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
