"""Adaptive average pooling in a form whose ONNX graph is right at every input size.

``torch.onnx.export`` lowers ``adaptive_avg_pool2d`` (PSPNet's pyramid bins 1, 2, 3, 6; torchvision's
ASPP image pooling) to windows computed for the export shape: the graph exports without complaint and
is then wrong or fails ("indices element out of data bounds") at another shape. Here each output bin
is an average over the rows ``[floor(i H / b), ceil((i + 1) H / b))`` (PyTorch's definition) written as
a matrix built from the runtime size, so pooling is two matrix products whatever H and W are.

timm's TensorFlow-style "same" padding (EfficientNet ``tf_*`` convolutions, the ``AvgPool2dSame`` of a
dilated ResNet-D downsample such as resnet10t's) computes ``math.ceil(size / stride)``; on a symbolic
size ``torch.export`` records ``math.ceil``, which its serializer rejects (``SerializeError``), so a
dynamic ``.pt2`` cannot be saved. The same integer as a floor division serializes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import timm.layers.padding
import torch
import torch.nn.functional as F


def pooling_matrix(size: int | torch.SymInt, bins: int, dtype: torch.dtype) -> torch.Tensor:
    """(bins, size): row i averages the input positions of output bin i."""
    index = torch.arange(bins)
    start = torch.div(index * size, bins, rounding_mode="floor")
    end = torch.div((index + 1) * size + bins - 1, bins, rounding_mode="floor")
    position = torch.arange(size)
    inside = (position[None, :] >= start[:, None]) & (position[None, :] < end[:, None])
    return inside.to(dtype) / (end - start)[:, None].to(dtype)


def adaptive_avg_pool2d_matmul(x: torch.Tensor, output_size: int | tuple[int | None, int | None]) -> torch.Tensor:
    """Equal to ``F.adaptive_avg_pool2d(x, output_size)`` for (N, C, H, W) or (C, H, W) inputs."""
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    height, width = x.shape[-2:]
    rows = pooling_matrix(height, height if out_h is None else out_h, x.dtype)
    cols = pooling_matrix(width, width if out_w is None else out_w, x.dtype)
    # F.linear multiplies the last dimension; it exports as MatMul without batch-size guards.
    return F.linear(F.linear(x, cols).transpose(-1, -2), rows).transpose(-1, -2)


@contextlib.contextmanager
def shape_generic_pooling() -> Iterator[None]:
    """While tracing for export, every ``adaptive_avg_pool2d`` (functional or ``nn.AdaptiveAvgPool2d``,
    which calls it) becomes :func:`adaptive_avg_pool2d_matmul`."""
    original = F.adaptive_avg_pool2d
    F.adaptive_avg_pool2d = adaptive_avg_pool2d_matmul
    try:
        yield
    finally:
        F.adaptive_avg_pool2d = original


def same_padding(size: int | torch.SymInt, kernel_size: int, stride: int, dilation: int) -> int | torch.SymInt:
    """timm's ``get_same_padding`` for integer sizes, with ceil(size / stride) as a floor division."""
    pad = ((size + stride - 1) // stride - 1) * stride + (kernel_size - 1) * dilation + 1 - size
    # stride * ceil(size / stride) >= size, so a kernel at least as wide as its stride never needs the
    # max(0, ...); leaving it out keeps the symbolic sizes short (a .pt2 full of max() loads slowly).
    return pad if (kernel_size - 1) * dilation + 1 >= stride else max(pad, 0)


@contextlib.contextmanager
def shape_generic_padding() -> Iterator[None]:
    """While tracing for ``torch.export``, timm's "same" padding uses :func:`same_padding`."""
    original = timm.layers.padding.get_same_padding
    timm.layers.padding.get_same_padding = same_padding
    try:
        yield
    finally:
        timm.layers.padding.get_same_padding = original
