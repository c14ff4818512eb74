"""Block sizes of the memory-lean references, from a memory budget.

The references cut the similarity / affinity matrices into blocks of rows under activation
checkpointing. Small blocks save memory but cost time: every block is a few separate operator calls, and
each call's thread pool synchronises, which at two threads made hundreds of 64-row blocks 2-4x slower
than the published forms. So blocks are as large as the budget allows: a block's working memory (about
``block_buffers`` live buffers of its size, in forward and in the recomputing backward) at most 1/4 of
the published form's (about ``materialising_buffers`` buffers of the whole matrices; both counts measured
with ``benchmarks/kernels.py``).
"""

from __future__ import annotations

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
