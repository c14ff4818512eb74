"""Triton kernels for the softmax-KL family (``segdistill.kernels.softmax_kl``): forward, backward, autograd.

The inputs are read as a strided 3-D view (outer O, reduced R, inner I); each (o, i) is one row of
length R. CWD / HWD rows are (n, c) over H*W (R contiguous); pixel-KD rows are pixels over K classes
(I contiguous). Forward: every program runs an online (max-subtracted) log-sum-exp of s/tau and t/tau
and the running sum_r e^(t_r - m_t) (t_r - s_r) over one segment of R for a block of rows; a small
combine kernel merges the segments (split rows keep a GPU busy when O*I is small, e.g. 38 CWD rows)
into KL = W/Z_t - lse_t + lse_s and saves lse_s, lse_t per row. Backward is elementwise from those two
statistics: ds = g / tau * (softmax(s/tau) - softmax(t/tau)); nothing of the inputs' size is saved.
All arithmetic is float32 whatever the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Finite start for running maxima: masked entries are zeroed explicitly, so no inf - inf ever occurs.
NEG = tl.constexpr(-1.0e30)
STATS = 5  # m_s, z_s, m_t, z_t, w
NUM_WARPS = 8  # for the ~4k-element tiles: about 100 registers a thread on sm_90 (segdistill.kernels.compile_check)


@triton.jit
def _softmax_kl_partial_kernel(
    s_ptr, t_ptr, part_ptr, n_outer, n_reduced, n_inner, splits, segment, inv_tau,
    s_so, s_sr, s_si, t_so, t_sr, t_si,
    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr,
):  # fmt: skip
    o = tl.program_id(0)
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    split = tl.program_id(2)
    in_i = offs_i < n_inner
    m_s = tl.full([BLOCK_I], NEG, tl.float32)
    m_t = tl.full([BLOCK_I], NEG, tl.float32)
    z_s = tl.zeros([BLOCK_I], tl.float32)
    z_t = tl.zeros([BLOCK_I], tl.float32)
    w = tl.zeros([BLOCK_I], tl.float32)
    for r0 in range(0, segment, BLOCK_R):
        r = split * segment + r0 + tl.arange(0, BLOCK_R)
        mask = (r < n_reduced)[:, None] & in_i[None, :]
        s = tl.load(s_ptr + o * s_so + r[:, None] * s_sr + offs_i[None, :] * s_si, mask=mask, other=0.0)
        t = tl.load(t_ptr + o * t_so + r[:, None] * t_sr + offs_i[None, :] * t_si, mask=mask, other=0.0)
        s = s.to(tl.float32) * inv_tau
        t = t.to(tl.float32) * inv_tau
        m_s_new = tl.maximum(m_s, tl.max(tl.where(mask, s, NEG), axis=0))
        e_s = tl.exp(tl.where(mask, s - m_s_new[None, :], NEG))
        z_s = z_s * tl.exp(m_s - m_s_new) + tl.sum(e_s, axis=0)
        m_s = m_s_new
        m_t_new = tl.maximum(m_t, tl.max(tl.where(mask, t, NEG), axis=0))
        rescale_t = tl.exp(m_t - m_t_new)
        e_t = tl.exp(tl.where(mask, t - m_t_new[None, :], NEG))
        z_t = z_t * rescale_t + tl.sum(e_t, axis=0)
        w = w * rescale_t + tl.sum(e_t * (t - s), axis=0)
        m_t = m_t_new
    # Layout (stat, o, split, i).
    base = part_ptr + (o * splits + split) * n_inner + offs_i
    stride = n_outer * splits * n_inner
    tl.store(base, m_s, mask=in_i)
    tl.store(base + stride, z_s, mask=in_i)
    tl.store(base + 2 * stride, m_t, mask=in_i)
    tl.store(base + 3 * stride, z_t, mask=in_i)
    tl.store(base + 4 * stride, w, mask=in_i)


@triton.jit
def _softmax_kl_combine_kernel(
    part_ptr, kl_ptr, lse_s_ptr, lse_t_ptr, n_outer, n_inner, splits, BLOCK_I: tl.constexpr
):
    o = tl.program_id(0)
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    in_i = offs_i < n_inner
    stride = n_outer * splits * n_inner
    m_s = tl.full([BLOCK_I], NEG, tl.float32)
    m_t = tl.full([BLOCK_I], NEG, tl.float32)
    z_s = tl.zeros([BLOCK_I], tl.float32)
    z_t = tl.zeros([BLOCK_I], tl.float32)
    w = tl.zeros([BLOCK_I], tl.float32)
    for split in range(0, splits):
        base = part_ptr + (o * splits + split) * n_inner + offs_i
        pm_s = tl.load(base, mask=in_i, other=NEG)
        pz_s = tl.load(base + stride, mask=in_i, other=0.0)
        pm_t = tl.load(base + 2 * stride, mask=in_i, other=NEG)
        pz_t = tl.load(base + 3 * stride, mask=in_i, other=0.0)
        pw = tl.load(base + 4 * stride, mask=in_i, other=0.0)
        new_m_s = tl.maximum(m_s, pm_s)
        z_s = z_s * tl.exp(m_s - new_m_s) + pz_s * tl.exp(pm_s - new_m_s)
        m_s = new_m_s
        new_m_t = tl.maximum(m_t, pm_t)
        old_scale = tl.exp(m_t - new_m_t)
        part_scale = tl.exp(pm_t - new_m_t)
        z_t = z_t * old_scale + pz_t * part_scale
        w = w * old_scale + pw * part_scale
        m_t = new_m_t
    # Rows past n_inner have z = 0 and are not stored; 1 keeps their log finite.
    z_s = tl.where(in_i, z_s, 1.0)
    z_t = tl.where(in_i, z_t, 1.0)
    lse_s = m_s + tl.log(z_s)
    lse_t = m_t + tl.log(z_t)
    out = o * n_inner + offs_i
    tl.store(kl_ptr + out, w / z_t - lse_t + lse_s, mask=in_i)
    tl.store(lse_s_ptr + out, lse_s, mask=in_i)
    tl.store(lse_t_ptr + out, lse_t, mask=in_i)


@triton.jit
def _softmax_kl_backward_kernel(
    s_ptr, t_ptr, grad_ptr, grad_kl_ptr, lse_s_ptr, lse_t_ptr, n_reduced, n_inner, inv_tau,
    s_so, s_sr, s_si, t_so, t_sr, t_si, g_so, g_sr, g_si,
    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr,
):  # fmt: skip
    o = tl.program_id(0)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_i = tl.program_id(2) * BLOCK_I + tl.arange(0, BLOCK_I)
    in_i = offs_i < n_inner
    mask = (r < n_reduced)[:, None] & in_i[None, :]
    row = o * n_inner + offs_i
    scale = tl.load(grad_kl_ptr + row, mask=in_i, other=0.0) * inv_tau
    lse_s = tl.load(lse_s_ptr + row, mask=in_i, other=0.0)
    lse_t = tl.load(lse_t_ptr + row, mask=in_i, other=0.0)
    s = tl.load(s_ptr + o * s_so + r[:, None] * s_sr + offs_i[None, :] * s_si, mask=mask, other=0.0)
    t = tl.load(t_ptr + o * t_so + r[:, None] * t_sr + offs_i[None, :] * t_si, mask=mask, other=0.0)
    p_s = tl.exp(s.to(tl.float32) * inv_tau - lse_s[None, :])
    p_t = tl.exp(t.to(tl.float32) * inv_tau - lse_t[None, :])
    grad = scale[None, :] * (p_s - p_t)
    tl.store(
        grad_ptr + o * g_so + r[:, None] * g_sr + offs_i[None, :] * g_si,
        grad.to(grad_ptr.dtype.element_ty),
        mask=mask,
    )


def _strides(x: torch.Tensor, dim: int) -> tuple[int, int, int]:
    """(outer, reduced, inner) strides of a 3-D tensor reduced along ``dim`` (1 or 2)."""
    inner = 3 - dim
    return x.stride(0), x.stride(dim), x.stride(inner)


def _blocks(reduced: int, inner: int, reduced_contiguous: bool) -> tuple[int, int]:
    """Tiles of about 4k elements, long along the axis that is contiguous in memory."""
    if reduced_contiguous:
        block_r = min(triton.next_power_of_2(reduced), 1024)
        return block_r, min(triton.next_power_of_2(inner), max(1, 4096 // block_r))
    block_i = min(triton.next_power_of_2(inner), 256)
    return min(triton.next_power_of_2(reduced), max(1, 4096 // block_i), 64), block_i


def _auto_splits(rows_programs: int, reduced: int, block_r: int, device: torch.device) -> int:
    """Segments per row so that a GPU gets about four programs per multiprocessor."""
    if device.type != "cuda":
        return 1
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(target, rows_programs), triton.cdiv(reduced, block_r)))


class _SoftmaxKLRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, tau, dim, block_r, block_i, splits):
        o, r, i = student.shape[0], student.shape[dim], student.shape[3 - dim]
        segment = triton.cdiv(triton.cdiv(r, splits), block_r) * block_r
        splits = triton.cdiv(r, segment)
        part = torch.empty((STATS, o, splits, i), device=student.device, dtype=torch.float32)
        kl, lse_s, lse_t = (torch.empty((o, i), device=student.device, dtype=torch.float32) for _ in range(3))
        inner_blocks = triton.cdiv(i, block_i)
        _softmax_kl_partial_kernel[(o, inner_blocks, splits)](
            student, teacher, part, o, r, i, splits, segment, 1.0 / tau,
            *_strides(student, dim), *_strides(teacher, dim),
            BLOCK_R=block_r, BLOCK_I=block_i, num_warps=NUM_WARPS,
        )  # fmt: skip
        _softmax_kl_combine_kernel[(o, inner_blocks)](part, kl, lse_s, lse_t, o, i, splits, BLOCK_I=block_i)
        ctx.save_for_backward(student, teacher, lse_s, lse_t)
        ctx.config = (tau, dim, block_r, block_i)
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        student, teacher, lse_s, lse_t = ctx.saved_tensors
        tau, dim, block_r, block_i = ctx.config
        o, r, i = student.shape[0], student.shape[dim], student.shape[3 - dim]
        grad = torch.empty_like(student)
        grid = (o, triton.cdiv(r, block_r), triton.cdiv(i, block_i))
        _softmax_kl_backward_kernel[grid](
            student, teacher, grad, grad_kl.float().contiguous(), lse_s, lse_t, r, i, 1.0 / tau,
            *_strides(student, dim), *_strides(teacher, dim), *_strides(grad, dim),
            BLOCK_R=block_r, BLOCK_I=block_i, num_warps=NUM_WARPS,
        )  # fmt: skip
        return grad, None, None, None, None, None, None


def softmax_kl_rows_triton(
    student: torch.Tensor,
    teacher: torch.Tensor,
    tau: float,
    dim: int,
    block_r: int | None = None,
    block_i: int | None = None,
    splits: int | None = None,
) -> torch.Tensor:
    """Triton twin of ``softmax_kl_rows_reference`` for 3-D inputs reduced along ``dim`` (1 or 2).

    ``block_r``, ``block_i`` and ``splits`` (segments per row) are chosen from the shape when None; the
    tests set them to exercise masked tails and the combine step on small inputs.
    """
    if dim not in (1, 2) or student.dim() != 3:
        raise ValueError(
            f"softmax_kl_rows_triton: expected a 3-D input reduced along dim 1 or 2, got dim={dim}"
        )
    r, i = student.shape[dim], student.shape[3 - dim]
    auto_r, auto_i = _blocks(r, i, reduced_contiguous=student.stride(dim) == 1)
    block_r, block_i = block_r or auto_r, block_i or auto_i
    if splits is None:
        splits = _auto_splits(student.shape[0] * triton.cdiv(i, block_i), r, block_r, student.device)
    return _SoftmaxKLRows.apply(student, teacher.detach(), float(tau), dim, block_r, block_i, splits)
