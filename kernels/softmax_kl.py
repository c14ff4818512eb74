"""Softmax-KL family on (N, C, H, W) pairs: CWD / HWD (softmax over space) and pixel KD (over classes).

Both reduce to rows: KL(softmax(t_row / tau) || softmax(s_row / tau)) for every row of a 3-D view
(outer, reduced, inner) of the inputs. The functions return SUMS (no tau^2, no mean); the losses
normalise as docs/loss_math.md says. Gradients flow to the student only.
"""

from __future__ import annotations

import torch

from segdistill.kernels.dispatch import Backend, device_of, resolve_backend
from segdistill.kernels.precision import at_least_float32
from segdistill.kernels.validation import check_same_shape, check_tau


def softmax_kl_rows_reference(
    student: torch.Tensor, teacher: torch.Tensor, tau: float, dim: int
) -> torch.Tensor:
    """KL(softmax(t / tau) || softmax(s / tau)) along ``dim`` in float32; the KL of every row, ``dim`` removed."""
    log_p_s = torch.log_softmax(at_least_float32(student) / tau, dim=dim)
    log_p_t = torch.log_softmax(at_least_float32(teacher.detach()) / tau, dim=dim)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim)


def _softmax_kl_rows(
    student: torch.Tensor, teacher: torch.Tensor, tau: float, dim: int, backend: Backend
) -> torch.Tensor:
    if resolve_backend(backend, student, teacher) == "triton":
        from segdistill.kernels.softmax_kl_triton import softmax_kl_rows_triton

        with device_of(student):
            return softmax_kl_rows_triton(student, teacher, tau, dim)
    return softmax_kl_rows_reference(student, teacher, tau, dim)


def spatial_softmax_kl(
    student: torch.Tensor,
    teacher: torch.Tensor,
    tau: float = 1.0,
    weight: torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """CWD (docs/loss_math.md §2) / HWD (§3) core on (N, C, H, W): per row (n, c) a softmax over the H*W positions
    of x / tau; returns sum_{n,c} weight[n, c] * KL(p_t || p_s) as a scalar (float32; float64 for float64 inputs) (weight (N, C) or None
    for ones; no tau^2)."""
    check_same_shape("spatial_softmax_kl", student, teacher, ndim=4)
    check_tau("spatial_softmax_kl", tau)
    n, c = student.shape[:2]
    rows = _softmax_kl_rows(student.flatten(2), teacher.flatten(2), tau, 2, backend)
    if weight is None:
        return rows.sum()
    if weight.shape != (n, c):
        raise ValueError(
            f"spatial_softmax_kl: weight has shape {tuple(weight.shape)}, expected (N, C) = {(n, c)}"
        )
    return (rows * weight.to(rows.dtype)).sum()


def class_softmax_kl(
    student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0, *, backend: Backend = "auto"
) -> torch.Tensor:
    """Pixel KD (docs/loss_math.md §1) on (N, K, H, W): per pixel a softmax over the K classes of x / tau; returns
    the sum over the N*H*W pixels of KL(q_t || q_s) as a scalar (float32; float64 for float64 inputs) (no tau^2)."""
    check_same_shape("class_softmax_kl", student, teacher, ndim=4)
    check_tau("class_softmax_kl", tau)
    return _softmax_kl_rows(student.flatten(2), teacher.flatten(2), tau, 1, backend).sum()
