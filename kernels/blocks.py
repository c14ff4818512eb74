"""Block sizes of the memory-lean references, from a memory budget.

The references cut the similarity / affinity matrices into blocks of rows (``blockwise_sum``). Small
blocks save memory but cost time: every block is a few separate operator calls, and each call's thread
pool synchronises, which at two threads made hundreds of 64-row blocks 2-4x slower than the published
forms. So blocks are as large as the budget allows: a block's working memory (about ``block_buffers``
live buffers of its size, forward and backward) at most 1/4 of the published form's (about
``materialising_buffers`` buffers of the whole matrices; both counts measured with
``benchmarks/kernels.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.autograd.function import once_differentiable

WORKING_FRACTION = 4  # the lean references' working memory is at most 1/4 of the published forms'
MIN_BLOCK_ENTRIES = 1 << 16  # below this (256 KiB of float32) a block's fixed costs dominate


def block_rows(
    rows: int, row_entries: int, total_entries: int, materialising_buffers: float, block_buffers: float
) -> int:
    """Rows per block when cutting ``rows`` rows of ``row_entries`` matrix entries each, ``total_entries``
    being the entries of the whole matrices the published form materialises; the blocks are balanced
    (no small ragged last block)."""
    budget = int(total_entries * materialising_buffers / (WORKING_FRACTION * block_buffers))
    blocks = -(-rows // max(1, max(budget, MIN_BLOCK_ENTRIES) // row_entries))
    return -(-rows // blocks)


def add_autograd_gradient(
    loss_fn: Callable[..., torch.Tensor], part: torch.Tensor, grad_part: torch.Tensor, *args
) -> torch.Tensor:
    """``loss_fn(part, *args)``, adding its gradient (by autograd) into ``grad_part``: the part of the
    student's gradient buffer a block touches (a view), so no student-sized zeros per block."""
    with torch.enable_grad():
        leaf = part.detach().requires_grad_()
        loss = loss_fn(leaf, *args)
        (block_grad,) = torch.autograd.grad(loss, leaf)
    grad_part += block_grad
    return loss.detach()


class _BlockwiseSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, block_loss, blocks, add_gradient):
        total = student.new_zeros(())
        grad = torch.zeros_like(student) if ctx.needs_input_grad[0] else None
        for block in blocks:
            if grad is None:
                total += block_loss(student, *block)
            elif add_gradient is None:
                total += add_autograd_gradient(block_loss, student, grad, *block)
            else:
                total += add_gradient(student, grad, *block)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None


def blockwise_sum(
    block_loss: Callable[..., torch.Tensor],
    student: torch.Tensor,
    blocks: Sequence[tuple],
    add_gradient: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sum over ``blocks`` of ``block_loss(student, *block)``, differentiable with respect to ``student``
    only (once: no double backward). Each block's gradient is computed right after its loss, in
    forward, and summed into one student-sized buffer, so only one block's graph is ever alive and
    backward only scales that buffer: unlike activation checkpointing, nothing is computed twice (the
    recomputation, the teacher's product included, made the references up to 4.7x slower than the
    published forms). ``add_gradient(student, grad, *block)``, when given, returns the block's loss
    and adds its gradient into ``grad`` itself (a closed form, or autograd on the block's part only)."""
    return _BlockwiseSum.apply(student, block_loss, blocks, add_gradient)
