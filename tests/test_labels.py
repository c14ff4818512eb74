"""The one label resizer (``segdistill.labels``): PyTorch's legacy nearest, ``lab[floor(i*H/h), floor(j*W/w)]``,
for the losses, the data's rescaling and the scoring of deployed predictions; and no other module resizes labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segdistill.labels import resize_labels
from tests.test_layers import module_files


@pytest.mark.parametrize(("size", "to"), [((7, 8), (3, 3)), ((12, 9), (4, 3)), ((3, 5), (7, 11))])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_labels_take_the_top_left_pixel_of_each_cell(size: tuple[int, int], to: tuple[int, int], dtype: torch.dtype) -> None:
    labels = torch.randint(0, 256, (2, *size), generator=torch.Generator().manual_seed(0)).to(dtype)
    (big_h, big_w), (h, w) = size, to
    expected = np.array([[[int(lab[(i * big_h) // h, (j * big_w) // w]) for j in range(w)] for i in range(h)] for lab in labels])
    resized = resize_labels(labels, to)
    assert resized.dtype == torch.int64
    np.testing.assert_array_equal(resized.numpy(), expected)
    assert resize_labels(labels, size).dtype == torch.int64 and torch.equal(resize_labels(labels, size), labels.long())


def test_no_other_module_resizes_labels() -> None:
    others = [name for name, path in module_files().items() if name != "segdistill.labels"
              and any(way in path.read_text() for way in ('mode="nearest"', "InterpolationMode.NEAREST"))]  # fmt: skip
    assert others == []
