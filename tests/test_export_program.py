"""torch.export programs (.pt2) with every dimension dynamic, for each backbone family the project builds;
and a program torch.export cannot write is refused in one message, leaving the file already there."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from segdistill.deploy.artifact import read_artifact_info
from segdistill.deploy.shapes import ImageShape, ShapeRange, parse_shape
from segdistill.deploy.wrapper import DeployModel
from segdistill.errors import ConfigError
from segdistill.export import to_torchscript
from tests.test_export import PARITY, save_student

BACKBONES = [
    ("resnet10t", 8),  # timm ResNet-D: its dilated average-pool downsample pads "same" (math.ceil)
    ("tf_efficientnet_lite0", 8),  # TensorFlow "same" padding in its stride-2 convolutions
    ("mobilenetv2_100", 8),
    ("lcnet_050", 8),
    ("torchvision:resnet18", 32),  # torchvision's BasicBlock cannot be dilated
]


@pytest.mark.parametrize(("backbone", "output_stride"), BACKBONES)
def test_dynamic_program_for_every_backbone_family(tmp_path: Path, backbone: str, output_stride: int) -> None:
    checkpoint = save_student(tmp_path, "fcn", seed=7, backbone=backbone, output_stride=output_stride)
    argv = ["--checkpoint", str(checkpoint), "--dynamic", "batch,height,width", "--formats", "export", *PARITY]
    (report,) = to_torchscript.main(argv)
    assert report.passed, report.table()
    # Checked at the export shape and every corner of the range the program's sidecar vouches for.
    info = read_artifact_info(checkpoint / "export" / "model.pt2")
    vouched = ShapeRange(*(parse_shape(info.shape_range[k], k) for k in ("min", "opt", "max")))
    checked = {c.shape for c in report.checks if c.inputs.endswith("resized")}
    assert {str(s) for s in [vouched.opt, *vouched.corners()]} <= checked and vouched.min != vouched.max


class CeilCrop(nn.Module):
    """A model torch.export cannot write, in one line: ``math.ceil`` on a symbolic size does not serialize."""

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=x[..., : math.ceil(x.shape[-1] / 2)])


def test_a_program_that_cannot_be_written_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    path.write_bytes(b"a good program from an earlier export")
    model = DeployModel(CeilCrop(), [0.5] * 3, [0.5] * 3)
    with pytest.raises(ConfigError, match=r"cannot write a dynamic \(width\) program of ceil-crop, so .* is left as it was"):
        to_torchscript.export_program(model, ImageShape(1, 8, 12), {"width"}, path, "ceil-crop")
    assert path.read_bytes() == b"a good program from an earlier export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]
