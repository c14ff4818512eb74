"""The kernels' public functions on CPU (the references): against formulas written out independently
(float64 loops in numpy), against the published materialising forms, float64 gradcheck, invariances,
dispatch and argument errors."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segdistill import kernels
from segdistill.kernels import affinity, blocks, contrast, dispatch, naive


def softmax_np(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()


def kl_np(teacher_row: np.ndarray, student_row: np.ndarray) -> float:
    p_t, p_s = softmax_np(teacher_row), softmax_np(student_row)
    return float(np.sum(p_t * (np.log(p_t) - np.log(p_s))))


def spatial_kl_np(s: np.ndarray, t: np.ndarray, tau: float, weight: np.ndarray) -> float:
    n, c = s.shape[:2]
    return sum(
        weight[i, j] * kl_np(t[i, j].ravel() / tau, s[i, j].ravel() / tau) for i in range(n) for j in range(c)
    )


def class_kl_np(s: np.ndarray, t: np.ndarray, tau: float) -> float:
    n, _, h, w = s.shape
    return sum(
        kl_np(t[i, :, y, x] / tau, s[i, :, y, x] / tau) for i in range(n) for y in range(h) for x in range(w)
    )


def patch_contrast_np(g: np.ndarray, t: np.ndarray, patch: int, groups: int, tau: float) -> float:
    """Token by token, as docs/loss_math.md §4.4 states it."""
    b, c, h, w = g.shape
    d = c // groups
    total = 0.0
    for image in range(b):
        for row0 in range(0, h, patch):
            for col0 in range(0, w, patch):

                def token(x, k, image=image, row0=row0, col0=col0):
                    position, group = divmod(k, groups)
                    y, x_ = row0 + position // patch, col0 + position % patch
                    return x[image, group * d : (group + 1) * d, y, x_]

                tokens = patch * patch * groups
                for k in range(tokens):
                    sims = {m: -np.abs(token(g, k) - token(t, m)).sum() / tau for m in range(tokens)}
                    negatives = [sims[m] for m in range(tokens) if m % groups != k % groups]
                    logits = np.array([sims[k], *negatives])
                    total += -(logits[0] - logits.max() - math.log(np.exp(logits - logits.max()).sum()))
    return total


def pairwise_mse_np(x: np.ndarray, y: np.ndarray) -> float:
    b, _, n = x.shape
    return sum(
        (x[k, :, i] @ x[k, :, j] - y[k, :, i] @ y[k, :, j]) ** 2
        for k in range(b)
        for i in range(n)
        for j in range(n)
    )


def cross_image_kl_np(x: np.ndarray, y: np.ndarray, tau: float) -> float:
    b, _, n = x.shape
    total = 0.0
    for i in range(b):
        for j in range(b):
            for p in range(n):
                total += kl_np(y[i, :, p] @ y[j] / tau, x[i, :, p] @ x[j] / tau)
    return total


def unit_nodes(*shape: int, dtype=torch.float64) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, dtype=dtype), dim=1)


# ----------------------------------------------------------------------------- hand-checkable values


def test_spatial_kl_two_positions_by_hand():
    # One row over 2 positions: p_t = (3/4, 1/4), p_s = (1/2, 1/2).
    student = torch.zeros(1, 1, 1, 2)
    teacher = torch.tensor([math.log(3.0), 0.0]).view(1, 1, 1, 2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kernels.spatial_softmax_kl(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    # tau = 2 halves the logits: p_t = (sqrt3, 1) / (sqrt3 + 1).
    q = math.sqrt(3) / (math.sqrt(3) + 1)
    expected_tau2 = q * math.log(2 * q) + (1 - q) * math.log(2 * (1 - q))
    assert kernels.spatial_softmax_kl(student, teacher, tau=2.0).item() == pytest.approx(
        expected_tau2, rel=1e-6
    )


def test_class_kl_is_zero_for_equal_inputs_and_positive_otherwise():
    x = torch.randn(2, 5, 3, 4)
    assert kernels.class_softmax_kl(x, x.clone()).item() == pytest.approx(0.0, abs=1e-5)
    assert kernels.class_softmax_kl(x, torch.randn(2, 5, 3, 4)).item() > 0.1


def test_patch_contrast_single_patch_by_hand():
    # patch 1, 2 groups of 1 channel: tokens g = (0, 1), t = (0, 3); anchor 0 sees positive 0 and
    # negative 1 (other group); anchor 1 sees positive 1 and negative 0. Same group elsewhere: none.
    g = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    t = torch.tensor([0.0, 3.0]).view(1, 2, 1, 1)
    # anchor 0: S = (0, -3); anchor 1: S = (-2, -1) for (pos, neg).
    expected = math.log(1 + math.exp(-3.0)) + math.log(1 + math.exp(-1.0 + 2.0))
    got = kernels.patch_contrast(g, t, patch=1, groups=2, tau=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_affinity_identical_networks_give_zero_and_two_nodes_by_hand():
    x = unit_nodes(2, 4, 6)
    assert kernels.pairwise_affinity_mse(x, x.clone()).item() == pytest.approx(0.0, abs=1e-9)
    assert kernels.cross_image_affinity_kl(x, x.clone()).item() == pytest.approx(0.0, abs=1e-5)
    # Two orthogonal student nodes vs two equal teacher nodes: affinities I vs all-ones, 2 entries of 1.
    student = torch.eye(2).view(1, 2, 2)
    teacher = torch.ones(1, 1, 2)
    assert kernels.pairwise_affinity_mse(student, teacher).item() == pytest.approx(2.0)


# ------------------------------------------------------------------ against the independent formulas


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 19, 3, 5)])
@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_softmax_kl_matches_loops(shape, tau):
    s, t = torch.randn(shape, dtype=torch.float64) * 3, torch.randn(shape, dtype=torch.float64) * 3
    weight = torch.rand(shape[:2], dtype=torch.float64)
    got = kernels.spatial_softmax_kl(s, t, tau, weight)
    assert got.dtype == torch.float64  # float64 in, float64 out: the losses built on it pass float64 gradcheck
    assert got.item() == pytest.approx(spatial_kl_np(s.numpy(), t.numpy(), tau, weight.numpy()), rel=1e-10)
    got_class = kernels.class_softmax_kl(s, t, tau)
    assert got_class.item() == pytest.approx(class_kl_np(s.numpy(), t.numpy(), tau), rel=1e-5)


@pytest.mark.parametrize(("shape", "patch", "groups"), [((2, 8, 4, 4), 2, 4), ((1, 15, 2, 4), 2, 3)])
def test_patch_contrast_matches_loops_and_published_form(shape, patch, groups):
    g, t = torch.randn(shape), torch.randn(shape)
    expected = patch_contrast_np(g.double().numpy(), t.double().numpy(), patch, groups, tau=0.5)
    assert kernels.patch_contrast(g, t, patch, groups, tau=0.5).item() == pytest.approx(expected, rel=1e-5)
    assert naive.naive_patch_contrast(g, t, patch, groups, tau=0.5).item() == pytest.approx(
        expected, rel=1e-5
    )


@pytest.mark.parametrize(("b", "cs", "ct", "n"), [(2, 3, 5, 7), (3, 4, 2, 5)])
def test_affinities_match_loops_and_published_forms(b, cs, ct, n):
    x, y = unit_nodes(b, cs, n), unit_nodes(b, ct, n)
    mse = pairwise_mse_np(x.numpy(), y.numpy())
    kl = cross_image_kl_np(x.numpy(), y.numpy(), tau=0.1)
    assert kernels.pairwise_affinity_mse(x, y).item() == pytest.approx(mse, rel=1e-5)
    assert naive.naive_pairwise_affinity_mse(x, y).item() == pytest.approx(mse, rel=1e-5)
    assert kernels.cross_image_affinity_kl(x, y, tau=0.1).item() == pytest.approx(kl, rel=1e-5)
    assert naive.naive_cross_image_affinity_kl(x, y, tau=0.1).item() == pytest.approx(kl, rel=1e-5)


def test_chunked_references_equal_the_materialising_forms_in_value_and_gradient(monkeypatch):
    # A budget of 1/6 and no floor: SKD blocks of 1 of the 13 rows of both images, CIRKD of 1 row,
    # Af-DCD bands of 1 of the 3 patch rows (16 tokens, 3 patches a row), each checkpointed.
    monkeypatch.setattr(blocks, "MIN_BLOCK_ENTRIES", 0)
    monkeypatch.setattr(blocks, "WORKING_FRACTION", 6)
    x, y = unit_nodes(2, 3, 13, dtype=torch.float32), unit_nodes(2, 4, 13, dtype=torch.float32)
    g, t = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    cases = [
        (kernels.pairwise_affinity_mse, naive.naive_pairwise_affinity_mse, x, y, {}),
        (kernels.cross_image_affinity_kl, naive.naive_cross_image_affinity_kl, x, y, {"tau": 0.2}),
        (kernels.patch_contrast, naive.naive_patch_contrast, g, t, {"patch": 2, "groups": 4, "tau": 0.3}),
    ]
    for lean, materialising, student, teacher, kwargs in cases:
        a = student.clone().requires_grad_()
        b = student.clone().requires_grad_()
        lean_value = lean(a, teacher, **kwargs)
        naive_value = materialising(b, teacher, **kwargs)
        lean_value.backward()
        naive_value.backward()
        torch.testing.assert_close(lean_value, naive_value, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_reference_blocks_at_the_benchmark_shapes_are_few_and_within_a_quarter_of_the_published_memory():
    """Blocks from the memory budget: a handful (not the 128 blocks of 64 rows a CIRKD image had), with
    the block's buffers at most 1/4 of the published form's."""
    b, skd_n, cirkd_n = 2, 2048, 8192
    shapes = {  # total entries, entries a row, buffer counts, rows an image
        "SKD": (b * skd_n**2, b * skd_n, affinity.SKD_MATERIALISING_BUFFERS, affinity.SKD_BLOCK_BUFFERS, skd_n),
        "CIRKD": (b * b * cirkd_n**2, b * cirkd_n, affinity.CIRKD_MATERIALISING_BUFFERS, affinity.CIRKD_BLOCK_BUFFERS,
                  cirkd_n),
        # Af-DCD pooled c4 2x2048x16x32: 4 patch rows an image of 8 patches of 256 x 256 similarities.
        "Af-DCD": (b * 4 * 8 * 256**2, 8 * 256**2, contrast.MATERIALISING_BUFFERS, contrast.BAND_BUFFERS, 4),
    }  # fmt: skip
    for name, (total, row, materialising, block, rows_per_image) in shapes.items():
        rows = blocks.block_rows(rows_per_image, row, total, materialising, block)
        assert math.ceil(rows_per_image / rows) <= 8, name
        assert block * rows * row <= materialising * total / 4, name


# --------------------------------------------------------------------------- gradients (float64)


def test_references_pass_float64_gradcheck():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 2, 3, dtype=torch.float64), torch.randn(2, 3, 2, 3, dtype=torch.float64)
    weight = torch.rand(2, 3, dtype=torch.float64)
    # The functions compute in float32 by contract; gradcheck goes through the float64 references.
    from segdistill.kernels.softmax_kl import softmax_kl_rows_reference

    def spatial(x):
        return (softmax_kl_rows_reference(x.flatten(2), t.flatten(2), 2.0, 2) * weight).sum()

    def classwise(x):
        return softmax_kl_rows_reference(x.flatten(2), t.flatten(2), 0.5, 1).sum()

    def omni_contrast(x):
        return contrast.patch_contrast_reference(x, t_patch, 2, 2, 0.5)

    def pairwise(x):
        return affinity.pairwise_affinity_mse_reference(x, y)

    def cross_image(x):
        return affinity.cross_image_affinity_kl_reference(x, y, 0.5)

    t_patch = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    x, y = unit_nodes(2, 3, 5), unit_nodes(2, 2, 5)
    for fn, inp in [
        (spatial, s),
        (classwise, s),
        (omni_contrast, torch.randn(1, 4, 2, 2, dtype=torch.float64)),
        (pairwise, x),
        (cross_image, x),
    ]:
        assert torch.autograd.gradcheck(fn, (inp.clone().requires_grad_(),), eps=1e-6, atol=1e-5), fn.__name__


def test_gradients_match_the_closed_forms_of_losses_md():
    # docs/loss_math.md §2: d/ds sum KL = (1/tau) (softmax(s/tau) - softmax(t/tau)) per row.
    s = torch.randn(2, 3, 4, 5, requires_grad=True)
    t = torch.randn(2, 3, 4, 5)
    tau = 3.0
    kernels.spatial_softmax_kl(s, t, tau).backward()
    expected = (torch.softmax(s.detach().flatten(2) / tau, -1) - torch.softmax(t.flatten(2) / tau, -1)) / tau
    torch.testing.assert_close(s.grad, expected.view_as(s), rtol=1e-5, atol=1e-7)
    # SKD: d/dX ||X^T X - Y^T Y||_F^2 = 4 X (X^T X - Y^T Y).
    x, y = unit_nodes(1, 3, 6, dtype=torch.float32).requires_grad_(), unit_nodes(1, 2, 6, dtype=torch.float32)
    kernels.pairwise_affinity_mse(x, y).backward()
    d = x.detach()[0].T @ x.detach()[0] - y[0].T @ y[0]
    torch.testing.assert_close(x.grad[0], 4 * x.detach()[0] @ d, rtol=1e-5, atol=1e-6)


def test_teacher_gets_no_gradient_and_outputs_are_float32_for_half_inputs():
    s = torch.randn(1, 8, 4, 4, dtype=torch.float16, requires_grad=True)
    t = torch.randn(1, 8, 4, 4, dtype=torch.float16, requires_grad=True)
    values = [
        kernels.spatial_softmax_kl(s, t, 2.0),
        kernels.class_softmax_kl(s, t),
        kernels.patch_contrast(s, t, patch=2, groups=4, tau=0.5),
        kernels.pairwise_affinity_mse(s.flatten(2), t.flatten(2)),
        kernels.cross_image_affinity_kl(s.flatten(2), t.flatten(2)),
    ]
    for value in values:
        assert value.dtype == torch.float32 and value.dim() == 0
    sum(values).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.dtype == torch.float16 and torch.isfinite(s.grad).all()


# ------------------------------------------------------------------------------------ invariances


def test_invariances():
    s, t = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    # Softmax over space ignores a constant per (n, c) row; over classes a constant per pixel.
    shift_row = torch.randn(2, 4, 1, 1)
    torch.testing.assert_close(kernels.spatial_softmax_kl(s + shift_row, t), kernels.spatial_softmax_kl(s, t))
    shift_pixel = torch.randn(2, 1, 3, 5)
    torch.testing.assert_close(kernels.class_softmax_kl(s + shift_pixel, t), kernels.class_softmax_kl(s, t))
    # L1 distances ignore a common translation of student and teacher.
    g, h = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)
    torch.testing.assert_close(
        kernels.patch_contrast(g + 5.0, h + 5.0, 2, 4, 0.5),
        kernels.patch_contrast(g, h, 2, 4, 0.5),
        rtol=1e-5,
        atol=1e-3,
    )
    # Affinities ignore a rotation of the student's channels and a joint permutation of the nodes
    # (CIRKD: the same permutation in every image).
    x, y = unit_nodes(2, 4, 9, dtype=torch.float32), unit_nodes(2, 6, 9, dtype=torch.float32)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4))
    perm = torch.randperm(9)
    for fn in (kernels.pairwise_affinity_mse, kernels.cross_image_affinity_kl):
        torch.testing.assert_close(fn(rotation @ x, y), fn(x, y), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fn(x[:, :, perm], y[:, :, perm]), fn(x, y), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ dispatch and errors


def test_dispatch_auto_reference_switch_and_environment(monkeypatch):
    cpu = torch.zeros(1)
    cuda_like = types.SimpleNamespace(is_cuda=True)  # only .is_cuda is read by the dispatcher
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    assert dispatch.resolve_backend("auto", cpu) == "reference"
    assert dispatch.resolve_backend("auto", cuda_like) == "triton"
    with kernels.use_reference(True):
        assert dispatch.resolve_backend("auto", cuda_like) == "reference"
        with kernels.use_reference(False):
            assert dispatch.resolve_backend("auto", cuda_like) == "triton"
        assert dispatch.resolve_backend("auto", cuda_like) == "reference"
    assert dispatch.resolve_backend("auto", cuda_like) == "triton"
    kernels.use_reference(True)  # a plain call applies and stays
    assert dispatch.resolve_backend("auto", cuda_like) == "reference"
    kernels.use_reference(False)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    assert dispatch.resolve_backend("auto", cuda_like) == "reference"
    monkeypatch.setenv(dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="SEGDISTILL_KERNELS='fast'.*auto, reference"):
        dispatch.resolve_backend("auto", cuda_like)
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    monkeypatch.setenv(dispatch.ENV_VAR, "auto")
    assert dispatch.resolve_backend("auto", cuda_like) == "reference"
    with pytest.raises(RuntimeError, match="triton is not installed"):
        dispatch.resolve_backend("triton", cpu)


def test_forced_triton_runs_auto_calls_on_the_kernels(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")  # the switch's explicit choice wins over the environment
    with kernels.use_backend("triton"):
        assert dispatch.resolve_backend("auto", cpu) == "triton"
        assert dispatch.resolve_backend("reference", cpu) == "reference"
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            dispatch.resolve_backend("auto", cpu)
    assert dispatch.resolve_backend("auto", cpu) == "reference"
    with pytest.raises(ValueError, match="backend='cuda'"):
        kernels.use_backend("cuda")


def test_explicit_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.class_softmax_kl(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), backend="triton")
    with pytest.raises(ValueError, match="backend='cuda'"):
        kernels.class_softmax_kl(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), backend="cuda")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: kernels.spatial_softmax_kl(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4)),
            "same 4-D shape",
        ),
        (lambda: kernels.spatial_softmax_kl(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)), "same 4-D shape"),
        (lambda: kernels.class_softmax_kl(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), tau=0), "tau=0"),
        (
            lambda: kernels.spatial_softmax_kl(
                torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), weight=torch.ones(2)
            ),
            r"weight has shape \(2,\), expected \(N, C\) = \(1, 2\)",
        ),
        (
            lambda: kernels.class_softmax_kl(
                torch.zeros(1, 2, 3, 3, dtype=torch.long), torch.zeros(1, 2, 3, 3)
            ),
            "dtype",
        ),
        (
            lambda: kernels.patch_contrast(torch.zeros(1, 32, 6, 8), torch.zeros(1, 32, 6, 8)),
            "6x8.*4x4 patches",
        ),
        (
            lambda: kernels.patch_contrast(torch.zeros(1, 24, 4, 4), torch.zeros(1, 24, 4, 4)),
            "24 channels.*groups=16",
        ),
        (lambda: kernels.pairwise_affinity_mse(torch.zeros(2, 3, 5), torch.zeros(2, 3, 6)), r"\(B, C_s, N\)"),
        (lambda: kernels.cross_image_affinity_kl(torch.zeros(2, 3, 5), torch.zeros(1, 3, 5)), "same B and N"),
    ],
)
def test_bad_arguments_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_trainer_config_switch_accepts_auto_and_reference_only():
    from segdistill.config import load_config
    from segdistill.errors import ConfigError

    assert load_config(None).train.kernels == "auto"
    assert load_config(None, ["train.kernels=reference"]).train.kernels == "reference"
    with pytest.raises(ConfigError, match="train.kernels"):
        load_config(None, ["train.kernels=fast"])
