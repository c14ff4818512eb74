"""Feature losses of docs/loss_math.md against independent float64 loops written from the formulas: naive feature
distillation and its magnitude term (§5.1), LAD / CAD (§5.2), MGD (§9) and Af-DCD (§4); gradients,
invariances, the Af-DCD positive / negative / excluded sets on a tiny case, finite values on odd sizes,
build-time errors, and one short run per loss through the real trainer.

Af-DCD's contrast runs through ``kernels.patch_contrast``, which keeps float64 inputs in float64. Everything
is gradchecked in float64.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from segdistill.config import LossConfig
from segdistill.errors import ConfigError
from segdistill.losses import LOSSES, LossContext, TaskLoss, build_criterion
from segdistill.models import SegOutput
from segdistill.parsing import parse_dataclass
from segdistill.train import main
from tests.helpers import TINY

IGNORE = 255


def build(name: str, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], **params):
    cls = LOSSES.get(name)
    loss = cls(parse_dataclass(cls.Params, params, "params"), torch.Size(student_shape), torch.Size(teacher_shape))
    return loss.double()


def context(batch: int) -> LossContext:
    return LossContext(torch.full((batch, 8, 8), IGNORE), IGNORE, 3)


def maps(seed: int, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...] | None = None, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    student = scale * torch.randn(student_shape, generator=g, dtype=torch.float64)
    teacher = scale * torch.randn(teacher_shape or student_shape, generator=g, dtype=torch.float64)
    return student, teacher


def adapted(loss, student: torch.Tensor) -> np.ndarray:
    """The student map through the loss's bias-free 1x1 adapter, written out as a sum over input channels."""
    adapter = loss.connector.adapter
    if isinstance(adapter, torch.nn.Identity):
        return student.numpy()
    weight = adapter.weight.detach()[:, :, 0, 0].numpy()
    x = student.numpy()
    out = np.zeros((x.shape[0], weight.shape[0], *x.shape[2:]))
    for o in range(weight.shape[0]):
        for i in range(weight.shape[1]):
            out[:, o] += weight[o, i] * x[:, i]
    return out


def value(loss, student: torch.Tensor, teacher: torch.Tensor) -> float:
    return float(loss(student, teacher, context(student.shape[0])).detach())


# ----------------------------------------------------------------------------------------------------
# FitNets and magnitude (docs/loss_math.md §5.1)


def reference_feature_terms(s: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    """Per-sample naive MSE, magnitude (m - n)^2 / N and angular 2mn(1 - cos) / N terms, averaged over the batch."""
    naive = magnitude = angular = 0.0
    b = t.shape[0]
    for i in range(b):
        x, y = s[i].ravel(), t[i].ravel()
        big_n = len(y)
        naive += sum((yy - xx) ** 2 for xx, yy in zip(x, y, strict=True)) / big_n
        n, m = math.sqrt(sum(v * v for v in x)), math.sqrt(sum(v * v for v in y))
        cos = sum(xx * yy for xx, yy in zip(x, y, strict=True)) / (n * m)
        magnitude += (m - n) ** 2 / big_n
        angular += 2 * m * n * (1 - cos) / big_n
    return naive / b, magnitude / b, angular / b


@pytest.mark.parametrize("shapes", [((2, 3, 2, 3), (2, 3, 2, 3)), ((2, 2, 3, 3), (2, 5, 3, 3))], ids=["same", "adapter"])
def test_fitnet_and_magnitude_match_the_decomposition(shapes) -> None:
    student, teacher = maps(0, *shapes)
    fitnet, magnitude = build("fitnet", *shapes), build("magnitude", *shapes)
    magnitude.connector.load_state_dict(fitnet.connector.state_dict())
    s = adapted(fitnet, student)
    naive, mag, ang = reference_feature_terms(s, teacher.numpy())
    assert value(fitnet, student, teacher) == pytest.approx(naive, rel=1e-12)
    assert value(magnitude, student, teacher) == pytest.approx(mag, rel=1e-12)
    assert naive == pytest.approx(mag + ang, rel=1e-12)  # docs/loss_math.md §5.1: L_naive = magnitude + angular


def test_fitnet_hand_checkable_value() -> None:
    student = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    teacher = torch.tensor([[[[1.0, 0.0]], [[3.0, 8.0]]]], dtype=torch.float64)
    assert value(build("fitnet", student.shape, teacher.shape), student, teacher) == pytest.approx((4 + 16) / 4)
    # norms: n = sqrt(30), m = sqrt(74)
    expected = (math.sqrt(74) - math.sqrt(30)) ** 2 / 4
    assert value(build("magnitude", student.shape, teacher.shape), student, teacher) == pytest.approx(expected)


def test_fitnet_and_magnitude_gradcheck_and_zero_at_teacher() -> None:
    student, teacher = maps(1, (2, 3, 2, 2))
    for name in ("fitnet", "magnitude"):
        loss = build(name, student.shape, teacher.shape)
        assert torch.autograd.gradcheck(lambda s, loss=loss: loss(s, teacher, context(2)), (student.clone().requires_grad_(True),))
        assert value(loss, teacher.clone(), teacher) == 0.0
    # the adapter gets a gradient too
    loss = build("fitnet", (2, 2, 2, 2), (2, 3, 2, 2))
    loss(student[:, :2], teacher, context(2)).backward()
    assert loss.connector.adapter.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------
# LAD / CAD (docs/loss_math.md §5.2, reconstructed)


def cosine(x: list[float], y: list[float]) -> float:
    return sum(a * b for a, b in zip(x, y, strict=True)) / (math.sqrt(sum(a * a for a in x)) * math.sqrt(sum(b * b for b in y)))


def reference_lad(s: np.ndarray, t: np.ndarray, scale: float = 1.0) -> float:
    return scale * sum(1 - cosine(list(s[i].ravel()), list(t[i].ravel())) for i in range(t.shape[0])) / t.shape[0]


def reference_cad(s: np.ndarray, t: np.ndarray, scale: float = 1.0) -> float:
    b, c = t.shape[:2]
    total = sum(1 - cosine(list(s[i, j].ravel()), list(t[i, j].ravel())) for i in range(b) for j in range(c))
    return scale * total / (b * c)


@pytest.mark.parametrize("scale", [1.0, 2.0])
@pytest.mark.parametrize("shapes", [((2, 3, 2, 3), (2, 3, 2, 3)), ((2, 2, 3, 3), (2, 4, 3, 3))], ids=["same", "adapter"])
def test_lad_and_cad_match_the_formula(shapes, scale: float) -> None:
    student, teacher = maps(2, *shapes)
    for name, reference in (("lad", reference_lad), ("cad", reference_cad)):
        loss = build(name, *shapes, scale=scale)
        expected = reference(adapted(loss, student), teacher.numpy(), scale)
        assert value(loss, student, teacher) == pytest.approx(expected, rel=1e-12)


def test_lad_scale_two_is_the_squared_distance_of_unit_vectors() -> None:
    student, teacher = maps(3, (2, 3, 2, 2))
    x, y = student.flatten(1), teacher.flatten(1)
    x, y = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    expected = float((x - y).pow(2).sum(dim=1).mean())
    assert value(build("lad", student.shape, teacher.shape, scale=2.0), student, teacher) == pytest.approx(expected, rel=1e-12)


def test_lad_and_cad_invariant_to_scaling_the_student() -> None:
    student, teacher = maps(4, (2, 2, 3, 3), (2, 4, 3, 3))
    per_sample = torch.tensor([0.01, 250.0], dtype=torch.float64)[:, None, None, None]
    for name in ("lad", "cad"):
        loss = build(name, student.shape, teacher.shape)  # through the adapter too
        base = value(loss, student, teacher)
        assert base > 0.1
        assert value(loss, 37.0 * student, teacher) == pytest.approx(base, rel=1e-10)
        assert value(loss, per_sample * student, teacher) == pytest.approx(base, rel=1e-10)
        assert value(loss, student, teacher * 5.0) == pytest.approx(base, rel=1e-10)


def test_lad_and_cad_zero_at_teacher_gradient_and_gradcheck() -> None:
    student, teacher = maps(5, (2, 3, 2, 2))
    for name in ("lad", "cad"):
        loss = build(name, student.shape, teacher.shape)
        assert abs(value(loss, 3.0 * teacher, teacher)) < 1e-12  # same direction, any length: zero
        assert torch.autograd.gradcheck(lambda s, loss=loss: loss(s, teacher, context(2)), (student.clone().requires_grad_(True),))
    # docs/loss_math.md §5.2: d(1 - cos)/dx = -(1/|x|)(y_hat - cos x_hat), here for one sample
    x = student[:1].clone().requires_grad_(True)
    build("lad", x.shape, x.shape)(x, teacher[:1], context(1)).backward()
    xv, yv = student[:1].flatten(), teacher[:1].flatten()
    x_hat, y_hat = xv / xv.norm(), yv / yv.norm()
    expected = -(y_hat - (x_hat @ y_hat) * x_hat) / xv.norm()
    torch.testing.assert_close(x.grad.flatten(), expected, rtol=1e-10, atol=1e-12)


def test_angular_zero_map_is_finite() -> None:
    student, teacher = maps(6, (1, 2, 2, 2))
    for name in ("lad", "cad"):
        zero = torch.zeros_like(student).requires_grad_(True)
        loss = build(name, student.shape, teacher.shape)(zero, teacher, context(1))
        loss.backward()
        assert loss.item() == pytest.approx(1.0) and torch.isfinite(zero.grad).all()


@pytest.mark.parametrize("name", ["fitnet", "magnitude", "lad", "cad", "cwd"])
def test_always_adapt_puts_a_learnable_adapter_between_equal_channel_counts(name: str) -> None:
    shape = (2, 3, 2, 3)
    student, teacher = maps(7, shape, scale=2.0)
    plain = build(name, shape, shape)
    adapting = build(name, shape, shape, adapter="conv", always_adapt=True)
    assert isinstance(plain.connector.adapter, torch.nn.Identity)
    assert isinstance(adapting.connector.adapter, torch.nn.Conv2d)
    with torch.no_grad():  # at the identity matrix the adapter passes the student through: the plain loss
        adapting.connector.adapter.weight.copy_(torch.eye(3, dtype=torch.float64)[:, :, None, None])
    assert value(adapting, student, teacher) == pytest.approx(value(plain, student, teacher), rel=1e-12)
    with torch.no_grad():  # a scaled channel permutation: what the adapter can learn that the plain loss cannot
        adapting.connector.adapter.weight.copy_(2 * torch.eye(3, dtype=torch.float64)[[2, 0, 1], :, None, None])
    assert value(adapting, student, teacher) != pytest.approx(value(plain, student, teacher), rel=1e-6)
    assert value(adapting, student, teacher) == pytest.approx(value(plain, 2 * student[:, [2, 0, 1]], teacher), rel=1e-12)
    adapting(student, teacher, context(2)).backward()
    assert adapting.connector.adapter.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------
# MGD (docs/loss_math.md §9)


def reference_mask(seed: int, b: int, h: int, w: int, ratio: float) -> np.ndarray:
    """(B, 1, H, W): 0 where U > 1 - ratio, the U drawn as the official code does (torch.rand on the CPU)."""
    torch.manual_seed(seed)
    u = torch.rand((b, 1, h, w)).numpy()
    return np.where(u > 1 - ratio, 0.0, 1.0)


def conv_np(x: np.ndarray, conv: torch.nn.Conv2d) -> np.ndarray:
    """A zero-padded 'same' convolution with bias, as explicit loops over the kernel."""
    weight, bias = conv.weight.detach().numpy(), conv.bias.detach().numpy()
    k = weight.shape[-1]
    pad = k // 2
    b, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((b, weight.shape[0], h, w)) + bias[None, :, None, None]
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("oi,bihw->bohw", weight[:, :, dy, dx], padded[:, :, dy : dy + h, dx : dx + w])
    return out


def reference_generated(generator, student: np.ndarray, mask: np.ndarray) -> np.ndarray:
    align = generator.align
    aligned = student if isinstance(align, torch.nn.Identity) else conv_np(student, align)
    hidden = np.maximum(conv_np(aligned * mask, generator.generation[0]), 0.0)
    return conv_np(hidden, generator.generation[2])


@pytest.mark.parametrize("shapes", [((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 2, 4, 5), (2, 4, 4, 5))], ids=["same", "align"])
def test_mgd_matches_the_formula(shapes) -> None:
    student, teacher = maps(7, *shapes)
    loss = build("mgd", *shapes)
    assert isinstance(loss.generator.align, torch.nn.Identity) == (shapes[0][1] == shapes[1][1])
    torch.manual_seed(123)
    got = value(loss, student, teacher)
    mask = reference_mask(123, 2, 4, 5, 0.75)
    generated = reference_generated(loss.generator, student.numpy(), mask)
    expected = ((generated - teacher.numpy()) ** 2).sum() / 2  # per-image sum of squares
    assert got == pytest.approx(expected, rel=1e-10)


def test_mgd_mask_ratio_shared_over_channels_and_redrawn() -> None:
    loss = build("mgd", (2, 3, 4, 4), (2, 3, 4, 4), mask_ratio=0.3)
    masks = torch.stack([loss.generator.mask(64, 16, 16, torch.device("cpu")) for _ in range(2)])
    assert masks.shape == (2, 64, 1, 16, 16)  # one channel: shared by all channels
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert float(1 - masks.mean()) == pytest.approx(0.3, abs=0.01)  # the masked share is the ratio
    assert not torch.equal(masks[0], masks[1])  # a new mask every call


def test_mgd_gradcheck_through_generator() -> None:
    student, teacher = maps(8, (1, 2, 3, 3), (1, 3, 3, 3))
    loss = build("mgd", student.shape, teacher.shape)

    def fn(s: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(5)  # the same mask for every evaluation
        return loss(s, teacher, context(1))

    assert torch.autograd.gradcheck(fn, (student.clone().requires_grad_(True),))
    fn(student).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())


# ----------------------------------------------------------------------------------------------------
# Af-DCD (docs/loss_math.md §4)


def tokens_np(x: np.ndarray, patch: int, groups: int) -> dict[tuple[int, int, int, int, int], np.ndarray]:
    """Token (image, patch row, patch col, n, m) -> the D channels of group m at position n of the patch."""
    b, c, h, w = x.shape
    d = c // groups
    out = {}
    for i in range(b):
        for pr in range(h // patch):
            for pc in range(w // patch):
                for n in range(patch * patch):
                    y, xx = pr * patch + n // patch, pc * patch + n % patch
                    for m in range(groups):
                        out[(i, pr, pc, n, m)] = x[i, m * d : (m + 1) * d, y, xx]
    return out


def reference_contrast(g: np.ndarray, t: np.ndarray, patch: int, groups: int, tau: float) -> float:
    """docs/loss_math.md §4.4 from its prose: for anchor (n, m) the positive is teacher (n, m), the negatives every
    teacher token of the patch with another group; sum of InfoNCE over anchors / (B * H' * W')."""
    gt, tt = tokens_np(g, patch, groups), tokens_np(t, patch, groups)
    total = 0.0
    for (i, pr, pc, n, m), anchor in gt.items():
        def sim(key: tuple[int, int, int, int, int], anchor=anchor) -> float:
            return -float(np.abs(anchor - tt[key]).sum()) / tau

        positive = sim((i, pr, pc, n, m))
        negatives = [sim((i, pr, pc, n2, m2)) for n2 in range(patch * patch) for m2 in range(groups) if m2 != m]
        assert len(negatives) == patch * patch * (groups - 1)
        logits = [positive, *negatives]
        top = max(logits)
        total += top + math.log(sum(math.exp(v - top) for v in logits)) - positive
    b, _, h, w = g.shape
    return total / (b * h * w)


def contrast(loss, generated: torch.Tensor, teacher: torch.Tensor) -> float:
    return float(loss.contrast(generated.float(), teacher.float()))


def test_afdcd_contrast_matches_the_formula_on_a_tiny_case() -> None:
    # 2 images, 4 channels in 2 groups, a 4x4 map: four 2x2 patches of 8 tokens each
    g, t = maps(9, (2, 4, 4, 4))
    loss = build("afdcd", g.shape, t.shape, pool=1, patch=2, groups=2, tau=0.5)
    assert contrast(loss, g, t) == pytest.approx(reference_contrast(g.numpy(), t.numpy(), 2, 2, 0.5), rel=1e-5)


def test_afdcd_hand_checkable_single_position() -> None:
    # one position, 2 groups of 1 channel: anchor m has its positive (same m) and one negative (other m)
    g = torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1)
    t = torch.tensor([0.5, 3.0]).reshape(1, 2, 1, 1)
    loss = build("afdcd", g.shape, t.shape, pool=1, patch=1, groups=2, tau=1.0)
    # anchor 0: positive -0.5, negative -|0 - 3| = -3; anchor 1: positive -2, negative -|1 - 0.5| = -0.5
    expected = math.log(1 + math.exp(-2.5)) + math.log(1 + math.exp(1.5))
    assert contrast(loss, g, t) == pytest.approx(expected, rel=1e-6)


def test_afdcd_positive_negative_and_excluded_sets() -> None:
    """Which teacher tokens take part in anchor k's term, read from the implementation itself: the gradient
    with respect to student token k depends on teacher token l only if l is k's positive or a negative."""
    patch, groups, d = 2, 2, 3
    g, t = maps(10, (1, groups * d, patch, patch))
    loss = build("afdcd", g.shape, t.shape, pool=1, patch=patch, groups=groups, tau=0.5)

    def student_gradient(teacher: torch.Tensor) -> torch.Tensor:
        student = g.float().requires_grad_(True)
        loss.contrast(student, teacher.float()).backward()
        return student.grad

    def token(x: torch.Tensor, n: int, m: int) -> torch.Tensor:
        return x[0, m * d : (m + 1) * d, n // patch, n % patch]

    base = student_gradient(t)
    tokens = [(n, m) for n in range(patch * patch) for m in range(groups)]
    for n2, m2 in tokens:  # move teacher token (n2, m2) a little
        moved = t.clone()
        token(moved, n2, m2).add_(0.3)
        grads = student_gradient(moved)
        for n, m in tokens:
            takes_part = not torch.allclose(token(grads, n, m), token(base, n, m), rtol=0, atol=1e-7)
            is_positive, is_negative = (n2, m2) == (n, m), m2 != m  # negatives: other group, any position
            assert takes_part == (is_positive or is_negative), ((n, m), (n2, m2))
    negatives_per_anchor = sum(1 for n2, m2 in tokens if m2 != 0)
    assert negatives_per_anchor == patch * patch * (groups - 1)  # N^2 (M - 1), 240 with N = 4, M = 16


def test_afdcd_pools_then_crops_to_whole_patches() -> None:
    g, t = maps(11, (1, 4, 11, 9))
    loss = build("afdcd", g.shape, t.shape, pool=2, patch=2, groups=2, tau=0.07)
    # 4*-style: 2x2 max-pool (floor) -> 5x4, then the top-left whole 2x2 patches -> 4x4
    pooled_g = g[:, :, :10, :8].reshape(1, 4, 5, 2, 4, 2).amax(dim=(3, 5))[:, :, :4, :4]
    pooled_t = t[:, :, :10, :8].reshape(1, 4, 5, 2, 4, 2).amax(dim=(3, 5))[:, :, :4, :4]
    expected = reference_contrast(pooled_g.numpy(), pooled_t.numpy(), 2, 2, 0.07)
    assert contrast(loss, g, t) == pytest.approx(expected, rel=1e-5)


def test_afdcd_returns_both_weighted_terms_from_one_generator() -> None:
    student, teacher = maps(12, (2, 3, 8, 8), (2, 4, 8, 8))
    loss = build("afdcd", student.shape, teacher.shape, pool=2, patch=2, groups=2, lambda_fd=0.5, lambda_contrast=0.25)
    torch.manual_seed(3)
    parts = loss(student, teacher, context(2))
    assert set(parts) == {"fd", "contrast"}
    generated = reference_generated(loss.generator, student.numpy(), reference_mask(3, 2, 8, 8, 0.75))
    assert float(parts["fd"].detach()) == pytest.approx(0.5 * ((generated - teacher.numpy()) ** 2).sum() / 2, rel=1e-10)
    expected_ctr = 0.25 * contrast(loss, torch.from_numpy(generated), teacher)
    assert float(parts["contrast"].detach()) == pytest.approx(expected_ctr, rel=1e-5)
    sum(parts.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())


def test_afdcd_contrast_gradient_reaches_the_generator_and_not_the_teacher() -> None:
    g, t = maps(13, (1, 4, 4, 4))
    loss = build("afdcd", g.shape, t.shape, pool=1, patch=2, groups=2)
    g32, t32 = g.float().requires_grad_(True), t.float().requires_grad_(True)
    loss.contrast(g32, t32).backward()
    assert g32.grad.abs().sum() > 0 and t32.grad is None


def test_afdcd_criterion_logs_both_parts() -> None:
    g = torch.Generator().manual_seed(14)
    student = SegOutput(torch.randn(2, 3, 8, 8, generator=g), None, {"c4": torch.randn(2, 6, 8, 8, generator=g)})
    teacher = SegOutput(torch.randn(2, 3, 8, 8, generator=g), None, {"c4": torch.randn(2, 8, 8, 8, generator=g)})
    cfg = LossConfig(name="afdcd", weight=2.0, params={"pool": 2, "patch": 2, "groups": 4})
    parts = build_criterion([cfg], TaskLoss(IGNORE), student, teacher)(student, teacher, LossContext(torch.zeros(2, 8, 8, dtype=torch.long), IGNORE, 3))
    assert {"afdcd_fd", "afdcd_contrast"} <= set(parts)


def test_afdcd_refuses_shapes_it_cannot_use() -> None:
    with pytest.raises(ConfigError, match="groups=16"):
        build("afdcd", (2, 8, 16, 16), (2, 40, 16, 16))
    with pytest.raises(ConfigError, match="smaller than one contrast patch.*16x16"):
        build("afdcd", (2, 8, 15, 40), (2, 32, 15, 40))
    loss = build("afdcd", (2, 8, 16, 16), (2, 32, 16, 16))
    with pytest.raises(ConfigError, match="smaller than one contrast patch"):  # training crops smaller than the dry run
        loss(torch.randn(2, 8, 8, 8, dtype=torch.float64), torch.randn(2, 32, 8, 8, dtype=torch.float64), context(2))
    with pytest.raises(ConfigError, match="'mask_ratio'"):
        build("afdcd", (2, 8, 16, 16), (2, 32, 16, 16), mask_ratio=1.5)


# ----------------------------------------------------------------------------------------------------
# All: finite values and gradients on random inputs of odd sizes


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["fitnet", "magnitude", "lad", "cad", "mgd", "afdcd"]),
    b=st.integers(1, 3),
    cs=st.integers(1, 5),
    h=st.sampled_from([2, 3, 5, 7]),
    w=st.sampled_from([2, 3, 5, 7]),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_finite_on_odd_sizes(name: str, b: int, cs: int, h: int, w: int, scale: float, seed: int) -> None:
    student, teacher = maps(seed, (b, cs, h, w), (b, 4, h, w), scale)
    params = {"pool": 1, "patch": min(h, w), "groups": 2} if name == "afdcd" else {}
    loss = build(name, student.shape, teacher.shape, **params).float()
    student = student.float().requires_grad_(True)
    out = loss(student, teacher.float(), context(b))
    total = sum(out.values()) if isinstance(out, dict) else out
    total.backward()
    assert torch.isfinite(total) and total.item() >= -1e-5 and torch.isfinite(student.grad).all()


# ----------------------------------------------------------------------------------------------------
# One short distillation run per loss through the real trainer


@pytest.mark.parametrize(
    "losses",
    [
        "[{name: fitnet, weight: 1.0}]",
        "[{name: magnitude, weight: 1.0, student: head, teacher: head}]",
        "[{name: lad, weight: 3.0, student: head, teacher: head}]",
        "[{name: cad, weight: 3.0, params: {scale: 2.0}}]",
        "[{name: mgd, weight: 2.0e-5, student: head, teacher: head}, {name: cwd, weight: 3.0}]",
        "[{name: afdcd, student: head, teacher: head, params: {pool: 1, patch: 4, groups: 4}}, {name: pixel_kd}]",
    ],
    ids=["fitnet", "magnitude", "lad", "cad", "mgd", "afdcd"],
)
def test_trains_through_the_real_trainer(losses: str, tiny_teacher: Path, tmp_path: Path) -> None:
    args = [*TINY, f"output_dir={tmp_path}", f"teacher.checkpoint={tiny_teacher}", "model.head_channels=8",
            "train.iterations=2", "train.eval_interval=2", "train.checkpoint_interval=1", f"losses={losses}"]  # fmt: skip
    result = main(args)
    assert 0.0 <= result["miou"] <= 1.0
    before, after = (load_file(tmp_path / f"checkpoints/step_000000{i}/model.safetensors") for i in (1, 2))
    learnable = [k for k in after if k.startswith("criterion.") and k.endswith("weight")]
    assert all(not torch.equal(before[k], after[k]) for k in learnable)  # adapters and generators learn
    assert bool(learnable) == ("head" in losses or "mgd" in losses or "afdcd" in losses)


def test_impossible_binding_stops_before_training(tiny_teacher: Path, tmp_path: Path) -> None:
    # the tiny teacher's c4 has 256 channels: 7 groups do not divide them
    with pytest.raises(ConfigError, match=r"losses\[0\]: loss 'afdcd' \(student 'c4'.*groups=7"):
        main([*TINY, f"output_dir={tmp_path}", f"teacher.checkpoint={tiny_teacher}", "losses=[{name: afdcd, params: {groups: 7, pool: 1, patch: 2}}]"])
    assert not (tmp_path / "checkpoints").exists()
