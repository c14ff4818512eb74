"""Relational losses of docs/loss_math.md against independent float64 loops written from the formulas: SKD
pair-wise with both node granularities (§7.2), IFVD (§8), CIRKD mini-batch and memory (§10); gradients,
invariances, the memory queues (FIFO rule, all-gather over two processes), finite values on odd sizes,
build-time errors, and one short run per loss through the real trainer.

SKD pair-wise and CIRKD mini-batch run through ``kernels`` functions, which keep float64 inputs in float64:
their gradients are checked against the autograd gradient of an independent float64 formula, and every
loss is gradchecked in float64 at full precision.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from segdistill.config import LossConfig
from segdistill.errors import ConfigError
from segdistill.losses import LOSSES, LossContext, TaskLoss, build_criterion
from segdistill.models import SegOutput
from segdistill.parsing import parse_dataclass
from segdistill.tensorboard_scalars import logged_scalars
from segdistill.train import main
from tests.helpers import TINY

IGNORE = 255


def build(name: str, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], num_classes: int | None = None, **params):
    cls = LOSSES.get(name)
    extra = {"num_classes": num_classes} if num_classes is not None else {}
    return cls(parse_dataclass(cls.Params, params, "params"), torch.Size(student_shape), torch.Size(teacher_shape), **extra)


def context(labels: torch.Tensor, num_classes: int) -> LossContext:
    return LossContext(labels.long(), IGNORE, num_classes)


def no_labels(batch: int, classes: int = 3) -> LossContext:
    return context(torch.full((batch, 8, 8), IGNORE), classes)


def pair(seed: int, shape: tuple[int, ...], teacher_shape: tuple[int, ...] | None = None, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    student = scale * torch.randn(shape, generator=g, dtype=torch.float64)
    teacher = scale * torch.randn(teacher_shape or shape, generator=g, dtype=torch.float64)
    return student, teacher


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).sum(axis=-1, keepdims=True))


def softmax_np(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def kl_np(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(p[i] * (math.log(p[i]) - math.log(q[i])) for i in range(len(p))))


# ----------------------------------------------------------------------------------------------------
# SKD pair-wise (§7.2)


def reference_nodes(f: np.ndarray, kernel: tuple[int, int]) -> np.ndarray:
    """Max over kernel x kernel cells (stride = kernel, a partial last cell kept: ceil mode): (N', C)."""
    c, h, w = f.shape
    kh, kw = kernel
    nodes = []
    for top in range(0, h, kh):
        for left in range(0, w, kw):
            nodes.append(f[:, top : top + kh, left : left + kw].reshape(c, -1).max(axis=1))
    return np.stack(nodes)


def reference_skd_pairwise(student: np.ndarray, teacher: np.ndarray, kernel: tuple[int, int]) -> float:
    total = 0.0
    for s_img, t_img in zip(student, teacher, strict=True):
        s_nodes, t_nodes = unit_rows(reference_nodes(s_img, kernel)), unit_rows(reference_nodes(t_img, kernel))
        n = len(s_nodes)
        err = sum((s_nodes[i] @ s_nodes[j] - t_nodes[i] @ t_nodes[j]) ** 2 for i in range(n) for j in range(n))
        total += err / n**2
    return total / len(student)


def official_kernel(h: int, w: int, scale: float = 0.5) -> tuple[int, int]:
    return max(1, int(h * scale)), max(1, int(w * scale))


def test_skd_pairwise_hand_computed() -> None:
    # 2x4 map, 2x2-pixel nodes: student nodes [1, 0] and [0, 1] (affinity I), teacher [1, 0] and [1, 1]
    # (off-diagonal 1/sqrt 2): sum of squared differences 2 * 1/2 = 1, over N'^2 = 4 and B = 1: 0.25.
    student = torch.tensor([[[1.0, 1, 0, 0], [1, 1, 0, 0]], [[0, 0, 1, 1], [0, 0, 1, 1]]])[None]
    teacher = torch.tensor([[[1.0, 1, 1, 1], [1, 1, 1, 1]], [[0, 0, 1, 1], [0, 0, 1, 1]]])[None]
    loss = build("skd_pairwise", (1, 2, 2, 4), (1, 2, 2, 4), nodes="patch")
    assert float(loss(student, teacher, no_labels(1))) == pytest.approx(0.25, rel=1e-6)


@pytest.mark.parametrize("nodes", ["scale", "patch"])
@pytest.mark.parametrize("size", [(8, 8), (9, 7), (5, 5)])
def test_skd_pairwise_matches_formula(nodes: str, size: tuple[int, int]) -> None:
    student, teacher = pair(0, (2, 3, *size), (2, 5, *size))  # channels may differ: no adapter
    kernel = official_kernel(*size) if nodes == "scale" else (2, 2)
    expected = reference_skd_pairwise(student.numpy(), teacher.numpy(), kernel)
    for normalization in ("detached", "normalize"):
        loss = build("skd_pairwise", student.shape, teacher.shape, nodes=nodes, normalization=normalization)
        assert float(loss(student, teacher, no_labels(2))) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_skd_pairwise_granularities_differ() -> None:
    """Official scale 0.5 on 8x8 maps gives 2x2 nodes; the 2x2-pixel patches give 4x4 nodes."""
    student, teacher = pair(1, (1, 3, 8, 8))
    scale = build("skd_pairwise", student.shape, teacher.shape, nodes="scale")(student, teacher, no_labels(1))
    patch = build("skd_pairwise", student.shape, teacher.shape, nodes="patch")(student, teacher, no_labels(1))
    assert float(scale) == pytest.approx(reference_skd_pairwise(student.numpy(), teacher.numpy(), (4, 4)), rel=1e-5)
    assert float(patch) == pytest.approx(reference_skd_pairwise(student.numpy(), teacher.numpy(), (2, 2)), rel=1e-5)
    assert float(scale) != pytest.approx(float(patch), rel=1e-3)


def test_skd_pairwise_invariances() -> None:
    student, teacher = pair(2, (2, 4, 6, 6))
    loss = build("skd_pairwise", student.shape, teacher.shape)
    base = float(loss(student, teacher, no_labels(2)))
    assert abs(float(loss(teacher.clone(), teacher, no_labels(2)))) < 1e-10
    assert float(loss(3.0 * student, teacher, no_labels(2))) == pytest.approx(base, rel=1e-5)
    assert float(loss(student[:, [2, 0, 3, 1]], teacher, no_labels(2))) == pytest.approx(base, rel=1e-5)


def torch_pairwise_formula(student: torch.Tensor, teacher: torch.Tensor, kernel: tuple[int, int], detach_norm: bool) -> torch.Tensor:
    """The same formula in float64 torch ops, with cells cut by slicing, for reference gradients."""

    def nodes(f: torch.Tensor) -> torch.Tensor:
        h, w = f.shape[2:]
        cells = [
            f[:, :, top : top + kernel[0], left : left + kernel[1]].amax(dim=(2, 3))
            for top in range(0, h, kernel[0])
            for left in range(0, w, kernel[1])
        ]
        x = torch.stack(cells, dim=1)  # (B, N', C)
        norm = x.norm(dim=2, keepdim=True)
        return x / (norm.detach() if detach_norm else norm)

    s, t = nodes(student), nodes(teacher)
    n = s.shape[1]
    return ((s @ s.transpose(1, 2) - t @ t.transpose(1, 2)) ** 2).sum() / n**2 / s.shape[0]


@pytest.mark.parametrize("normalization", ["detached", "normalize"])
def test_skd_pairwise_gradient_matches_formula(normalization: str) -> None:
    """Official: the normaliser is detached, which changes the gradient (not the value)."""
    student, teacher = pair(3, (2, 3, 6, 5), (2, 4, 6, 5))
    kernel = official_kernel(6, 5)
    s1 = student.clone().requires_grad_(True)
    build("skd_pairwise", student.shape, teacher.shape, normalization=normalization)(s1, teacher, no_labels(2)).backward()
    s2 = student.clone().requires_grad_(True)
    torch_pairwise_formula(s2, teacher, kernel, detach_norm=normalization == "detached").backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-7)
    s3 = student.clone().requires_grad_(True)
    torch_pairwise_formula(s3, teacher, kernel, detach_norm=normalization != "detached").backward()
    assert not torch.allclose(s1.grad, s3.grad, rtol=1e-2), "detached and kept normalisers must differ in gradient"


def test_skd_pairwise_gradcheck() -> None:
    # F.normalize keeps the normaliser's gradient, so finite differences apply (the detached form, by
    # design, is not the derivative of its value).
    _, teacher = pair(4, (2, 3, 4, 4))
    # distinct values 0.04 apart: a 1e-3 step never changes which pixel is a cell's maximum
    student = (torch.randperm(96, generator=torch.Generator().manual_seed(4)).double() / 24 - 2).view(2, 3, 4, 4)
    loss = build("skd_pairwise", student.shape, teacher.shape, normalization="normalize", nodes="patch")
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, no_labels(2)), (student.requires_grad_(True),))


# ----------------------------------------------------------------------------------------------------
# IFVD (§8)


def legacy_nearest(labels: np.ndarray, h: int, w: int) -> np.ndarray:
    big_h, big_w = labels.shape[-2:]
    rows = [min(big_h - 1, math.floor(i * big_h / h)) for i in range(h)]
    cols = [min(big_w - 1, math.floor(j * big_w / w)) for j in range(w)]
    return labels[..., rows, :][..., cols]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-8))


def reference_ifv_map(f: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    c, h, w = f.shape
    out = np.ones((h, w))
    for y in range(h):
        for x in range(w):
            cls = labels[y, x]
            if not 0 <= cls < k:
                continue  # the pixel's own feature is its centre: M = 1
            members = [f[:, i, j] for i in range(h) for j in range(w) if labels[i, j] == cls]
            prototype = sum(members) / (len(members) + 1e-6)
            out[y, x] = cosine(f[:, y, x], prototype)
    return out


def reference_ifvd(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, k: int) -> float:
    h, w = student.shape[2:]
    small = legacy_nearest(labels, h, w)
    diffs = [(reference_ifv_map(s, y, k) - reference_ifv_map(t, y, k)) ** 2 for s, t, y in zip(student, teacher, small, strict=True)]
    return float(np.mean(diffs))


def test_ifvd_hand_computed() -> None:
    # one image, two pixels of class 0. Student [1, 0] and [0, 1]: prototype ~ [.5, .5], cos 1/sqrt 2 each;
    # teacher [1, 0] twice: cos 1. Loss = (1 - 1/sqrt 2)^2.
    student = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    teacher = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])
    loss = build("ifvd", student.shape, teacher.shape)
    value = loss(student, teacher, context(torch.zeros(1, 1, 2), 2))
    assert float(value) == pytest.approx((1 - 2**-0.5) ** 2, rel=1e-5)


@pytest.mark.parametrize("feature_size", [(4, 4), (3, 5)])
def test_ifvd_matches_formula(feature_size: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(5)
    student, teacher = pair(5, (2, 3, *feature_size), (2, 6, *feature_size))
    labels = torch.randint(0, 4, (2, 9, 11), generator=g)  # label 3 is outside [0, 3): ignored
    labels[0, :3] = IGNORE
    expected = reference_ifvd(student.numpy(), teacher.numpy(), labels.numpy(), 3)
    got = build("ifvd", student.shape, teacher.shape)(student, teacher, context(labels, 3))
    assert float(got) == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_ifvd_labels_resized_from_the_top_left_pixel() -> None:
    """A 4x4 label map to a 2x2 feature takes rows/columns 0 and 2, not the cell centres."""
    labels = torch.full((1, 4, 4), IGNORE)
    labels[0, 0, 0] = 0
    labels[0, 0, 2] = 0
    # every other label pixel is ignored: only the top row of the feature is labelled
    student = torch.tensor([[[[1.0, 0.0], [5.0, 7.0]], [[0.0, 1.0], [3.0, 1.0]]]])
    teacher = torch.ones(1, 2, 2, 2)
    value = build("ifvd", student.shape, teacher.shape)(student, teacher, context(labels, 1))
    assert float(value) == pytest.approx(2 * (1 - 2**-0.5) ** 2 / 4, rel=1e-5)


def test_ifvd_invariances() -> None:
    g = torch.Generator().manual_seed(6)
    student, teacher = pair(6, (2, 3, 4, 4))
    labels = context(torch.randint(0, 3, (2, 8, 8), generator=g), 3)
    loss = build("ifvd", student.shape, teacher.shape)
    base = float(loss(student, teacher, labels))
    assert base > 0
    assert abs(float(loss(teacher.clone(), teacher, labels))) < 1e-12
    assert float(loss(2.5 * student, teacher, labels)) == pytest.approx(base, rel=1e-9)
    # every pixel ignored: M = 1 in both nets, so 0
    assert abs(float(loss(student, teacher, no_labels(2)))) < 1e-20


def test_ifvd_gradcheck() -> None:
    g = torch.Generator().manual_seed(7)
    student, teacher = pair(7, (2, 3, 3, 4), (2, 2, 3, 4))
    labels = context(torch.randint(0, 3, (2, 6, 8), generator=g), 3)
    loss = build("ifvd", student.shape, teacher.shape)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher, labels), (student.requires_grad_(True),))


# ----------------------------------------------------------------------------------------------------
# CIRKD mini-batch pixel-to-pixel (§10)


def reference_cirkd_minibatch(student: np.ndarray, teacher: np.ndarray, tau: float) -> float:
    b, n = student.shape[0], student.shape[2] * student.shape[3]
    s = [unit_rows(img.reshape(img.shape[0], -1).T) for img in student]  # (HW, C) per image
    t = [unit_rows(img.reshape(img.shape[0], -1).T) for img in teacher]
    total = 0.0
    for i in range(b):
        for j in range(b):
            rows = [kl_np(softmax_np(t[i][p] @ t[j].T / tau), softmax_np(s[i][p] @ s[j].T / tau)) for p in range(n)]
            total += sum(rows) / n
    return total / b**2


def test_cirkd_minibatch_hand_computed() -> None:
    # one image of 2 pixels: student pixels orthonormal (rows [10, 0] and [0, 10] at tau 0.1), teacher pixels
    # equal (uniform rows): each row's KL(uniform || softmax([10, 0])) = log(1 + e^-10) + 5 - log 2.
    student = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    teacher = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])
    value = build("cirkd_minibatch", student.shape, teacher.shape)(student, teacher, no_labels(1))
    assert float(value) == pytest.approx(math.log(1 + math.exp(-10)) + 5 - math.log(2), rel=1e-5)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_cirkd_minibatch_matches_formula(tau: float) -> None:
    student, teacher = pair(8, (3, 4, 3, 5), (3, 6, 3, 5))
    expected = reference_cirkd_minibatch(student.numpy(), teacher.numpy(), tau)
    got = build("cirkd_minibatch", student.shape, teacher.shape, tau=tau)(student, teacher, no_labels(3))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_cirkd_minibatch_invariances() -> None:
    student, teacher = pair(9, (2, 4, 3, 3))
    loss = build("cirkd_minibatch", student.shape, teacher.shape)
    base = float(loss(student, teacher, no_labels(2)))
    assert base > 0
    assert abs(float(loss(teacher.clone(), teacher, no_labels(2)))) < 1e-6
    assert float(loss(4.0 * student, teacher, no_labels(2))) == pytest.approx(base, rel=1e-5)
    assert float(loss(student[:, [3, 1, 0, 2]], teacher, no_labels(2))) == pytest.approx(base, rel=1e-5)
    # cross-image pairs count: swapping the images of the batch in both nets changes nothing
    assert float(loss(student.flip(0), teacher.flip(0), no_labels(2))) == pytest.approx(base, rel=1e-5)


def test_cirkd_minibatch_gradient() -> None:
    student, teacher = pair(10, (2, 3, 2, 3), (2, 5, 2, 3))
    loss = build("cirkd_minibatch", student.shape, teacher.shape)
    s1 = student.clone().requires_grad_(True)
    loss(s1, teacher, no_labels(2)).backward()

    def formula(s: torch.Tensor) -> torch.Tensor:
        x, y = F.normalize(s.flatten(2), dim=1), F.normalize(teacher.flatten(2), dim=1)
        total = s.new_zeros(())
        for i in range(2):
            for j in range(2):
                log_p_s = torch.log_softmax(x[i].T @ x[j] / 0.1, dim=1)
                p_t = torch.softmax(y[i].T @ y[j] / 0.1, dim=1)
                total = total + (p_t * (p_t.log() - log_p_s)).sum() / x.shape[2]
        return total / 4

    s2 = student.clone().requires_grad_(True)
    formula(s2).backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-7)
    # finite differences at tau 0.5: at 0.1 the curvature makes a 1e-3 step too coarse for float32
    smooth = build("cirkd_minibatch", student.shape, teacher.shape, tau=0.5)
    assert torch.autograd.gradcheck(lambda s: smooth(s, teacher, no_labels(2)), (student.clone().requires_grad_(True),))


# ----------------------------------------------------------------------------------------------------
# CIRKD memory pixel-to-pixel / pixel-to-region (§10)


def memory_loss(c_s: int, c_t: int, k: int, size: tuple[int, int] = (2, 3), **params):
    torch.manual_seed(0)
    return build("cirkd_memory", (2, c_s, *size), (2, c_t, *size), num_classes=k, **params)


def test_cirkd_memory_enqueue() -> None:
    """Region queue: one normalised class mean per image and class; pixel queue: the class's pixels."""
    loss = memory_loss(3, 4, k=3, pixel_memory=10, region_memory=4)
    teacher = F.normalize(torch.randn(2, 4, 2, 3), dim=1)
    labels = torch.tensor([[[0, 0, 1], [1, 1, 255]], [[2, 2, 2], [0, 2, 2]]])
    loss.enqueue(teacher, labels)
    assert loss.region_queue_ptr.tolist() == [2, 1, 1]  # class 0 in both images, 1 and 2 in one each
    assert loss.pixel_queue_ptr.tolist() == [3, 3, 5]
    for img, k, slot in [(0, 0, 0), (1, 0, 1), (0, 1, 0), (1, 2, 0)]:
        members = [teacher[img, :, y, x] for y in range(2) for x in range(3) if labels[img, y, x] == k]
        mean = sum(members) / len(members)
        torch.testing.assert_close(loss.region_queue[k, slot], mean / mean.norm())
    stored = {tuple(np.round(v.numpy(), 5)) for v in loss.pixel_queue[2, :5]}
    expected = {tuple(np.round(teacher[1, :, y, x].numpy(), 5)) for y in range(2) for x in range(3) if labels[1, y, x] == 2}
    assert stored == expected, "the pixel queue must hold the pixels of the class"


def test_cirkd_memory_pixel_queue_wraps_as_the_official_code() -> None:
    """When a batch does not fit before the end, it fills the last slots and the pointer restarts at 0."""
    loss = memory_loss(2, 2, k=1, size=(1, 3), pixel_memory=5, region_memory=2)
    first, second = F.normalize(torch.randn(1, 2, 1, 3), dim=1), F.normalize(torch.randn(1, 2, 1, 3), dim=1)
    zeros = torch.zeros(1, 1, 3, dtype=torch.long)
    loss.enqueue(first, zeros)
    assert int(loss.pixel_queue_ptr[0]) == 3
    loss.enqueue(second, zeros)
    assert int(loss.pixel_queue_ptr[0]) == 0
    as_set = lambda rows: {tuple(np.round(r.numpy(), 5)) for r in rows}  # noqa: E731
    assert as_set(loss.pixel_queue[0, 2:5]) == as_set(second[0].flatten(1).T)
    assert as_set(loss.pixel_queue[0, :2]) <= as_set(first[0].flatten(1).T)


def reference_queue_kl(s: np.ndarray, t: np.ndarray, memory: np.ndarray, tau: float, temperature: float) -> float:
    rows = [kl_np(softmax_np(t[a] @ memory.T / tau / temperature), softmax_np(s[a] @ memory.T / tau / temperature)) for a in range(len(s))]
    return sum(rows) / len(rows) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_cirkd_memory_matches_formula(temperature: float) -> None:
    # contrast sizes >= the queues: every slot is drawn, so the value does not depend on the random draw
    k = 3
    loss = memory_loss(3, 4, k=k, pixel_memory=6, region_memory=3, pixel_contrast=100, region_contrast=100,
                       kd_temperature=temperature, pixel_weight=1.0, region_weight=0.5)  # fmt: skip
    loss.double()
    student, teacher = pair(11, (2, 3, 2, 3), (2, 4, 2, 3))
    labels = torch.tensor([[[0, 0, 1], [1, 255, 2]], [[2, 2, 2], [0, 2, 2]]])
    parts = loss(student, teacher, context(labels, k))
    with torch.no_grad():
        s = F.normalize(loss.projection(student), dim=1).permute(0, 2, 3, 1).reshape(-1, 4).numpy()
    t = unit_rows(teacher.permute(0, 2, 3, 1).reshape(-1, 4).numpy())
    valid = labels.flatten().numpy() != IGNORE
    pixel_memory = loss.pixel_queue.reshape(-1, 4).numpy()
    region_memory = loss.region_queue.reshape(-1, 4).numpy()
    assert parts.keys() == {"pixel", "region"}  # logged apart
    expected_pixel = reference_queue_kl(s[valid], t[valid], pixel_memory, 0.1, temperature)
    expected_region = 0.5 * reference_queue_kl(s[valid], t[valid], region_memory, 0.1, temperature)
    assert float(parts["pixel"].detach()) == pytest.approx(expected_pixel, rel=1e-9)
    assert float(parts["region"].detach()) == pytest.approx(expected_region, rel=1e-9)


def test_cirkd_memory_zero_for_matching_embeddings() -> None:
    from segdistill.losses.cirkd_memory import queue_kl

    g = torch.Generator().manual_seed(12)
    anchors, memory = F.normalize(torch.randn(5, 4, generator=g), dim=1), F.normalize(torch.randn(7, 4, generator=g), dim=1)
    assert abs(float(queue_kl(anchors, anchors, memory, 0.1, 1.0))) < 1e-6
    assert float(queue_kl(anchors.flip(0), anchors, memory, 0.1, 1.0)) > 0.1


def test_cirkd_memory_gradcheck() -> None:
    loss = memory_loss(2, 3, k=2, pixel_memory=4, region_memory=2, pixel_contrast=3, region_contrast=1).double()
    student, teacher = pair(13, (2, 2, 2, 3), (2, 3, 2, 3))
    labels = context(torch.tensor([[[0, 0, 1], [1, 255, 1]], [[1, 1, 1], [0, 0, 1]]]), 2)
    start = {name: b.clone() for name, b in loss.named_buffers() if "queue" in name}

    def fresh(s: torch.Tensor) -> torch.Tensor:  # same queues and the same random draws at every call
        for name, buffer in loss.named_buffers():
            if name in start:
                buffer.copy_(start[name])
        torch.manual_seed(1)
        return sum(loss(s, teacher, labels).values())

    assert torch.autograd.gradcheck(fresh, (student.requires_grad_(True),))


def test_cirkd_memory_without_valid_pixels_still_reaches_the_projection() -> None:
    loss = memory_loss(2, 3, k=2, pixel_memory=4, region_memory=2)
    student, teacher = pair(14, (2, 2, 2, 3), (2, 3, 2, 3))
    value = sum(loss(student.float(), teacher.float(), no_labels(2, 2)).values())
    assert value.item() == 0.0
    value.backward()
    assert all(p.grad is not None for p in loss.projection.parameters())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _enqueue_on_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    loss = memory_loss(2, 3, k=2, pixel_memory=8, region_memory=4)
    teacher = torch.full((1, 3, 2, 3), float(rank + 1))
    teacher[:, rank] += 1  # rank r's image: class r everywhere, embedding direction depends on r
    loss(torch.ones(1, 2, 2, 3), teacher, context(torch.full((1, 2, 3), rank), 2))
    torch.save({k: v for k, v in loss.state_dict().items() if "queue" in k}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_cirkd_memory_queues_are_filled_from_every_process(tmp_path: Path) -> None:
    # fork: the children reuse this process's imports (spawning two fresh interpreters costs ~20 s here)
    mp.start_processes(_enqueue_on_rank, args=(free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], msg=f"{key} differs between the processes")
    assert states[0]["region_queue_ptr"].tolist() == [1, 1], "each class came from the other process once"
    for rank in (0, 1):
        expected = torch.full((3,), float(rank + 1))
        expected[rank] += 1
        torch.testing.assert_close(states[0]["region_queue"][rank, 0], expected / expected.norm())


# ----------------------------------------------------------------------------------------------------
# All: finite values on odd sizes, build-time errors, a run through the trainer


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    c_s=st.integers(1, 5),
    c_t=st.integers(1, 6),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_finite_on_odd_sizes(b: int, c_s: int, c_t: int, h: int, w: int, scale: float, seed: int) -> None:
    student, teacher = pair(seed, (b, c_s, h, w), (b, c_t, h, w), scale)
    student, teacher = student.float(), teacher.float()
    g = torch.Generator().manual_seed(seed)
    labels = context(torch.randint(0, 4, (b, 2 * h + 1, 2 * w + 1), generator=g), 3)
    losses = [
        build("skd_pairwise", student.shape, teacher.shape, nodes="scale"),
        build("skd_pairwise", student.shape, teacher.shape, nodes="patch", normalization="normalize"),
        build("ifvd", student.shape, teacher.shape),
        build("cirkd_minibatch", student.shape, teacher.shape),
    ]
    if b * h * w > 1:  # the projection head's BatchNorm needs more than one value per channel
        losses.append(build("cirkd_memory", student.shape, teacher.shape, num_classes=3, pixel_memory=5, region_memory=3,
                            pixel_contrast=7, region_contrast=4))  # fmt: skip
    for loss in losses:
        value = loss(student.clone().requires_grad_(True), teacher, labels)
        value = sum(value.values()) if isinstance(value, dict) else value
        assert torch.isfinite(value) and value.item() >= -1e-6, type(loss).__name__
        value.backward()


@pytest.mark.parametrize("name", ["skd_pairwise", "ifvd", "cirkd_minibatch"])
def test_student_of_another_stride_is_resized_to_the_teacher(name: str) -> None:
    """A stride-4 student and a stride-8 teacher (a heterogeneous pair): the student map is resized bilinearly
    to the teacher's size, as every other loss does, then compared as at one stride."""
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 8, 8, 8, generator=g, dtype=torch.float64), torch.randn(2, 16, 4, 4, generator=g, dtype=torch.float64)
    labels = LossContext(torch.randint(0, 3, (2, 16, 16), generator=g), IGNORE, 3)
    resized = F.interpolate(student, size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.equal(build(name, student.shape, teacher.shape)(student, teacher, labels), build(name, resized.shape, teacher.shape)(resized, teacher, labels))


def test_relational_losses_refuse_tensors_that_are_not_maps() -> None:
    student = SegOutput(torch.zeros(2, 3, 4, 4), None, {"head": torch.zeros(2, 8)})
    teacher = SegOutput(torch.zeros(2, 3, 4, 4), None, {"head": torch.zeros(2, 16, 4, 4)})
    for name in ("skd_pairwise", "ifvd", "cirkd_minibatch", "cirkd_memory"):
        with pytest.raises(ConfigError, match=rf"losses\[0\]: loss '{name}' \(student 'head' \(2, 8\).*must be a \(B, C, H, W\) map"):
            build_criterion([LossConfig(name=name)], TaskLoss(IGNORE), student, teacher)


def test_cirkd_memory_queues_sized_from_the_class_count() -> None:
    student = SegOutput(torch.zeros(2, 5, 4, 4), None, {"head": torch.zeros(2, 8, 4, 4)})
    teacher = SegOutput(torch.zeros(2, 5, 4, 4), None, {"head": torch.zeros(2, 16, 4, 4)})
    criterion = build_criterion([LossConfig(name="cirkd_memory", params={"pixel_memory": 7})], TaskLoss(IGNORE), student, teacher)
    assert criterion.terms[0].pixel_queue.shape == (5, 7, 16) and criterion.terms[0].region_queue.shape == (5, 2000, 16)


@pytest.mark.parametrize(
    "loss",
    [
        "{name: skd_pairwise, weight: 0.5}",
        "{name: ifvd, weight: 200.0}",
        "{name: cirkd_minibatch, weight: 1.0}",
        "{name: cirkd_memory, weight: 0.1, params: {pixel_memory: 64, region_memory: 8}}",
    ],
)
def test_trains_through_the_trainer(loss: str, tiny_teacher: Path, tmp_path: Path) -> None:
    # the student's head is narrower than the teacher's (8 vs 16 channels): relations need no adapter
    result = main([*TINY, f"output_dir={tmp_path}", "train.iterations=2", "model.head_channels=8",
                   f"teacher.checkpoint={tiny_teacher}", f"losses=[{loss}]"])  # fmt: skip
    assert 0.0 <= result["miou"] <= 1.0
    name = loss.split(",")[0].removeprefix("{name: ")
    scalars = logged_scalars(tmp_path)
    parts = [f"loss/{name}_pixel", f"loss/{name}_region"] if name == "cirkd_memory" else [f"loss/{name}"]
    for part in parts:
        assert len(scalars[part]) == 2 and all(math.isfinite(v) and v > 0 for v in scalars[part]), part
