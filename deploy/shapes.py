"""Input shapes as users write them (``1x3x512x1024``, always N x 3 x H x W whatever the layout) and
how they map onto an artifact's input tensor (NCHW float or NHWC uint8)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from segdistill.errors import ConfigError


@dataclass(frozen=True)
class ImageShape:
    """A batch of ``batch`` images of ``height`` x ``width`` pixels."""

    batch: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.batch}x3x{self.height}x{self.width}"

    def tensor_shape(self, layout: str) -> tuple[int, int, int, int]:
        if layout == "NHWC":
            return (self.batch, self.height, self.width, 3)
        return (self.batch, 3, self.height, self.width)


def parse_shape(text: str, where: str = "--shape") -> ImageShape:
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or values[1] != 3 or min(values) < 1:
        raise ConfigError(f"{where}: {text!r} is not a shape N x 3 x H x W such as 1x3x512x1024")
    return ImageShape(values[0], values[2], values[3])


def accepts(spec_shape: list[int | str], layout: str, shape: ImageShape) -> bool:
    """Whether an input declared as ``spec_shape`` (strings = dynamic) accepts ``shape``."""
    wanted = shape.tensor_shape(layout)
    return len(spec_shape) == 4 and all(isinstance(d, str) or d == w for d, w in zip(spec_shape, wanted, strict=True))


@dataclass(frozen=True)
class ShapeRange:
    """The shapes an artifact vouches for: every dimension between ``min`` and ``max`` (its parity gate
    checked the corners of that box and ``opt``, the export shape)."""

    min: ImageShape
    opt: ImageShape
    max: ImageShape

    def to_dict(self) -> dict[str, str]:
        return {"min": str(self.min), "opt": str(self.opt), "max": str(self.max)}

    def corners(self) -> list[ImageShape]:
        """Every combination of the smallest and largest value of each dimension (once each)."""
        corners = [
            ImageShape(n, h, w)
            for n in (self.min.batch, self.max.batch)
            for h in (self.min.height, self.max.height)
            for w in (self.min.width, self.max.width)
        ]
        return list(dict.fromkeys(corners))


def default_range(export: ImageShape, dynamic: set[str]) -> ShapeRange:
    """For each dynamic dimension: a batch of 1 to twice the export batch, and 3/4 to 4/3 of the export
    height and width (an INT8 graph calibrated at one size drifts away from it; wider with --shape-range,
    then gated there too); the fixed dimensions keep their value."""
    low = ImageShape(
        1 if "batch" in dynamic else export.batch,
        max(1, export.height * 3 // 4) if "height" in dynamic else export.height,
        max(1, export.width * 3 // 4) if "width" in dynamic else export.width,
    )
    high = ImageShape(
        2 * export.batch if "batch" in dynamic else export.batch,
        export.height * 4 // 3 if "height" in dynamic else export.height,
        export.width * 4 // 3 if "width" in dynamic else export.width,
    )
    return ShapeRange(low, export, high)


def parse_range(text: str, export: ImageShape, where: str = "--shape-range") -> ShapeRange:
    """``MIN/MAX`` (N x 3 x H x W each) around the export shape."""
    parts = text.split("/")
    if len(parts) != 2:
        raise ConfigError(f"{where} {text!r}: expected MIN/MAX, e.g. 1x3x90x120/2x3x360x480")
    low, high = (parse_shape(p, where) for p in parts)
    dims = [dataclasses.astuple(s) for s in (low, export, high)]
    if not all(a <= b <= c for a, b, c in zip(*dims, strict=True)):
        raise ConfigError(f"{where} {text!r}: each dimension must satisfy MIN <= the export shape {export} <= MAX")
    return ShapeRange(low, export, high)
