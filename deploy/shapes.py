"""Input shapes as users write them (``1x3x512x1024``, always N x 3 x H x W whatever the layout) and
how they map onto an artifact's input tensor (NCHW float or NHWC uint8)."""

from __future__ import annotations

from dataclasses import dataclass

from distill.registry import ConfigError


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
