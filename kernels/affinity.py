"""Affinity distillation on node features already L2-normalised over channels, memory-lean.

* ``pairwise_affinity_mse`` (SKD pair-wise, docs/loss_math.md §7.2): sum_b sum_{i,j} (x_i.x_j - y_i.y_j)^2.
* ``cross_image_affinity_kl`` (CIRKD mini-batch pixel-to-pixel, §10): for every ordered pair (i, j) of
  images and every row p of A_ij = S_i^T S_j, KL(softmax(A^t_ij[p] / tau) || softmax(A^s_ij[p] / tau)).

Both return SUMS (the losses divide). The references compute the N x N affinities a block of rows at
a time, each block's gradient right after its loss (``blockwise_sum``), so memory grows with N, not
N^2 (the published codes hold
B x N x N, or B^2 x N x N, matrices). Gradients flow to the student only.
"""

from __future__ import annotations

import torch

from segdistill.kernels.blocks import block_rows, blockwise_sum
from segdistill.kernels.dispatch import Backend, device_of, resolve_backend
from segdistill.kernels.precision import at_least_float32
from segdistill.kernels.validation import check_nodes, check_tau

# Buffers of the matrices' size live at the peak (segdistill.kernels.blocks), measured at the benchmark
# shapes: SKD's published form holds 4 of B x N x N (both affinities, their difference, its square), CIRKD's
# 2.75 of B^2 x N x N; a block of the references 5.5 of its own size (CIRKD; 6 with a margin), 4.2 with
# SKD's closed-form gradient (4.5).
SKD_MATERIALISING_BUFFERS, CIRKD_MATERIALISING_BUFFERS = 4.0, 2.75
SKD_BLOCK_BUFFERS, CIRKD_BLOCK_BUFFERS = 4.5, 6.0


def _pairwise_diff(x: torch.Tensor, y: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of every image's affinity difference, (B, C, N) features: (B, rows, N)."""
    return x[:, :, start:stop].transpose(1, 2) @ x - y[:, :, start:stop].transpose(1, 2) @ y


def _cross_image_rows(
    x_all: torch.Tensor, y_all: torch.Tensor, start: int, stop: int, images: int, tau: float
) -> torch.Tensor:
    """Rows [start, stop) of the side-by-side nodes (C, B*N) of all images (one image's rows) against
    every image: the KL summed over these rows and the B pairs they belong to."""
    rows = stop - start
    # Dividing the small row block by tau, not the (rows, B*N) product, saves a full pass.
    log_p_s = torch.log_softmax(((x_all[:, start:stop].T / tau) @ x_all).view(rows, images, -1), dim=-1)
    log_p_t = torch.log_softmax(((y_all[:, start:stop].T / tau) @ y_all).view(rows, images, -1), dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum()


def pairwise_affinity_mse_reference(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    x, y = at_least_float32(student), at_least_float32(teacher.detach())
    b, _, n = x.shape
    # Blocks of rows of all images at once (batched products: fewer, larger operator calls).
    rows = block_rows(n, b * n, b * n * n, SKD_MATERIALISING_BUFFERS, SKD_BLOCK_BUFFERS)

    def block_loss(x: torch.Tensor, start: int) -> torch.Tensor:
        return _pairwise_diff(x, y, start, min(start + rows, n)).square().sum()

    def add_gradient(x: torch.Tensor, grad: torch.Tensor, start: int) -> torch.Tensor:
        # Both affinities are symmetric: d/dX sum D^2 = 4 X D = 4 sum over row blocks of X[:, rows] D[rows, :]
        # (one product a block, where autograd takes two).
        stop = min(start + rows, n)
        diff = _pairwise_diff(x, y, start, stop)
        grad.baddbmm_(x[:, :, start:stop], diff, alpha=4.0)
        return diff.square().sum()

    return blockwise_sum(block_loss, x, [(start,) for start in range(0, n, rows)], add_gradient)


def cross_image_affinity_kl_reference(
    student: torch.Tensor, teacher: torch.Tensor, tau: float
) -> torch.Tensor:
    x, y = at_least_float32(student), at_least_float32(teacher.detach())
    b, _, n = x.shape
    # (C, B*N): every image's nodes side by side, so one product gives a row block against all images.
    x_all = x.transpose(0, 1).reshape(x.shape[1], b * n)
    y_all = y.transpose(0, 1).reshape(y.shape[1], b * n)
    rows = block_rows(n, b * n, b * b * n * n, CIRKD_MATERIALISING_BUFFERS, CIRKD_BLOCK_BUFFERS)

    def block_loss(x_all: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return _cross_image_rows(x_all, y_all, start, stop, b, tau)

    blocks = [
        (start, min(start + rows, (image + 1) * n)) for image in range(b) for start in range(image * n, (image + 1) * n, rows)
    ]
    return blockwise_sum(block_loss, x_all, blocks)


def pairwise_affinity_mse(
    student: torch.Tensor, teacher: torch.Tensor, *, backend: Backend = "auto"
) -> torch.Tensor:
    """SKD pair-wise term on L2-normalised node features (B, C_s, N), (B, C_t, N):
    sum_b sum_{i,j} (x_i.x_j - y_i.y_j)^2 as a scalar (float32; float64 for float64 inputs) (the caller divides by N^2 and B)."""
    check_nodes("pairwise_affinity_mse", student, teacher)
    if resolve_backend(backend, student, teacher) == "triton":
        from segdistill.kernels.affinity_triton import pairwise_affinity_mse_triton

        with device_of(student):
            return pairwise_affinity_mse_triton(student, teacher)
    return pairwise_affinity_mse_reference(student, teacher)


def cross_image_affinity_kl(
    student: torch.Tensor, teacher: torch.Tensor, tau: float = 0.1, *, backend: Backend = "auto"
) -> torch.Tensor:
    """CIRKD pixel-to-pixel term on L2-normalised features (B, C_s, N), (B, C_t, N): the sum over ordered
    image pairs (i, j), i == j included, and rows p of KL(softmax_row(A^t_ij[p] / tau) ||
    softmax_row(A^s_ij[p] / tau)) as a scalar (float32; float64 for float64 inputs) (the loss takes batchmean over rows, mean over B^2)."""
    check_nodes("cross_image_affinity_kl", student, teacher)
    check_tau("cross_image_affinity_kl", tau)
    if resolve_backend(backend, student, teacher) == "triton":
        from segdistill.kernels.affinity_triton import cross_image_affinity_kl_triton

        with device_of(student):
            return cross_image_affinity_kl_triton(student, teacher, tau)
    return cross_image_affinity_kl_reference(student, teacher, tau)
