"""Heterogeneous teacher-student pairs: a CNN teacher with a hybrid (EfficientViT) student, and a transformer
(PVTv2) teacher with a CNN student. Every loss of the registry runs on them through the criterion: the
connectors adapt channels and strides, the values are finite and the gradient reaches the student."""

from __future__ import annotations

import pytest
import torch

from segdistill.config import LossConfig, ModelConfig
from segdistill.losses import LOSSES, LossContext, TaskLoss, build_criterion
from segdistill.models import build_model

K, IGNORE = 5, 255
# (backbone, head, head channels): the CNN dilates to stride 8 (c1..c4 at 4/8/8/8), the others keep 4/8/16/32;
# aspp and lraspp predict at stride 8, segformer at 4
PAIRS = {
    "cnn teacher, hybrid student": (("lcnet_050", "aspp", 24), ("efficientvit_b0", "segformer", 16)),
    "transformer teacher, cnn student": (("pvt_v2_b0", "segformer", 24), ("lcnet_050", "lraspp", 16)),
}
LOGIT_NAMES = ("logits", "aux_logits")
FEATURE_LOSSES = [name for name in LOSSES.names() if LOSSES.get(name).default_student not in LOGIT_NAMES]
LOGIT_LOSSES = [name for name in LOSSES.names() if LOSSES.get(name).default_student in LOGIT_NAMES]
# The knobs small maps need: the transformer's c4 is 2x2 at 64 px, below Af-DCD's default 4x4 pooling of 4x4
# patches, and its channel groups must divide the 24-channel head; CIRKD's queues are made small to be quick.
PARAMS = {
    "afdcd": {"pool": 1, "patch": 2, "groups": 8},
    "cirkd_memory": {"pixel_memory": 64, "region_memory": 16, "pixel_contrast": 32, "region_contrast": 16},
}
CASES = [
    *[(pair, name, tensor) for pair in PAIRS for name in FEATURE_LOSSES for tensor in ("c4", "head")],
    *[(pair, name, "logits") for pair in PAIRS for name in LOGIT_LOSSES],
    *[(pair, "cwd", "head") for pair in PAIRS],  # CWD also distils features, through its adapter
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Af-DCD and MGD draw random masks: a 2x2 map can be masked whole, which no gradient passes; fix the draw."""
    torch.manual_seed(0)


def model(spec: tuple[str, str, int]) -> torch.nn.Module:
    backbone, head, channels = spec
    return build_model(ModelConfig(backbone=backbone, head=head, head_channels=channels), K)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, LossContext]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, K, (2, 64, 64), generator=generator)
    labels[:, :8] = IGNORE
    return torch.randn(2, 3, 64, 64, generator=generator), LossContext(labels, IGNORE, K)


@pytest.fixture(scope="module")
def pairs(batch) -> dict:
    """Each pair's student (training mode) and its teacher's output on the batch (frozen, eval mode)."""
    torch.manual_seed(0)
    built = {}
    for pair, (teacher_spec, student_spec) in PAIRS.items():
        teacher = model(teacher_spec).eval()
        with torch.no_grad():
            built[pair] = (model(student_spec), teacher(batch[0]))
    return built


def test_the_pairs_differ_in_channels_and_strides(pairs, batch) -> None:
    for student, t_out in pairs.values():
        s_out = student(batch[0])
        for name in ("c4", "head", "logits"):
            s, t = s_out.tensor(name), t_out.tensor(name)
            assert s.shape[-2:] != t.shape[-2:], name
        assert s_out.tensor("head").shape[1] != t_out.tensor("head").shape[1]


@pytest.mark.parametrize(("pair", "name", "tensor"), CASES)
def test_every_loss_adapts_channels_and_strides(pair: str, name: str, tensor: str, pairs, batch) -> None:
    student, t_out = pairs[pair]
    images, context = batch
    student.zero_grad(set_to_none=True)
    s_out = student(images)
    cfg = LossConfig(name=name, student=tensor, teacher=tensor, params=PARAMS.get(name, {}))
    criterion = build_criterion([cfg], TaskLoss(IGNORE), s_out, t_out)
    parts = {label: value for label, value in criterion(s_out, t_out, context).items() if label.startswith(name)}
    assert parts and all(torch.isfinite(v) for v in parts.values()), parts
    sum(parts.values()).backward()
    first_stage = next(p for p in student.backbone.parameters() if p.requires_grad)
    assert first_stage.grad is not None and first_stage.grad.abs().sum() > 0
    adversary = criterion.adversary()
    if adversary is not None:
        assert all(torch.isfinite(v) for v in adversary(s_out, t_out).values())
