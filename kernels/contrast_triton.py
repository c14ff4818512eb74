"""Triton kernels for the Af-DCD omni-contrast (``segdistill.kernels.contrast``): forward, backward, autograd.

One program per (patch, block of anchors). Tokens are read straight from the (B, C, H', W') maps by
index arithmetic (no token copy). For each block of teacher tokens the program forms the
(anchors x teachers x D) absolute differences in registers, reduces them to the logits
-||g_k - t_l||_1 / tau, and keeps an online masked log-sum-exp per anchor (positive l = k, negatives
l with another channel group). Forward stores the per-anchor loss and log-sum-exp (patches x T floats);
backward recomputes the same tiles and uses the differences twice: their sum gives the softmax
weights, their sign the gradient  dg_k = -(1/tau) sum_l (pi_kl - [l = k]) sign(g_k - t_l).
No similarity matrix is ever written to memory. Arithmetic is float32 whatever the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NEG = tl.constexpr(-1.0e30)  # finite "minus infinity": masked logits are replaced before exp, so no inf - inf
NUM_WARPS = 8  # the 4k-float difference tile: at most 128 registers a thread, 2 blocks per SM (segdistill.kernels.compile_check)


@triton.jit
def _token_offsets(token, d, patch_id, patches_w, patches_per_image, D, s_b, s_c, s_h, s_w,
                   PATCH: tl.constexpr, GROUPS: tl.constexpr):  # fmt: skip
    """Element offsets (tokens x channels) of tokens k = n * GROUPS + m of one patch."""
    b = patch_id // patches_per_image
    in_image = patch_id % patches_per_image
    row0 = (in_image // patches_w) * PATCH
    col0 = (in_image % patches_w) * PATCH
    position = token // GROUPS
    group = token % GROUPS
    spatial = (row0 + position // PATCH) * s_h + (col0 + position % PATCH) * s_w
    return b * s_b + spatial[:, None] + (group * D)[:, None] * s_c + d[None, :] * s_c


@triton.jit
def _patch_contrast_kernel(
    g_ptr, t_ptr, grad_ptr, loss_ptr, lse_ptr, grad_loss_ptr, inv_tau, T, D, patches_w, patches_per_image,
    s_b, s_c, s_h, s_w, ts_b, ts_c, ts_h, ts_w,
    PATCH: tl.constexpr, GROUPS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr, BACKWARD: tl.constexpr,
):  # fmt: skip
    patch_id = tl.program_id(0)
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    d = tl.arange(0, BLOCK_D)
    in_k = k < T
    k_mask = in_k[:, None] & (d < D)[None, :]
    g_offsets = _token_offsets(
        k, d, patch_id, patches_w, patches_per_image, D, s_b, s_c, s_h, s_w, PATCH, GROUPS
    )
    g = tl.load(g_ptr + g_offsets, mask=k_mask, other=0.0).to(tl.float32)
    rows = patch_id * T + k
    if BACKWARD:
        lse = tl.load(lse_ptr + rows, mask=in_k, other=0.0)
        # d loss / d logit = g_out * (pi - [l = k]); d logit / d g = -sign(g - t) / tau.
        scale = -tl.load(grad_loss_ptr + rows, mask=in_k, other=0.0) * inv_tau
        grad = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
    else:
        running_max = tl.full([BLOCK_K], NEG, tl.float32)
        running_sum = tl.zeros([BLOCK_K], tl.float32)
        positive = tl.zeros([BLOCK_K], tl.float32)
    for l0 in range(0, T, BLOCK_L):
        cand = l0 + tl.arange(0, BLOCK_L)  # teacher tokens l
        l_mask = (cand < T)[:, None] & (d < D)[None, :]
        t_offsets = _token_offsets(
            cand, d, patch_id, patches_w, patches_per_image, D, ts_b, ts_c, ts_h, ts_w, PATCH, GROUPS
        )
        t = tl.load(t_ptr + t_offsets, mask=l_mask, other=0.0).to(tl.float32)
        diff = g[:, None, :] - t[None, :, :]  # (K, L, D); padded channels give 0
        logits = -tl.sum(tl.abs(diff), axis=2) * inv_tau
        is_positive = k[:, None] == cand[None, :]
        # Positive, or a negative (another channel group); same group elsewhere takes no part.
        valid = (
            in_k[:, None]
            & (cand < T)[None, :]
            & (((k % GROUPS)[:, None] != (cand % GROUPS)[None, :]) | is_positive)
        )
        if BACKWARD:
            softmax = tl.exp(tl.where(valid, logits - lse[:, None], NEG))
            weight = scale[:, None] * (softmax - is_positive.to(tl.float32))
            sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
            grad += tl.sum(weight[:, :, None] * sign, axis=1)
        else:
            new_max = tl.maximum(running_max, tl.max(tl.where(valid, logits, NEG), axis=1))
            exp_logits = tl.exp(tl.where(valid, logits - new_max[:, None], NEG))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(exp_logits, axis=1)
            running_max = new_max
            positive += tl.sum(tl.where(is_positive & valid, logits, 0.0), axis=1)
    if BACKWARD:
        grad_offsets = _token_offsets(
            k, d, patch_id, patches_w, patches_per_image, D, s_b, s_c, s_h, s_w, PATCH, GROUPS
        )
        tl.store(grad_ptr + grad_offsets, grad.to(grad_ptr.dtype.element_ty), mask=k_mask)
    else:
        lse = running_max + tl.log(tl.where(in_k, running_sum, 1.0))
        tl.store(lse_ptr + rows, lse, mask=in_k)
        tl.store(loss_ptr + rows, lse - positive, mask=in_k)


def _blocks(tokens: int, channels: int) -> tuple[int, int, int]:
    """(anchors, teacher tokens, channels) per tile: the 3-D difference tile holds about 4k floats (8k
    took 177 registers a thread in backward: one block of 8 warps per SM, 12.5 %)."""
    block_d = triton.next_power_of_2(channels)
    block_l = min(triton.next_power_of_2(tokens), 4)
    block_k = min(triton.next_power_of_2(tokens), max(1, 4096 // (block_l * block_d)), 64)
    return block_k, block_l, block_d


class _PatchContrast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, patch, groups, tau, block_k, block_l):
        b, c, h, w = student.shape
        tokens, channels = patch * patch * groups, c // groups
        patches = b * (h // patch) * (w // patch)
        auto_k, auto_l, block_d = _blocks(tokens, channels)
        block_k, block_l = block_k or auto_k, block_l or auto_l
        loss, lse = (
            torch.empty((patches, tokens), device=student.device, dtype=torch.float32) for _ in range(2)
        )
        ctx.launch = dict(
            grid=(patches, triton.cdiv(tokens, block_k)),
            args=(1.0 / tau, tokens, channels, w // patch, (h // patch) * (w // patch)),
            meta=dict(
                PATCH=patch,
                GROUPS=groups,
                BLOCK_K=block_k,
                BLOCK_L=block_l,
                BLOCK_D=block_d,
                num_warps=NUM_WARPS,
            ),
        )
        _launch(ctx.launch, student, teacher, lse, loss=loss)
        ctx.save_for_backward(student, teacher, lse)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        student, teacher, lse = ctx.saved_tensors
        # The kernel addresses the gradient with the student's strides.
        grad = torch.empty_strided(
            student.shape, student.stride(), device=student.device, dtype=student.dtype
        )
        _launch(ctx.launch, student, teacher, lse, grad=grad, grad_loss=grad_loss.float().contiguous())
        return grad, None, None, None, None, None, None


def _launch(launch: dict, student, teacher, lse, loss=None, grad=None, grad_loss=None) -> None:
    """Forward when ``loss`` is given (writes loss and lse), else backward (reads lse, writes grad)."""
    backward = loss is None
    # Pointers a mode does not use still need a tensor; the kernel never touches them.
    _patch_contrast_kernel[launch["grid"]](
        student, teacher, grad if backward else student, lse if backward else loss, lse,
        grad_loss if backward else lse, *launch["args"], *student.stride(), *teacher.stride(),
        **launch["meta"], BACKWARD=backward,
    )  # fmt: skip


def patch_contrast_triton(
    student: torch.Tensor,
    teacher: torch.Tensor,
    patch: int,
    groups: int,
    tau: float,
    block_k: int | None = None,
    block_l: int | None = None,
) -> torch.Tensor:
    """Triton twin of ``patch_contrast_reference`` (arguments already checked); tiles from the shape
    when ``block_k`` / ``block_l`` are None (the tests set them to exercise masked tails)."""
    per_anchor = _PatchContrast.apply(student, teacher.detach(), patch, groups, float(tau), block_k, block_l)
    return per_anchor.sum()
