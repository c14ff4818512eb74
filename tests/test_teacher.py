"""The frozen teacher: no gradients, eval mode, and fed the input normalisation it was trained with."""

from __future__ import annotations

from pathlib import Path

import torch

from segdistill.checkpoint import save_model
from segdistill.config import DataConfig, ModelConfig, TeacherConfig
from segdistill.data.base import DatasetInfo
from segdistill.data.synthetic import CLASSES, IGNORE_INDEX, PALETTE
from segdistill.models import build_model
from segdistill.teacher import Renormalize, build_teacher

INFO = DatasetInfo("synthetic", CLASSES, PALETTE, IGNORE_INDEX)
MODEL = ModelConfig(backbone="lcnet_050", head="fcn", head_channels=16, output_stride=8)
HALF = (0.5, 0.5, 0.5)


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def saved_teacher(tmp_path: Path, mean, std) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_model(MODEL, INFO.num_classes).eval()
    save_model(model, tmp_path / "teacher", MODEL, INFO, {"mean": list(mean), "std": list(std)})
    return model, tmp_path / "teacher"


def test_teacher_sees_its_own_normalisation(tmp_path: Path) -> None:
    """A teacher trained with 0.5 / 0.5 gets exactly the input it was trained on, while the student's
    data pipeline normalises with ImageNet statistics."""
    model, path = saved_teacher(tmp_path, HALF, HALF)
    data = DataConfig()  # ImageNet mean / std
    teacher = build_teacher(TeacherConfig(checkpoint=str(path)), INFO, data)
    assert isinstance(teacher, Renormalize) and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    seen = []
    teacher.model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        got = teacher(normalise(images, data.mean, data.std)).logits
    torch.testing.assert_close(seen[0], normalise(images, HALF, HALF), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(got, model(normalise(images, HALF, HALF)).logits)


def test_same_normalisation_needs_no_wrapper_and_config_overrides_metadata(tmp_path: Path) -> None:
    data = DataConfig()
    _, path = saved_teacher(tmp_path, data.mean, data.std)
    assert not isinstance(build_teacher(TeacherConfig(checkpoint=str(path)), INFO, data), Renormalize)
    forced = build_teacher(TeacherConfig(checkpoint=str(path), mean=HALF, std=HALF), INFO, data)
    assert isinstance(forced, Renormalize)
    torch.testing.assert_close(forced.scale.flatten(), torch.tensor(data.std) / 0.5)
