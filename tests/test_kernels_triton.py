"""Each Triton kernel against its reference: forward values and gradients.

On a machine without CUDA the kernels run on CPU tensors under the Triton interpreter
(TRITON_INTERPRET=1, set by conftest.py before anything imports triton); with CUDA they run on the GPU. Shapes are
small (the interpreter is slow) but chosen so every masked tail is hit: lengths that are not powers of
two, tiles smaller than the data (several blocks, a ragged last one), rows split into segments.

Tolerances (kernel vs reference, both accumulating in float32 from the same input values):
* float32 inputs: values rtol 1e-5; gradients atol 1e-5 x the largest gradient (summation order only).
  On a GPU the affinity kernels multiply float32 as 3xTF32 (a path the interpreter, computing in IEEE
  float32, never runs): each product errs by about 2^-21 relative (the dropped lo x lo term and the
  rounding of the two TF32 halves) instead of float32's 2^-24, i.e. at most ~1e-6 of the sum of |terms|
  over the <= 40 channels here, inside the same tolerances.
* float16 / bfloat16 inputs: values rtol 1e-5 (the affinity kernels multiply them natively on tensor
  cores: exact products, float32 accumulation, like the reference's float32 products of the same
  values); the gradients are rounded to the input dtype, and in the affinity kernels the logit gradient
  is rounded to it before its product, so rtol 1e-2 and atol 1e-2 x the largest gradient (a few
  rounding steps: float16's unit roundoff is 4.9e-4, bfloat16's 3.9e-3).
* Against float64 (test_affinity_half_inputs_against_float64): values rtol 1e-6, gradients
  2 unit roundoffs of the input dtype x the largest gradient (output rounding + the logit gradient's).
  The interpreter's tl.dot has no bfloat16 (numpy has none), so on CPU bfloat16 is upcast and only
  float16 takes the native path; a GPU runs both.
"""

from __future__ import annotations

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytest.importorskip("triton")

import torch.nn.functional as F  # noqa: E402

from segdistill import kernels  # noqa: E402
from segdistill.kernels.affinity import cross_image_affinity_kl_reference, pairwise_affinity_mse_reference  # noqa: E402
from segdistill.kernels.affinity_triton import cross_image_affinity_kl_triton, pairwise_affinity_mse_triton  # noqa: E402
from segdistill.kernels.contrast import patch_contrast_reference  # noqa: E402
from segdistill.kernels.contrast_triton import patch_contrast_triton  # noqa: E402
from segdistill.kernels.softmax_kl import softmax_kl_rows_reference  # noqa: E402
from segdistill.kernels.softmax_kl_triton import softmax_kl_rows_triton  # noqa: E402

HALF_DTYPES = [torch.float16, torch.bfloat16]


def compare(kernel_fn, reference_fn, student, teacher, upstream=None):
    """Forward values and input gradients of two implementations, with an upstream gradient."""
    results = []
    for fn in (kernel_fn, reference_fn):
        x = student.detach().clone().requires_grad_()
        out = fn(x, teacher)
        weight = upstream if upstream is not None else torch.tensor(1.7, device=out.device)
        (grad,) = torch.autograd.grad((out * weight).sum(), x)
        results.append((out.detach(), grad))
    (out_k, grad_k), (out_r, grad_r) = results
    assert grad_k.dtype == student.dtype and grad_k.shape == student.shape
    torch.testing.assert_close(out_k.float(), out_r.float(), rtol=1e-5, atol=1e-6)
    scale = grad_r.abs().max().item()
    if student.dtype == torch.float32:
        torch.testing.assert_close(grad_k, grad_r, rtol=1e-4, atol=1e-5 * scale)
    else:
        torch.testing.assert_close(grad_k.float(), grad_r.float(), rtol=1e-2, atol=1e-2 * scale)


def randn(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape) * scale).to(device=DEVICE, dtype=dtype)


def unit_nodes(*shape, dtype=torch.float32):
    return F.normalize(torch.randn(*shape), dim=1).to(device=DEVICE, dtype=dtype)


# ---------------------------------------------------------------------------------- softmax-KL


@pytest.mark.parametrize(
    ("shape", "dim", "tiles"),
    [
        ((2, 3, 35), 2, {}),  # CWD rows (N, C, H*W) of a 5x7 map, one tile per row
        ((2, 3, 35), 2, {"block_r": 8, "splits": 3}),  # rows split in 3 segments + combine, ragged tiles
        ((1, 19, 117), 1, {}),  # pixel KD: 19 classes (padded to 32) over a 9x13 map
        ((1, 19, 117), 1, {"block_r": 8, "block_i": 16}),  # online LSE over 3 class blocks, 8 pixel blocks
        ((2, 150, 6), 2, {"block_r": 32, "block_i": 4, "splits": 2}),  # 150 positions, ragged channel tile
    ],
)
def test_softmax_kl_rows_kernel_matches_reference(shape, dim, tiles):
    torch.manual_seed(0)
    s, t = randn(*shape, scale=3), randn(*shape, scale=3)
    upstream = randn(shape[0], shape[3 - dim])  # per-row weights, as HWD gives
    compare(
        lambda x, y: softmax_kl_rows_triton(x, y, 2.5, dim, **tiles),
        lambda x, y: softmax_kl_rows_reference(x, y, 2.5, dim),
        s,
        t,
        upstream,
    )


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_softmax_kl_half_inputs(dtype):
    torch.manual_seed(1)
    s, t = randn(2, 19, 5, 7, dtype=dtype, scale=4), randn(2, 19, 5, 7, dtype=dtype, scale=4)
    weight = torch.rand(2, 19, device=DEVICE)
    compare(
        lambda x, y: kernels.spatial_softmax_kl(x, y, 4.0, weight, backend="triton"),
        lambda x, y: kernels.spatial_softmax_kl(x, y, 4.0, weight, backend="reference"),
        s,
        t,
    )
    compare(
        lambda x, y: kernels.class_softmax_kl(x, y, 1.0, backend="triton"),
        lambda x, y: kernels.class_softmax_kl(x, y, 1.0, backend="reference"),
        s,
        t,
    )


def test_softmax_kl_public_functions_on_strided_inputs():
    # channels_last student and a transposed-then-copied teacher: the kernel reads any strides.
    torch.manual_seed(2)
    s = randn(2, 5, 6, 7).to(memory_format=torch.channels_last)
    t = randn(2, 5, 7, 6).transpose(2, 3)
    for fn in (kernels.spatial_softmax_kl, kernels.class_softmax_kl):
        compare(lambda x, y, fn=fn: fn(x, y, 2.0, backend="triton"), lambda x, y, fn=fn: fn(x, y, 2.0), s, t)


# -------------------------------------------------------------------------------- patch contrast


@pytest.mark.parametrize(
    ("shape", "patch", "groups", "tiles"),
    [
        ((2, 8, 4, 4), 2, 4, {}),  # T = 16 tokens of D = 2 channels, 8 patches
        ((1, 15, 4, 6), 2, 3, {"block_k": 8, "block_l": 4}),  # T = 12, D = 5: ragged anchor and channel tiles
        ((1, 12, 3, 3), 3, 4, {"block_k": 16, "block_l": 8}),  # T = 36: 3 anchor blocks, 5 teacher blocks
    ],
)
def test_patch_contrast_kernel_matches_reference(shape, patch, groups, tiles):
    torch.manual_seed(3)
    g, t = randn(*shape), randn(*shape)
    compare(
        lambda x, y: patch_contrast_triton(x, y, patch, groups, 0.5, **tiles),
        lambda x, y: patch_contrast_reference(x, y, patch, groups, 0.5),
        g,
        t,
    )


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_patch_contrast_half_inputs_through_the_public_function(dtype):
    torch.manual_seed(4)
    g, t = randn(1, 32, 4, 4, dtype=dtype), randn(1, 32, 4, 4, dtype=dtype)
    compare(
        lambda x, y: kernels.patch_contrast(x, y, patch=2, groups=16, tau=0.07, backend="triton"),
        lambda x, y: kernels.patch_contrast(x, y, patch=2, groups=16, tau=0.07, backend="reference"),
        g,
        t,
    )


# ------------------------------------------------------------------------------------- affinities

SMALL_TILES = (16, 16, 16, 16)  # rows, columns, reduced channels, gradient channels


@pytest.mark.parametrize(
    ("b", "cs", "ct", "n", "tiles", "splits"),
    [
        (2, 5, 7, 11, SMALL_TILES, 1),  # everything in one ragged tile
        (2, 20, 36, 37, SMALL_TILES, 1),  # 3 node blocks, 2 and 3 channel blocks, 2 gradient channel blocks
        (1, 8, 16, 40, (16, 32, 16, 16), 1),  # rows and columns tiled differently
        (2, 20, 12, 70, SMALL_TILES, 3),  # columns in 3 segments of 32 (the last ragged), gradients summed
    ],
)
def test_pairwise_affinity_kernel_matches_reference(b, cs, ct, n, tiles, splits):
    torch.manual_seed(5)
    x, y = unit_nodes(b, cs, n), unit_nodes(b, ct, n)
    compare(
        lambda u, v: pairwise_affinity_mse_triton(u, v, tiles, splits), pairwise_affinity_mse_reference, x, y
    )


@pytest.mark.parametrize(
    ("b", "cs", "ct", "n", "tiles"),
    [
        (2, 5, 7, 11, SMALL_TILES),
        (2, 20, 12, 37, (32, 16, 16, 16)),  # ragged node tiles of two sizes, 2 gradient channel blocks
        (3, 8, 16, 17, (16, 32, 16, 16)),  # 3 images: 9 ordered pairs
    ],
)
def test_cross_image_kernel_matches_reference(b, cs, ct, n, tiles):
    torch.manual_seed(6)
    x, y = unit_nodes(b, cs, n), unit_nodes(b, ct, n)
    compare(
        lambda u, v: cross_image_affinity_kl_triton(u, v, 0.1, tiles),
        lambda u, v: cross_image_affinity_kl_reference(u, v, 0.1),
        x,
        y,
    )


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_affinity_half_inputs_through_the_public_functions(dtype):
    torch.manual_seed(7)
    x, y = unit_nodes(2, 16, 20, dtype=dtype), unit_nodes(2, 16, 20, dtype=dtype)
    for fn, kwargs in ((kernels.pairwise_affinity_mse, {}), (kernels.cross_image_affinity_kl, {"tau": 0.1})):
        compare(
            lambda u, v, fn=fn, kwargs=kwargs: fn(u, v, **kwargs, backend="triton"),
            lambda u, v, fn=fn, kwargs=kwargs: fn(u, v, **kwargs, backend="reference"),
            x,
            y,
        )


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_affinity_half_inputs_against_float64(dtype):
    """The native half-precision path against the float64 reference on the same (rounded) inputs."""
    torch.manual_seed(8)
    x, y = unit_nodes(2, 24, 50, dtype=dtype), unit_nodes(2, 40, 50, dtype=dtype)
    unit_roundoff = torch.finfo(dtype).eps / 2
    for fn, kwargs in ((kernels.pairwise_affinity_mse, {}), (kernels.cross_image_affinity_kl, {"tau": 0.1})):
        results = []
        for inputs, backend in (((x, y), "triton"), ((x.double(), y.double()), "reference")):
            student = inputs[0].detach().clone().requires_grad_()
            out = fn(student, inputs[1], **kwargs, backend=backend)
            (grad,) = torch.autograd.grad(out, student)
            results.append((out.double(), grad.double()))
        (out_k, grad_k), (out_64, grad_64) = results
        torch.testing.assert_close(out_k, out_64, rtol=1e-6, atol=0)
        scale = grad_64.abs().max().item()
        torch.testing.assert_close(grad_k, grad_64, rtol=0, atol=2 * unit_roundoff * scale)
