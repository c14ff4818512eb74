"""Pixel-wise KD (docs/loss_math.md §1) against an independent computation, the task loss, and the criterion that
binds losses to named tensors.

Pixel KD sums its KLs through ``kernels.class_softmax_kl`` (float32 for float32 inputs, float64 for float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from segdistill.config import LossConfig, ModelConfig
from segdistill.errors import ConfigError
from segdistill.losses import LossContext, TaskLoss, build_criterion
from segdistill.losses.pixel_kd import PixelKD, PixelKDParams
from segdistill.models import SegOutput, build_model

IGNORE = 255
NORMALIZATIONS = ("pixel_mean", "batch_sum", "element_mean")


def pixel_kd(
    student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0, normalization: str = "pixel_mean"
) -> torch.Tensor:
    loss = PixelKD(PixelKDParams(tau=tau, normalization=normalization), student.shape, teacher.shape)
    context = LossContext(torch.zeros(student.shape[0], 1, 1, dtype=torch.long), IGNORE, student.shape[1])
    return loss(student, teacher, context)


def softmax_np(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def reference_pixel_kd(student: np.ndarray, teacher: np.ndarray, tau: float, normalization: str) -> float:
    """docs/loss_math.md §1, written out pixel by pixel (float64)."""
    b, k, h, w = teacher.shape
    kls = []
    for n in range(b):
        for y in range(h):
            for x in range(w):
                q_t = softmax_np(teacher[n, :, y, x] / tau)
                q_s = softmax_np(student[n, :, y, x] / tau)
                kls.append(sum(q_t[c] * (math.log(q_t[c]) - math.log(q_s[c])) for c in range(k)))
    mean_kl = sum(kls) / len(kls)  # per-pixel mean over the P = B*h*w pixels
    if normalization == "pixel_mean":  # CIRKD: batchmean KL on (P, K) x tau^2
        return tau**2 * mean_kl
    if normalization == "batch_sum":  # SKD: sum over the batch / (h*w) = B x pixel_mean
        return b * tau**2 * mean_kl
    return mean_kl / k  # nn.KLDivLoss() legacy mean over B*K*h*w elements, no tau^2


def logits_pair(
    seed: int = 0, shape: tuple[int, ...] = (2, 3, 2, 2), scale: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=g, dtype=torch.float64), scale * torch.randn(
        shape, generator=g, dtype=torch.float64
    )


# ----------------------------------------------------------------------------------------------------
# PixelKD


@pytest.mark.parametrize("tau", [1.0, 4.0])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_pixel_kd_matches_the_formula(normalization: str, tau: float) -> None:
    student, teacher = logits_pair()
    expected = reference_pixel_kd(student.numpy(), teacher.numpy(), tau, normalization)
    assert expected > 0
    for dtype, rel in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        got = pixel_kd(student.to(dtype), teacher.to(dtype), tau, normalization)
        assert got.dim() == 0 and got.dtype == dtype
        assert float(got) == pytest.approx(expected, rel=rel)


def test_normalizations_relate_as_documented() -> None:
    student, teacher = logits_pair(seed=3, shape=(2, 3, 2, 2))
    b, k = 2, 3
    for tau in (1.0, 4.0):
        pixel_mean = float(pixel_kd(student, teacher, tau, "pixel_mean"))
        assert float(pixel_kd(student, teacher, tau, "batch_sum")) == pytest.approx(b * pixel_mean)
        assert float(pixel_kd(student, teacher, tau, "element_mean")) == pytest.approx(
            pixel_mean / tau**2 / k
        )


@pytest.mark.parametrize("tau", [1.0, 4.0])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_zero_when_student_equals_teacher(normalization: str, tau: float) -> None:
    _, teacher = logits_pair(scale=10.0)
    teacher = teacher.float()
    assert abs(float(pixel_kd(teacher.clone(), teacher, tau, normalization))) < 1e-7


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_gradient_wrt_student(tau: float) -> None:
    student, teacher = logits_pair(seed=1)
    student.requires_grad_(True)
    pixel_kd(student, teacher, tau, "pixel_mean").backward()
    b, _, h, w = teacher.shape
    q_s = torch.softmax(student.detach() / tau, dim=1)
    q_t = torch.softmax(teacher / tau, dim=1)
    expected = tau / (b * h * w) * (q_s - q_t)
    torch.testing.assert_close(student.grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_gradcheck(normalization: str) -> None:
    student, teacher = logits_pair(seed=2, shape=(2, 3, 3, 2), scale=1.0)
    student.requires_grad_(True)  # the teacher is a constant (criterion and kernel detach it)
    assert torch.autograd.gradcheck(
        lambda s: pixel_kd(s, teacher, 2.0, normalization), (student,)
    )


def test_invariant_to_per_pixel_constant() -> None:
    student, teacher = logits_pair(seed=4)
    shift = 50.0 * torch.randn(2, 1, 2, 2, dtype=torch.float64)
    for normalization in NORMALIZATIONS:
        for tau in (1.0, 4.0):
            base = pixel_kd(student, teacher, tau, normalization)
            shifted = pixel_kd(student + shift, teacher, tau, normalization)
            torch.testing.assert_close(shifted, base, rtol=1e-5, atol=1e-7)
            # the teacher, too, is only defined up to a per-pixel constant
            torch.testing.assert_close(
                pixel_kd(student, teacher - shift, tau, normalization), base, rtol=1e-5, atol=1e-7
            )


def test_changes_with_the_student() -> None:
    # guard against a loss that ignores its inputs: a different student gives a different value
    student, teacher = logits_pair(seed=5)
    assert float(pixel_kd(student, teacher)) != pytest.approx(float(pixel_kd(student.flip(1), teacher)))


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3),
    k=st.integers(2, 7),
    h=st.sampled_from([1, 3, 5, 7]),
    w=st.sampled_from([1, 3, 5, 9]),
    tau=st.floats(0.5, 8.0),
    scale=st.floats(0.1, 30.0),
    normalization=st.sampled_from(NORMALIZATIONS),
    seed=st.integers(0, 2**16),
)
def test_finite_and_non_negative(
    b: int, k: int, h: int, w: int, tau: float, scale: float, normalization: str, seed: int
) -> None:
    student, teacher = logits_pair(seed, (b, k, h, w), scale)
    value = pixel_kd(student.float(), teacher.float(), tau, normalization)
    assert torch.isfinite(value)
    assert float(value) >= -1e-6  # KL >= 0 up to float32 rounding


def test_student_resized_to_teacher() -> None:
    g = torch.Generator().manual_seed(6)
    student = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64)
    teacher = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64)
    # bilinear, align_corners=False, exactly halving the size = the mean of each 2x2 block
    blocks = student.reshape(2, 3, 2, 2, 3, 2).mean(dim=(3, 5))
    expected = reference_pixel_kd(blocks.numpy(), teacher.numpy(), 2.0, "pixel_mean")
    assert float(pixel_kd(student, teacher, 2.0, "pixel_mean")) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------------------------------
# TaskLoss


def manual_ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean of -log softmax at the label over the non-ignored pixels, with explicit loops."""
    total, count = 0.0, 0
    b, _, h, w = logits.shape
    for n in range(b):
        for y in range(h):
            for x in range(w):
                label = int(labels[n, y, x])
                if label == IGNORE:
                    continue
                z = logits[n, :, y, x].double()
                total += float(torch.logsumexp(z, 0) - z[label])
                count += 1
    return total / count


def test_task_loss_ignores_ignore_index() -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    labels = torch.randint(0, 4, (2, 5, 6), generator=g)
    labels[0, :2] = IGNORE
    labels[1, :, -1] = IGNORE
    parts = TaskLoss(IGNORE)(SegOutput(logits), labels)
    assert set(parts) == {"ce"}
    assert float(parts["ce"]) == pytest.approx(manual_ce(logits, labels), rel=1e-5)
    # the ignored pixels truly do not matter: change their logits arbitrarily
    changed = logits.clone()
    changed[0, :, :2] = 100 * torch.randn(4, 2, 6, generator=g)
    assert float(TaskLoss(IGNORE)(SegOutput(changed), labels)["ce"]) == pytest.approx(
        float(parts["ce"]), rel=1e-6
    )


def test_task_loss_aux_part() -> None:
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    aux = torch.randn(2, 3, 4, 4, generator=g)
    labels = torch.randint(0, 3, (2, 4, 4), generator=g)
    labels[0, 0, 0] = IGNORE
    parts = TaskLoss(IGNORE)(SegOutput(logits, aux), labels)
    assert set(parts) == {"ce", "aux_ce"}
    assert float(parts["ce"]) == pytest.approx(manual_ce(logits, labels), rel=1e-5)
    assert float(parts["aux_ce"]) == pytest.approx(0.4 * manual_ce(aux, labels), rel=1e-5)
    assert set(TaskLoss(IGNORE, aux_weight=0.0)(SegOutput(logits, aux), labels)) == {"ce"}


def test_task_loss_class_weight_is_the_weighted_mean() -> None:
    """Each pixel's term times its class's weight, summed, over the sum of the weights of the non-ignored pixels;
    the auxiliary logits get the same weights."""
    g = torch.Generator().manual_seed(10)
    logits, aux = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)
    labels[1, 0] = IGNORE
    weight = torch.tensor([0.5, 2.0, 4.0])

    def weighted(z: torch.Tensor) -> float:
        terms = torch.logsumexp(z.double(), 1) - z.double().gather(1, labels.clamp(max=2)[:, None])[:, 0]
        w = weight.double()[labels.clamp(max=2)] * (labels != IGNORE)
        return float((w * terms).sum() / w.sum())

    parts = TaskLoss(IGNORE, class_weight=weight)(SegOutput(logits, aux), labels)
    assert float(parts["ce"]) == pytest.approx(weighted(logits), rel=1e-5)
    assert float(parts["aux_ce"]) == pytest.approx(0.4 * weighted(aux), rel=1e-5)
    assert float(parts["ce"]) != pytest.approx(manual_ce(logits, labels), rel=1e-3)
    # equal weights are the unweighted mean, whatever their value
    assert float(TaskLoss(IGNORE, class_weight=torch.full((3,), 7.0))(SegOutput(logits), labels)["ce"]) == pytest.approx(
        manual_ce(logits, labels), rel=1e-5
    )
    assert "class_weight" not in TaskLoss(IGNORE, class_weight=weight).state_dict()  # checkpoints keep their keys


def test_task_loss_upsamples_stride4_logits() -> None:
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    labels = torch.randint(0, 3, (2, 16, 20), generator=g)
    labels[:, ::3] = IGNORE
    got = float(TaskLoss(IGNORE)(SegOutput(logits), labels)["ce"])
    upsampled = F.interpolate(logits, size=(16, 20), mode="bilinear", align_corners=False)
    assert got == pytest.approx(manual_ce(upsampled, labels), rel=1e-5)
    # spatially constant logits upsample to the same constant: a check independent of the interpolation
    flat = torch.randn(1, 3, 1, 1, generator=g).expand(1, 3, 4, 5).contiguous()
    one_label = torch.randint(0, 3, (1, 16, 20), generator=g)
    full = flat[:, :, :1, :1].expand(1, 3, 16, 20)
    assert float(TaskLoss(IGNORE)(SegOutput(flat), one_label)["ce"]) == pytest.approx(
        manual_ce(full, one_label), rel=1e-5
    )


# ----------------------------------------------------------------------------------------------------
# Criterion: losses bound to named tensors


def seg_output(seed: int, aux: bool = True, requires_grad: bool = False) -> SegOutput:
    g = torch.Generator().manual_seed(seed)

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_(requires_grad)

    features = {
        "c1": t(2, 8, 8, 8),
        "c2": t(2, 16, 4, 4),
        "c3": t(2, 24, 4, 4),
        "c4": t(2, 32, 4, 4),
        "head": t(2, 16, 4, 4),
    }
    return SegOutput(t(2, 3, 4, 4), t(2, 3, 4, 4) if aux else None, features)


def context(labels: torch.Tensor) -> LossContext:
    return LossContext(labels, IGNORE, 3)


def test_binding_to_missing_aux_logits_of_a_real_model() -> None:
    cfg = ModelConfig(backbone="lcnet_050", head="fcn", head_channels=16, aux_head=False, pretrained=None)
    student = build_model(cfg, 3)(torch.randn(2, 3, 32, 32))
    teacher = seg_output(1)
    loss = LossConfig(name="pixel_kd", student="aux_logits", teacher="aux_logits")
    with pytest.raises(ConfigError) as info:
        build_criterion([loss], TaskLoss(IGNORE), student, teacher)
    message = str(info.value)
    assert "'pixel_kd'" in message
    assert "'aux_logits'" in message
    for name in ("logits", "c1", "c2", "c3", "c4", "head"):
        assert name in message


def test_binding_to_unknown_tensor() -> None:
    loss = LossConfig(name="pixel_kd", student="c5", teacher="c4")
    with pytest.raises(ConfigError) as info:
        build_criterion([loss], TaskLoss(IGNORE), seg_output(0), seg_output(1))
    message = str(info.value)
    assert "'pixel_kd'" in message and "'c5'" in message
    assert "logits, aux_logits, c1, c2, c3, c4, head" in message


def test_binding_teacher_side_unknown_tensor() -> None:
    loss = LossConfig(name="pixel_kd", teacher="c7")
    with pytest.raises(ConfigError, match="teacher's tensor 'c7'"):
        build_criterion([loss], TaskLoss(IGNORE), seg_output(0), seg_output(1))


def test_loss_without_teacher_output() -> None:
    with pytest.raises(ConfigError, match="no teacher"):
        build_criterion([LossConfig(name="pixel_kd")], TaskLoss(IGNORE), seg_output(0), None)


def test_criterion_parts_and_detached_teacher() -> None:
    student = seg_output(0, requires_grad=True)
    teacher = seg_output(1, requires_grad=True)  # leaf tensors: a gradient would land in .grad
    losses = [
        LossConfig(name="pixel_kd", weight=0.5, params={"tau": 2.0}),
        LossConfig(name="pixel_kd", weight=2.0, student="aux_logits", teacher="logits"),
    ]
    criterion = build_criterion(losses, TaskLoss(IGNORE), student, teacher)
    labels = torch.randint(0, 3, (2, 32, 32), generator=torch.Generator().manual_seed(2))
    parts = criterion(student, teacher, context(labels))
    assert set(parts) == {"ce", "aux_ce", "pixel_kd", "pixel_kd_1"}
    s, t, a = (x.detach().double().numpy() for x in (student.logits, teacher.logits, student.aux_logits))
    assert float(parts["pixel_kd"].detach()) == pytest.approx(
        0.5 * reference_pixel_kd(s, t, 2.0, "pixel_mean"), rel=1e-5
    )
    assert float(parts["pixel_kd_1"].detach()) == pytest.approx(
        2.0 * reference_pixel_kd(a, t, 1.0, "pixel_mean"), rel=1e-5
    )
    sum(parts.values()).backward()
    assert student.logits.grad is not None and student.logits.grad.abs().sum() > 0
    assert student.aux_logits.grad is not None and student.aux_logits.grad.abs().sum() > 0
    assert teacher.logits.grad is None
    assert all(v.grad is None for v in teacher.features.values())
