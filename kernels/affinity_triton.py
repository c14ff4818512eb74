"""Tiled (flash-attention style) Triton kernels for ``segdistill.kernels.affinity``: forward, backward, autograd.

Affinity tiles a[p, q] = sum_c x[c, p] x'[c, q] of both networks are built in registers from blocks of
rows p and columns q (tl.dot, float32 accumulation, 3xTF32 on tensor cores for float32 inputs) and
never written to memory, so memory grows with N, not N^2.

* SKD pair-wise (MSE): forward sums (a_s - a_t)^2 over q for every row; backward, by symmetry of both
  affinities, d/dx_p = 4 sum_q (a_s - a_t)_pq x_q: one pass over rows.
* CIRKD cross-image KL: forward runs an online log-sum-exp of both rows over q (as in the softmax-KL
  kernel) for every pair (i, j) and keeps lse_s, lse_t per row (B x B x N floats). With
  g_pq = (softmax_q(a_s/tau) - softmax_q(a_t/tau)) / tau, the gradient of image i gets
  sum_q g_pq x_j[:, q] from its rows (pair (i, j)) and sum_p g_pq x_i[:, p] from its columns (pair
  (j, i)): a row pass and a column pass, each recomputing the tiles (as flash-attention's dQ and dK).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NEG = tl.constexpr(-1.0e30)  # finite "minus infinity": masked logits are replaced before exp, so no inf - inf
# Left free, ptxas gives these kernels 255 registers a thread at any tile or warp count (2 blocks of 4
# warps per SM: 12.5 % occupancy on sm_90). Capped at 128 with 8 warps they do not spill, and two blocks
# (16 warps: 25 % on sm_90, 33 % on sm_87) fit on an SM (segdistill.kernels.compile_check).
NUM_WARPS = 8
MAX_REGISTERS = 128


@triton.jit
def _dot_operand(x, NATIVE_HALF: tl.constexpr):
    """fp16 / bf16 inputs stay native with NATIVE_HALF: tensor cores multiply them exactly (accumulating
    in float32) at twice the TF32 rate, where an upcast would run 3xTF32 on values whose low TF32 halves
    are zero. Otherwise (float32; float64, which the kernels compute in float32) float32."""
    if not NATIVE_HALF:
        x = x.to(tl.float32)
    return x


@triton.jit
def _affinity_tile(a_ptr, b_ptr, p, q, N, C, s_c, s_n,
                   BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
                   PRECISION: tl.constexpr, NATIVE_HALF: tl.constexpr):  # fmt: skip
    """sum_c a[c, p] * b[c, q] for a block of rows p and columns q (both (C, N) with strides s_c, s_n)."""
    acc = tl.zeros([BLOCK_P, BLOCK_Q], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        a = tl.load(
            a_ptr + c[None, :] * s_c + p[:, None] * s_n, mask=(p < N)[:, None] & (c < C)[None, :], other=0.0
        )
        b = tl.load(
            b_ptr + c[:, None] * s_c + q[None, :] * s_n, mask=(c < C)[:, None] & (q < N)[None, :], other=0.0
        )
        acc = tl.dot(_dot_operand(a, NATIVE_HALF), _dot_operand(b, NATIVE_HALF), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _affinity_forward_kernel(
    x_ptr, y_ptr, row_loss_ptr, lse_s_ptr, lse_t_ptr, B, N, Cs, Ct, inv_tau, segment,
    sx_b, sx_c, sx_n, sy_b, sy_c, sy_n,
    KL: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr, NATIVE_HALF: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)
    # KL: axis 1 is the partner image j (all columns: the log-sum-exp needs the whole row). MSE: the row
    # sum splits freely, so axis 1 is a segment of the columns (more programs for few rows).
    j = tl.program_id(1) if KL else i
    q_start = 0 if KL else tl.program_id(1) * segment
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    in_p = p < N
    max_s = tl.full([BLOCK_P], NEG, tl.float32)
    max_t = tl.full([BLOCK_P], NEG, tl.float32)
    sum_s = tl.zeros([BLOCK_P], tl.float32)
    sum_t = tl.zeros([BLOCK_P], tl.float32)
    acc = tl.zeros([BLOCK_P], tl.float32)  # KL: sum e^(a_t - max_t) (a_t - a_s); MSE: sum (a_s - a_t)^2
    for q0 in range(q_start, q_start + segment, BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)
        valid = in_p[:, None] & (q < N)[None, :]
        a_s = _affinity_tile(x_ptr + i * sx_b, x_ptr + j * sx_b, p, q, N, Cs, sx_c, sx_n,
                             BLOCK_P, BLOCK_Q, BLOCK_C, PRECISION, NATIVE_HALF)  # fmt: skip
        a_t = _affinity_tile(y_ptr + i * sy_b, y_ptr + j * sy_b, p, q, N, Ct, sy_c, sy_n,
                             BLOCK_P, BLOCK_Q, BLOCK_C, PRECISION, NATIVE_HALF)  # fmt: skip
        if KL:
            a_s = a_s * inv_tau
            a_t = a_t * inv_tau
            new_max_s = tl.maximum(max_s, tl.max(tl.where(valid, a_s, NEG), axis=1))
            sum_s = sum_s * tl.exp(max_s - new_max_s) + tl.sum(
                tl.exp(tl.where(valid, a_s - new_max_s[:, None], NEG)), axis=1
            )
            max_s = new_max_s
            new_max_t = tl.maximum(max_t, tl.max(tl.where(valid, a_t, NEG), axis=1))
            rescale = tl.exp(max_t - new_max_t)
            e_t = tl.exp(tl.where(valid, a_t - new_max_t[:, None], NEG))
            sum_t = sum_t * rescale + tl.sum(e_t, axis=1)
            acc = acc * rescale + tl.sum(e_t * (a_t - a_s), axis=1)
            max_t = new_max_t
        else:
            acc += tl.sum(tl.where(valid, (a_s - a_t) * (a_s - a_t), 0.0), axis=1)
    rows = (i * tl.num_programs(1) + tl.program_id(1)) * N + p  # KL: (i, j); MSE: (i, segment)
    if KL:
        lse_s = max_s + tl.log(tl.where(in_p, sum_s, 1.0))
        lse_t = max_t + tl.log(tl.where(in_p, sum_t, 1.0))
        tl.store(lse_s_ptr + rows, lse_s, mask=in_p)
        tl.store(lse_t_ptr + rows, lse_t, mask=in_p)
        tl.store(row_loss_ptr + rows, acc / tl.where(in_p, sum_t, 1.0) - lse_t + lse_s, mask=in_p)
    else:
        tl.store(row_loss_ptr + rows, acc, mask=in_p)


@triton.jit
def _logit_gradient(x_ptr, y_ptr, lse_s_ptr, lse_t_ptr, i, j, p, q, B, N, Cs, Ct, inv_tau,
                    sx_b, sx_c, sx_n, sy_b, sy_c, sy_n,
                    KL: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
                    PRECISION: tl.constexpr, NATIVE_HALF: tl.constexpr):  # fmt: skip
    """d loss / d a_s[p, q] of pair (i, j), up to the upstream gradient; zero outside the N x N block."""
    valid = (p < N)[:, None] & (q < N)[None, :]
    a_s = _affinity_tile(x_ptr + i * sx_b, x_ptr + j * sx_b, p, q, N, Cs, sx_c, sx_n,
                         BLOCK_P, BLOCK_Q, BLOCK_C, PRECISION, NATIVE_HALF)  # fmt: skip
    a_t = _affinity_tile(y_ptr + i * sy_b, y_ptr + j * sy_b, p, q, N, Ct, sy_c, sy_n,
                         BLOCK_P, BLOCK_Q, BLOCK_C, PRECISION, NATIVE_HALF)  # fmt: skip
    if KL:
        rows = (i * B + j) * N + p
        lse_s = tl.load(lse_s_ptr + rows, mask=p < N, other=0.0)
        lse_t = tl.load(lse_t_ptr + rows, mask=p < N, other=0.0)
        p_s = tl.exp(tl.where(valid, a_s * inv_tau - lse_s[:, None], NEG))
        p_t = tl.exp(tl.where(valid, a_t * inv_tau - lse_t[:, None], NEG))
        return (p_s - p_t) * inv_tau
    # MSE: 2 (a_s - a_t), doubled again because a_s is symmetric (row and column of x_p).
    return tl.where(valid, 4.0 * (a_s - a_t), 0.0)


@triton.jit
def _affinity_backward_kernel(
    x_ptr, y_ptr, grad_ptr, lse_s_ptr, lse_t_ptr, grad_out_ptr, B, N, Cs, Ct, inv_tau, segment,
    sx_b, sx_c, sx_n, sy_b, sy_c, sy_n,
    KL: tl.constexpr, COLUMNS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_OUT: tl.constexpr, PRECISION: tl.constexpr, NATIVE_HALF: tl.constexpr,
):  # fmt: skip
    """Gradient of image `own` at nodes `mine` (channels `c`): rows pass (own = i, sum over pairs (i, j)
    and columns q) or, with COLUMNS, columns pass (own = j, sum over pairs (i, j) and rows p), added to
    what the rows pass stored. Axis 0 is (segment of the partners' nodes k, own image): MSE splits k
    into segments, KL has one. The gradient buffer is float32 and contiguous (segments * B, Cs, N)."""
    own = tl.program_id(0) % B
    k_start = tl.program_id(0) // B * segment
    mine = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    acc = tl.zeros([BLOCK_P, BLOCK_OUT], tl.float32)
    first = 0 if KL else own
    last = B if KL else own + 1
    for other in range(first, last):
        for k0 in range(k_start, k_start + segment, BLOCK_Q):
            k = k0 + tl.arange(0, BLOCK_Q)
            # Features of the partner nodes k, (BLOCK_Q, BLOCK_OUT).
            partner = tl.load(
                x_ptr + other * sx_b + c[None, :] * sx_c + k[:, None] * sx_n,
                mask=(k < N)[:, None] & (c < Cs)[None, :], other=0.0,
            )  # fmt: skip
            partner = _dot_operand(partner, NATIVE_HALF)
            # Half inputs: the logit gradient is rounded to their dtype, as flash-attention rounds P for
            # dV: each term errs by at most one unit roundoff of that dtype, which the gradient returned
            # in that dtype has anyway.
            if COLUMNS:
                g = _logit_gradient(x_ptr, y_ptr, lse_s_ptr, lse_t_ptr, other, own, k, mine, B, N, Cs, Ct,
                                    inv_tau, sx_b, sx_c, sx_n, sy_b, sy_c, sy_n,
                                    KL, BLOCK_Q, BLOCK_P, BLOCK_C, PRECISION, NATIVE_HALF)  # fmt: skip
                acc = tl.dot(tl.trans(g).to(partner.dtype), partner, acc, input_precision=PRECISION)
            else:
                g = _logit_gradient(x_ptr, y_ptr, lse_s_ptr, lse_t_ptr, own, other, mine, k, B, N, Cs, Ct,
                                    inv_tau, sx_b, sx_c, sx_n, sy_b, sy_c, sy_n,
                                    KL, BLOCK_P, BLOCK_Q, BLOCK_C, PRECISION, NATIVE_HALF)  # fmt: skip
                acc = tl.dot(g.to(partner.dtype), partner, acc, input_precision=PRECISION)
    offsets = tl.program_id(0) * Cs * N + c[None, :] * N + mine[:, None]
    mask = (mine < N)[:, None] & (c < Cs)[None, :]
    acc = acc * tl.load(grad_out_ptr)
    if COLUMNS:
        acc += tl.load(grad_ptr + offsets, mask=mask, other=0.0)
    tl.store(grad_ptr + offsets, acc, mask=mask)


def _precision(x: torch.Tensor) -> str:
    # 3xTF32 keeps float32 accuracy on tensor cores; the CPU interpreter computes in full float32.
    return "tf32x3" if x.is_cuda else "ieee"


def _native_half(student: torch.Tensor, teacher: torch.Tensor) -> bool:
    """Both inputs fp16 / bf16 (the interpreter's tl.dot multiplies bfloat16's raw bits, as numpy has no
    bfloat16: there bfloat16 is upcast)."""
    native = (torch.float16, torch.bfloat16) if student.is_cuda else (torch.float16,)
    return student.dtype in native and teacher.dtype in native


class _Affinity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, tau, kl, blocks, splits):
        b, cs, n = student.shape
        ct = teacher.shape[1]
        block_p, block_q, block_c, block_out = blocks
        if kl:
            splits = 1
        elif splits is None:
            splits = _auto_splits(b * triton.cdiv(n, block_p), n, block_q, student.device)
        segment = triton.cdiv(triton.cdiv(n, splits), block_q) * block_q
        splits = triton.cdiv(n, segment)
        row_loss, lse_s, lse_t = (
            torch.empty((b, b if kl else splits, n), device=student.device, dtype=torch.float32)
            for _ in range(3)
        )
        inv_tau = 1.0 / tau
        common = (b, n, cs, ct, inv_tau, segment, *student.stride(), *teacher.stride())
        meta = dict(KL=kl, BLOCK_P=block_p, BLOCK_Q=block_q, BLOCK_C=block_c, PRECISION=_precision(student),
                    NATIVE_HALF=_native_half(student, teacher), num_warps=NUM_WARPS, maxnreg=MAX_REGISTERS)
        _affinity_forward_kernel[(b, b if kl else splits, triton.cdiv(n, block_p))](
            student, teacher, row_loss, lse_s, lse_t, *common, **meta
        )
        ctx.save_for_backward(student, teacher, lse_s, lse_t)
        ctx.launch = (common, meta, block_out, splits)
        return row_loss.sum()

    @staticmethod
    def backward(ctx, grad_out):
        student, teacher, lse_s, lse_t = ctx.saved_tensors
        common, meta, block_out, splits = ctx.launch
        b, cs, n = student.shape
        grad = torch.empty((splits * b, cs, n), device=student.device, dtype=torch.float32)
        grid = (splits * b, triton.cdiv(n, meta["BLOCK_P"]), triton.cdiv(cs, block_out))
        grad_out = grad_out.float().reshape(1)
        passes = (False, True) if meta["KL"] else (False,)
        for columns in passes:
            _affinity_backward_kernel[grid](
                student,
                teacher,
                grad,
                lse_s,
                lse_t,
                grad_out,
                *common,
                **meta,
                COLUMNS=columns,
                BLOCK_OUT=block_out,
            )
        grad = grad.view(splits, b, cs, n).sum(0) if splits > 1 else grad
        return grad.to(student.dtype), None, None, None, None, None


def _auto_splits(row_programs: int, n: int, block_q: int, device: torch.device) -> int:
    """Column segments per row block so that a GPU gets at least one program per multiprocessor."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(sms, row_programs), triton.cdiv(n, block_q)))


def _blocks_for(channels: int) -> tuple[int, int, int, int]:
    """(rows, columns, reduced channels, gradient channels) per tile for a student with ``channels``;
    tl.dot needs 16 or more on every side."""
    return 64, 64, 32, min(128, max(16, triton.next_power_of_2(channels)))


def pairwise_affinity_mse_triton(
    student: torch.Tensor,
    teacher: torch.Tensor,
    blocks: tuple[int, int, int, int] | None = None,
    splits: int | None = None,
) -> torch.Tensor:
    """Triton twin of ``pairwise_affinity_mse_reference`` (arguments already checked); ``splits``
    (column segments per row block) is chosen from the GPU when None."""
    return _Affinity.apply(
        student, teacher.detach(), 1.0, False, blocks or _blocks_for(student.shape[1]), splits
    )


def cross_image_affinity_kl_triton(
    student: torch.Tensor, teacher: torch.Tensor, tau: float, blocks: tuple[int, int, int, int] | None = None
) -> torch.Tensor:
    """Triton twin of ``cross_image_affinity_kl_reference`` (arguments already checked)."""
    return _Affinity.apply(
        student, teacher.detach(), float(tau), True, blocks or _blocks_for(student.shape[1]), None
    )
