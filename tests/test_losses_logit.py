"""Logit losses of docs/loss_math.md against independent float64 loops written from the formulas: CWD (§2, on
logits and on features with its adapter), HWD (§3) and DIST (§11); gradients, invariances, finite values
on odd sizes, build-time errors, and one short run per loss through the real trainer.

CWD and HWD run through ``kernels.spatial_softmax_kl``, which keeps float64 inputs in float64: every loss is
gradchecked in float64 at full precision (the exact analytic gradient of docs/loss_math.md is checked too).
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
    return cls(parse_dataclass(cls.Params, params, "params"), torch.Size(student_shape), torch.Size(teacher_shape))


def no_labels(batch: int, classes: int) -> LossContext:
    return LossContext(torch.full((batch, 8, 8), IGNORE), IGNORE, classes)


def pair(seed: int, shape: tuple[int, ...], scale: float = 3.0, teacher_shape: tuple[int, ...] | None = None):
    g = torch.Generator().manual_seed(seed)
    student = scale * torch.randn(shape, generator=g, dtype=torch.float64)
    teacher = scale * torch.randn(teacher_shape or shape, generator=g, dtype=torch.float64)
    return student, teacher


def softmax_np(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def kl_np(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(p[i] * (math.log(p[i]) - math.log(q[i])) for i in range(len(p))))


# ----------------------------------------------------------------------------------------------------
# CWD (docs/loss_math.md §2)


def reference_channel_kls(student: np.ndarray, teacher: np.ndarray, tau: float) -> np.ndarray:
    """(N, C) KL between spatial softmaxes, map by map."""
    n, c = teacher.shape[:2]
    out = np.zeros((n, c))
    for i in range(n):
        for j in range(c):
            out[i, j] = kl_np(softmax_np(teacher[i, j].ravel() / tau), softmax_np(student[i, j].ravel() / tau))
    return out


def reference_cwd(student: np.ndarray, teacher: np.ndarray, tau: float, channels: int | None = None) -> float:
    n, c = teacher.shape[:2]
    return tau**2 * reference_channel_kls(student, teacher, tau).sum() / (n * (channels or c))


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_on_logits_matches_the_formula(tau: float) -> None:
    student, teacher = pair(0, (2, 3, 3, 4))
    loss = build("cwd", student.shape, teacher.shape, tau=tau)
    assert isinstance(loss.connector.adapter, torch.nn.Identity)  # same channels: no adapter
    expected = reference_cwd(student.numpy(), teacher.numpy(), tau)
    assert expected > 0
    for dtype in (torch.float64, torch.float32):
        got = loss(student.to(dtype), teacher.to(dtype), no_labels(2, 3))
        assert got.dim() == 0 and float(got) == pytest.approx(expected, rel=2e-5)


def test_cwd_hand_checkable_value() -> None:
    # one map of two positions: softmax([0, 0]) = (1/2, 1/2) vs softmax([log 3, 0]) = (3/4, 1/4)
    student = torch.tensor([[[[0.0, 0.0]]]])
    teacher = torch.tensor([[[[math.log(3.0), 0.0]]]])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(build("cwd", student.shape, teacher.shape, tau=1.0)(student, teacher, no_labels(1, 1))) == pytest.approx(expected, rel=1e-6)
    # tau = 2 halves the logits and multiplies by tau^2 = 4
    teacher2 = torch.tensor([[[[2 * math.log(3.0), 0.0]]]])
    assert float(build("cwd", student.shape, teacher.shape, tau=2.0)(student, teacher2, no_labels(1, 1))) == pytest.approx(4 * expected, rel=1e-6)


def test_cwd_gradient_is_the_published_one() -> None:
    student, teacher = pair(1, (2, 3, 2, 3))
    student = student.float().requires_grad_(True)
    tau, (n, c) = 4.0, student.shape[:2]
    build("cwd", student.shape, teacher.shape, tau=tau)(student, teacher.float(), no_labels(2, 3)).backward()
    phi_s = torch.softmax(student.detach().flatten(2) / tau, dim=2).reshape(student.shape)
    phi_t = torch.softmax(teacher.float().flatten(2) / tau, dim=2).reshape(student.shape)
    torch.testing.assert_close(student.grad, tau / (n * c) * (phi_s - phi_t), rtol=1e-5, atol=1e-7)


def test_cwd_gradcheck_and_zero_at_the_teacher() -> None:
    student, teacher = pair(2, (2, 2, 2, 3), scale=1.0)
    loss = build("cwd", student.shape, teacher.shape, tau=2.0)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, no_labels(2, 2)), (student.requires_grad_(True),))
    assert abs(float(loss(teacher.clone(), teacher, no_labels(2, 2)))) < 1e-6


def test_cwd_invariant_to_a_constant_per_map() -> None:
    student, teacher = pair(3, (2, 3, 3, 3))
    shift = 40 * torch.randn(2, 3, 1, 1, dtype=torch.float64)
    loss = build("cwd", student.shape, teacher.shape)
    assert float(loss(student + shift, teacher, no_labels(2, 3))) == pytest.approx(float(loss(student, teacher, no_labels(2, 3))), rel=1e-5)


@pytest.mark.parametrize("adapter", ["conv_bn_relu", "conv"])
def test_cwd_on_features_goes_through_its_adapter(adapter: str) -> None:
    student, teacher = pair(4, (3, 2, 3, 3), teacher_shape=(3, 5, 3, 3))
    loss = build("cwd", student.shape, teacher.shape, adapter=adapter).double()
    got = float(loss(student, teacher, no_labels(3, 5)).detach())
    # the adapter, written out: y[n, o] = sum_i W[o, i] x[n, i] (no bias), then (train-mode) BN and ReLU
    parts = loss.connector.adapter if adapter == "conv_bn_relu" else [loss.connector.adapter]
    conv = parts[0]
    assert conv.bias is None and tuple(conv.weight.shape) == (5, 2, 1, 1)
    weight = conv.weight.detach()[:, :, 0, 0].numpy()
    x = student.numpy()
    y = np.zeros((3, 5, 3, 3))
    for o in range(5):
        for i in range(2):
            y[:, o] += weight[o, i] * x[:, i]
    if adapter == "conv_bn_relu":
        assert isinstance(parts[1], torch.nn.BatchNorm2d) and isinstance(parts[2], torch.nn.ReLU)
        mean, var = y.mean(axis=(0, 2, 3), keepdims=True), y.var(axis=(0, 2, 3), keepdims=True)
        y = np.maximum((y - mean) / np.sqrt(var + 1e-5), 0.0)  # BN starts at weight 1, bias 0
    assert got == pytest.approx(reference_cwd(y, teacher.numpy(), 4.0), rel=2e-5)


def test_cwd_student_channel_normalisation_of_cirkd() -> None:
    student, teacher = pair(5, (2, 2, 3, 3), teacher_shape=(2, 6, 3, 3))
    torch.manual_seed(0)
    default = build("cwd", student.shape, teacher.shape, adapter="conv").double()
    torch.manual_seed(0)
    quirk = build("cwd", student.shape, teacher.shape, adapter="conv", normalization="student_channels").double()
    ratio = float(quirk(student, teacher, no_labels(2, 6)).detach()) / float(default(student, teacher, no_labels(2, 6)).detach())
    assert ratio == pytest.approx(6 / 2, rel=1e-6)  # divides by N * C_s instead of N * C_t


def test_cwd_resizes_the_student_to_the_teacher() -> None:
    student, teacher = pair(6, (2, 3, 4, 6), teacher_shape=(2, 3, 2, 3))
    blocks = student.reshape(2, 3, 2, 2, 3, 2).mean(dim=(3, 5))  # bilinear exact halving = 2x2 means
    got = float(build("cwd", student.shape, teacher.shape)(student, teacher, no_labels(2, 3)))
    assert got == pytest.approx(reference_cwd(blocks.numpy(), teacher.numpy(), 4.0), rel=2e-5)


# ----------------------------------------------------------------------------------------------------
# HWD (docs/loss_math.md §3)


def legacy_nearest(labels: np.ndarray, h: int, w: int) -> np.ndarray:
    """lab[floor(i * H / h), floor(j * W / w)] per image."""
    b, big_h, big_w = labels.shape
    out = np.zeros((b, h, w), dtype=np.int64)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = labels[:, (i * big_h) // h, (j * big_w) // w]
    return out


def reference_hwd_weights(
    student: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None = None, tau: float = 4.0, shift: float = 1.0,
    beta: float = 0.1, discrepancy: str = "mse", activation: bool = True, div_pixel: str = "none",
    standardize: bool = True, process: str = "exponential",
) -> np.ndarray:  # fmt: skip
    n, c, h, w = teacher.shape
    weights = np.zeros((n, c))
    small = legacy_nearest(labels, h, w) if labels is not None else None
    for i in range(n):
        d = np.zeros(c)
        for j in range(c):
            s, t = student[i, j].ravel(), teacher[i, j].ravel()
            if activation:
                s, t = softmax_np(s / tau), softmax_np(t / tau)
            if discrepancy == "mse":
                d[j] = sum((a - b) ** 2 for a, b in zip(s, t, strict=True))
            elif discrepancy == "l1":
                d[j] = sum(abs(a - b) for a, b in zip(s, t, strict=True))
            elif discrepancy == "smooth_l1":
                d[j] = sum(0.5 * (a - b) ** 2 if abs(a - b) < 1 else abs(a - b) - 0.5 for a, b in zip(s, t, strict=True))
            else:
                d[j] = kl_np(t, s)
            if div_pixel != "none":
                count = 1 + int((small[i] == j).sum())
                d[j] /= {"count": count, "sqrt_count": math.sqrt(count), "count_squared": count**2}[div_pixel]
        if standardize:
            mean = d.sum() / c
            std = math.sqrt(sum((x - mean) ** 2 for x in d) / (c - 1))
            d = (d - mean) / std + shift
        scores = (1 - beta**d) / (1 - beta) if process == "exponential" else d / beta
        weights[i] = c * softmax_np(scores)
    return weights


def hwd_value(student, teacher, labels=None, **params) -> float:
    n, c = teacher.shape[:2]
    context = LossContext(labels if labels is not None else torch.full((n, 8, 8), IGNORE), IGNORE, c)
    return float(build("hwd", student.shape, teacher.shape, **params)(student, teacher, context))


def reference_hwd(student, teacher, labels=None, tau: float = 4.0, **params) -> float:
    s, t = student.numpy(), teacher.numpy()
    lab = labels.numpy() if labels is not None else None
    weights = reference_hwd_weights(s, t, lab, tau=tau, **params)
    n, c = t.shape[:2]
    return tau**2 * (weights * reference_channel_kls(s, t, tau)).sum() / (n * c)


def test_hwd_hand_checkable_weights() -> None:
    # discrepancies d = (0, 0, 3) across 3 channels -> mean 1, unbiased std sqrt(3) -> z = (-1, -1, 2) / sqrt(3)
    d = np.array([0.0, 0.0, 3.0])
    z = (d - 1.0) / math.sqrt(3.0) + 1.0  # shift mu = 1
    scores = (1 - 0.1**z) / 0.9
    expected = 3 * np.exp(scores) / np.exp(scores).sum()
    # raw logits as the discrepancy input (activation off): channel 2 differs by sqrt(3/2) at two positions
    teacher = torch.zeros(1, 3, 1, 2, dtype=torch.float64)
    student = teacher.clone()
    student[0, 2] = math.sqrt(1.5)
    loss = build("hwd", student.shape, teacher.shape, activation=False)
    weights = loss.channel_weights(student, teacher, no_labels(1, 3))
    np.testing.assert_allclose(weights.numpy()[0], expected, rtol=1e-12)
    assert float(weights.sum()) == pytest.approx(3.0)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"shift": 0.0},
        {"shift": 0.1, "beta": 0.2},
        {"discrepancy": "l1"},
        {"discrepancy": "smooth_l1", "activation": False},
        {"discrepancy": "kl"},
        {"activation": False},
        {"process": "temperature", "beta": 0.5},
        {"standardize": False},
    ],
    ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "defaults",
)
def test_hwd_matches_the_formula(params: dict) -> None:
    student, teacher = pair(7, (2, 4, 3, 3), scale=2.0)
    expected = reference_hwd(student, teacher, **params)
    assert hwd_value(student, teacher, **params) == pytest.approx(expected, rel=2e-5)


@pytest.mark.parametrize("div_pixel", ["count", "sqrt_count", "count_squared"])
def test_hwd_div_pixel_reads_labels_resized_with_legacy_nearest(div_pixel: str) -> None:
    student, teacher = pair(8, (2, 4, 3, 3), scale=2.0)
    g = torch.Generator().manual_seed(9)
    labels = torch.randint(0, 4, (2, 7, 8), generator=g)  # not a multiple of 3: nearest picks matter
    labels[0, :3] = IGNORE
    expected = reference_hwd(student, teacher, labels, div_pixel=div_pixel)
    assert hwd_value(student, teacher, labels, div_pixel=div_pixel) == pytest.approx(expected, rel=2e-5)
    assert expected != pytest.approx(reference_hwd(student, teacher))  # the labels do change the weights


def test_hwd_reduces_to_cwd_with_uniform_weights() -> None:
    student, teacher = pair(10, (2, 4, 3, 3))
    cwd = float(build("cwd", student.shape, teacher.shape)(student, teacher, no_labels(2, 4)))
    # a huge softmax temperature flattens the weights to 1
    assert hwd_value(student, teacher, process="temperature", beta=1e9) == pytest.approx(cwd, rel=1e-5)
    # equal discrepancies in every channel (all channels alike): standardised to 0, uniform weights
    same_s, same_t = student[:, :1].expand(2, 4, 3, 3), teacher[:, :1].expand(2, 4, 3, 3)
    cwd_same = float(build("cwd", student.shape, teacher.shape)(same_s, same_t, no_labels(2, 4)))
    assert hwd_value(same_s, same_t) == pytest.approx(cwd_same, rel=1e-5)
    assert abs(hwd_value(teacher.clone(), teacher)) < 1e-6  # student = teacher: 0, not NaN


def test_hwd_weights_are_constants_in_the_gradient() -> None:
    student, teacher = pair(11, (2, 3, 2, 3))
    tau, (n, c) = 4.0, student.shape[:2]
    weights = torch.from_numpy(reference_hwd_weights(student.numpy(), teacher.numpy()))
    student32 = student.float().requires_grad_(True)
    build("hwd", student.shape, teacher.shape)(student32, teacher.float(), no_labels(2, 3)).backward()
    p_s = torch.softmax(student.flatten(2) / tau, dim=2).reshape(student.shape)
    p_t = torch.softmax(teacher.flatten(2) / tau, dim=2).reshape(student.shape)
    expected = tau / (n * c) * weights[:, :, None, None] * (p_s - p_t)
    # (no finite-difference check: it would move the weights, which the loss holds constant by design)
    torch.testing.assert_close(student32.grad.double(), expected, rtol=1e-4, atol=1e-7)


def test_hwd_refuses_what_it_cannot_weigh() -> None:
    with pytest.raises(ConfigError, match="same number of channels"):
        build("hwd", (2, 4, 3, 3), (2, 5, 3, 3))
    with pytest.raises(ConfigError, match="'kl'.*activation"):
        build("hwd", (2, 4, 3, 3), (2, 4, 3, 3), discrepancy="kl", activation=False)
    with pytest.raises(ConfigError, match="at least 2 channels"):
        build("hwd", (2, 1, 3, 3), (2, 1, 3, 3))
    with pytest.raises(ConfigError, match="'beta'"):
        build("hwd", (2, 4, 3, 3), (2, 4, 3, 3), beta=1.0)


# ----------------------------------------------------------------------------------------------------
# DIST (docs/loss_math.md §11)


def pearson_np(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    den = math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b))
    return num / (den + 1e-8)


def reference_dist(student: np.ndarray, teacher: np.ndarray, beta=1.0, gamma=1.0, tau=1.0) -> float:
    b, k, h, w = teacher.shape
    ys, yt = [], []  # one row of K probabilities per pixel
    for n in range(b):
        for i in range(h):
            for j in range(w):
                ys.append(list(softmax_np(student[n, :, i, j] / tau)))
                yt.append(list(softmax_np(teacher[n, :, i, j] / tau)))
    inter = 1 - sum(pearson_np(s, t) for s, t in zip(ys, yt, strict=True)) / len(ys)
    columns = [([row[c] for row in ys], [row[c] for row in yt]) for c in range(k)]
    intra = 1 - sum(pearson_np(s, t) for s, t in columns) / k
    return tau**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("params", [{}, {"beta": 2.0, "gamma": 0.5}, {"tau": 2.0}, {"beta": 0.0}, {"gamma": 0.0}])
def test_dist_matches_the_formula(params: dict) -> None:
    student, teacher = pair(12, (2, 4, 2, 3))
    loss = build("dist", student.shape, teacher.shape, **params)
    expected = reference_dist(student.numpy(), teacher.numpy(), **params)
    assert float(loss(student, teacher, no_labels(2, 4))) == pytest.approx(expected, rel=1e-9)


def test_dist_gradcheck_zero_at_teacher_and_shift_invariance() -> None:
    student, teacher = pair(13, (2, 3, 2, 2), scale=1.0)
    loss = build("dist", student.shape, teacher.shape, tau=2.0)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, no_labels(2, 3)), (student.clone().requires_grad_(True),))
    # zero at the teacher up to the 1e-8 in the correlation's denominator
    at_teacher = float(loss(teacher.clone(), teacher, no_labels(2, 3)))
    assert at_teacher == pytest.approx(reference_dist(teacher.numpy(), teacher.numpy(), tau=2.0), rel=1e-6)
    assert 0 <= at_teacher < 1e-4
    shift = 30 * torch.randn(2, 1, 2, 2, dtype=torch.float64)  # softmax over classes ignores it
    assert float(loss(student + shift, teacher, no_labels(2, 3))) == pytest.approx(float(loss(student, teacher, no_labels(2, 3))), rel=1e-9)


def test_dist_refuses_different_class_counts() -> None:
    with pytest.raises(ConfigError, match="same number of channels"):
        build("dist", (2, 4, 3, 3), (2, 5, 3, 3))


# ----------------------------------------------------------------------------------------------------
# All three: finite on random inputs of odd sizes; the criterion reports build errors with the binding


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["cwd", "hwd", "dist"]),
    b=st.integers(1, 3),
    k=st.integers(2, 6),
    h=st.sampled_from([1, 3, 5]),
    w=st.sampled_from([1, 3, 7]),
    scale=st.floats(0.01, 50.0),
    seed=st.integers(0, 2**16),
)
def test_finite_on_odd_sizes(name: str, b: int, k: int, h: int, w: int, scale: float, seed: int) -> None:
    student, teacher = pair(seed, (b, k, h, w), scale)
    value = build(name, student.shape, teacher.shape)(student.float(), teacher.float(), no_labels(b, k))
    assert torch.isfinite(value) and float(value) >= -1e-5


def test_criterion_names_the_loss_and_tensors_of_a_bad_binding() -> None:
    g = torch.Generator().manual_seed(14)
    student = SegOutput(torch.randn(2, 3, 4, 4, generator=g), None, {"head": torch.randn(2, 8, 4, 4, generator=g)})
    teacher = SegOutput(torch.randn(2, 3, 4, 4, generator=g), None, {"head": torch.randn(2, 16, 4, 4, generator=g)})
    with pytest.raises(ConfigError) as info:
        build_criterion([LossConfig(name="hwd", student="head", teacher="head")], TaskLoss(IGNORE), student, teacher)
    message = str(info.value)
    assert "losses[0]" in message and "'hwd'" in message and "'head'" in message and "8 and 16" in message


# ----------------------------------------------------------------------------------------------------
# One short distillation run per loss through the real trainer


@pytest.mark.parametrize(
    "losses",
    [
        "[{name: cwd, weight: 3.0, params: {tau: 4.0}}]",
        "[{name: cwd, weight: 3.0, student: head, teacher: head}]",  # 8 -> 16 channels: the adapter learns
        "[{name: hwd, weight: 3.0, params: {shift: 1.0, beta: 0.1, div_pixel: count}}]",
        "[{name: dist, weight: 1.0}, {name: dist, weight: 0.4, student: aux_logits}]",
    ],
    ids=["cwd", "cwd_head", "hwd", "dist"],
)
def test_trains_through_the_real_trainer(losses: str, tiny_teacher: Path, tmp_path: Path) -> None:
    args = [*TINY, f"output_dir={tmp_path}", f"teacher.checkpoint={tiny_teacher}", "model.head_channels=8",
            "model.aux_head=true", "train.iterations=2", "train.eval_interval=2", "train.checkpoint_interval=1",
            f"losses={losses}"]  # fmt: skip
    result = main(args)
    assert 0.0 <= result["miou"] <= 1.0
    before, after = (load_file(tmp_path / f"checkpoints/step_000000{i}/model.safetensors") for i in (1, 2))
    learnable = [k for k in after if k.startswith("criterion.") and k.endswith("weight")]
    assert all(not torch.equal(before[k], after[k]) for k in learnable)
    assert bool(learnable) == ("student: head" in losses)
