"""Every preset under configs/ loads (collecting DISTILLATION_PRESETS loads each; load_config checks loss names
and the teacher), and each distillation preset builds the student, the teacher of the preset that trains it, and
every loss from a dry-run forward of both."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from segdistill.config import Config, ModelConfig, load_config
from segdistill.losses import TaskLoss, build_criterion
from segdistill.models import SegOutput, build_model
from segdistill.study.space import load_space
from tests.helpers import ROOT


def is_search_space(path: Path) -> bool:
    """A search space of study/sweep.py (configs/protocol/stage*.yaml ...): a 'sampler' at the top."""
    return "sampler" in (yaml.safe_load(path.read_text()) or {})


# Not training configs: configs/kdep/ holds pre-training configs (distill/pretrain.py, checked in
# tests/test_pretrain.py); search spaces are loaded as spaces below.
SPACES = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if is_search_space(p))
PRESETS = sorted(
    p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "kdep" and p not in SPACES
)
NUM_CLASSES = 5  # any class count: the shapes the losses check do not depend on it
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights"  # the presets' model.pretrained files (../shared/weights)
PROBE_SIZE = 128  # c4 of an output-stride-8 model: 16x16, enough for Af-DCD's 4x4 pool + 4x4 patches


def preset_id(path: Path) -> str:
    return str(path.relative_to(ROOT / "configs"))


def load(path: Path) -> Config:
    return load_config(path, ["model.pretrained=null"])


def test_there_are_presets_for_every_dataset() -> None:
    folders = {p.parent.name for p in PRESETS}
    assert {"demo", "camvid", "cityscapes", "ade20k", "voc", "cocostuff"} <= folders


@pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason=f"no local ImageNet weights folder at {SHARED_WEIGHTS}")
@pytest.mark.parametrize("path", PRESETS, ids=preset_id)
def test_preset_weights_files_exist(path: Path) -> None:
    load_config(path)  # ConfigError when a model.pretrained file (../shared/weights/...) is missing


@pytest.mark.parametrize("path", SPACES, ids=preset_id)
def test_search_space_loads(path: Path) -> None:
    assert load_space(path).as_dict()


def trained_by() -> dict[str, Path]:
    """Checkpoint folder -> the preset whose run writes it (its output_dir/final)."""
    return {str(Path(load(p).output_dir) / "final"): p for p in PRESETS}


_outputs: dict[str, SegOutput] = {}


def dry_run(model: ModelConfig) -> SegOutput:
    """The outputs of one forward of a randomly initialised model (cached: teachers recur across presets)."""
    key = repr(model)
    if key not in _outputs:
        torch.manual_seed(0)
        net = build_model(model, NUM_CLASSES).eval()
        with torch.no_grad():
            _outputs[key] = net(torch.randn(2, 3, PROBE_SIZE, PROBE_SIZE))
    return _outputs[key]


DISTILLATION_PRESETS = [p for p in PRESETS if load(p).losses]


@pytest.mark.parametrize("path", DISTILLATION_PRESETS, ids=preset_id)
def test_distillation_preset_builds_its_losses(path: Path) -> None:
    cfg = load(path)
    teacher_preset = trained_by().get(cfg.teacher.checkpoint)
    assert teacher_preset is not None, f"no preset under configs/ trains the teacher {cfg.teacher.checkpoint!r}"
    teacher_cfg = load(teacher_preset)
    assert not teacher_cfg.losses and teacher_cfg.data.name == cfg.data.name
    criterion = build_criterion(cfg.losses, TaskLoss(255), dry_run(cfg.model), dry_run(teacher_cfg.model))
    assert len(criterion.terms) == len(cfg.losses)
