"""Prediction over a whole image, by sliding window, and over several scales with flipping.

All modes return class scores at the input image's size. Multi-scale and flip average softmax
probabilities; a single pass returns upsampled logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    logits = model(images).logits
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def slide_logits(model: nn.Module, images: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Average the logits of overlapping crops (padded at the border when the image is smaller)."""
    b, _, h, w = images.shape
    ch, cw = crop
    sh, sw = stride
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    padded = F.pad(images, (0, pad_w, 0, pad_h))
    ph, pw = padded.shape[-2:]
    rows = max(-(-(ph - ch) // sh), 0) + 1
    cols = max(-(-(pw - cw) // sw), 0) + 1
    total = counts = None
    for r in range(rows):
        for c in range(cols):
            y0, x0 = min(r * sh, ph - ch), min(c * sw, pw - cw)
            out = _logits(model, padded[:, :, y0 : y0 + ch, x0 : x0 + cw])
            if total is None:
                total = images.new_zeros(b, out.shape[1], ph, pw)
                counts = images.new_zeros(1, 1, ph, pw)
            total[:, :, y0 : y0 + ch, x0 : x0 + cw] += out
            counts[:, :, y0 : y0 + ch, x0 : x0 + cw] += 1
    return (total / counts)[:, :, :h, :w]


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    mode: str = "whole",
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    scales: list[float] | tuple[float, ...] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """Class scores (B, K, H, W) at the size of ``images``."""

    def single(x: torch.Tensor) -> torch.Tensor:
        if mode == "slide":
            if crop is None:
                raise ValueError("sliding-window evaluation needs eval.crop_size")
            return slide_logits(model, x, crop, stride or (crop[0] * 2 // 3, crop[1] * 2 // 3))
        return _logits(model, x)

    if list(scales) == [1.0] and not flip:
        return single(images)
    h, w = images.shape[-2:]
    probs, count = 0, 0
    for scale in scales:
        x = images if scale == 1.0 else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        views = [x, x.flip(-1)] if flip else [x]
        for i, view in enumerate(views):
            out = single(view)
            out = out.flip(-1) if i == 1 else out
            probs = probs + F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False).softmax(1)
            count += 1
    return probs / count  # the average, as documented: still probabilities
