"""Af-DCD omni-contrast (docs/loss_math.md §4.4) on already-pooled feature maps, memory-lean.

Each P x P patch of a (B, C, H', W') map gives T = P^2 * M tokens of D = C / M channels; token
k = n * M + m (n: row-major position in the patch, m: channel group). With S_kl = -||g_k - t_l||_1
(student token k, teacher token l of the same patch), anchor k scores its positive l = k against the
negatives {l : m_l != m_k} (any position); same-group tokens at other positions take no part. The
function returns the SUM over all anchors of -log softmax([S_pos, S_negs] / tau)[0]; the loss divides.

The reference never holds the similarity matrices (or the tokens) of the whole batch: it works on
bands of patch rows (as large as a memory budget allows), each band's gradient right after its loss
(segdistill.kernels.blocks.blockwise_sum).
"""

from __future__ import annotations

import torch

from segdistill.kernels.blocks import add_autograd_gradient, block_rows, blockwise_sum
from segdistill.kernels.dispatch import Backend, device_of, resolve_backend
from segdistill.kernels.precision import at_least_float32
from segdistill.kernels.validation import check_same_shape, check_tau

# Buffers of the similarity matrices' size live at the peak (segdistill.kernels.blocks), measured at the
# benchmark shape: the published form about 10 (cdist, masks, gathered logits, cross-entropy), a band
# about 5.5 of its own size.
MATERIALISING_BUFFERS, BAND_BUFFERS = 10.0, 5.5


def patch_tokens(x: torch.Tensor, patch: int, groups: int) -> torch.Tensor:
    """(B, C, H', W') -> (B * H'/patch * W'/patch, patch^2 * groups, C / groups), token k = n * groups + m."""
    b, c, h, w = x.shape
    d = c // groups
    x = x.reshape(b, groups, d, h // patch, patch, w // patch, patch)
    # (b, row-patch, col-patch, row-in-patch, col-in-patch, group, channel-in-group)
    return x.permute(0, 3, 5, 4, 6, 1, 2).reshape(-1, patch * patch * groups, d)


def contrast_exclusion_mask(tokens: int, groups: int, device: torch.device) -> torch.Tensor:
    """True where teacher token l is neither the positive nor a negative of anchor k (same group, l != k)."""
    index = torch.arange(tokens, device=device)
    same_group = (index[:, None] % groups) == (index[None, :] % groups)
    return same_group & (index[:, None] != index[None, :])


def _band_loss(
    g: torch.Tensor, t: torch.Tensor, patch: int, groups: int, excluded: torch.Tensor, tau: float
) -> torch.Tensor:
    """The loss of the patches in one horizontal band of the maps; tokens are cut here, per band."""
    distance = torch.cdist(patch_tokens(g, patch, groups), patch_tokens(t, patch, groups), p=1)
    # log_softmax, not logsumexp minus the diagonal: on CPU its exp is vectorised (logsumexp's took
    # 8x longer at the benchmark shape); excluded entries are -inf and get zero gradient. The mask is
    # filled in place: one buffer of the similarities' size fewer.
    log_p = torch.log_softmax(distance.mul(-1.0 / tau).masked_fill_(excluded, float("-inf")), dim=-1)
    return -log_p.diagonal(dim1=-2, dim2=-1).sum()


def patch_contrast_reference(
    student: torch.Tensor, teacher: torch.Tensor, patch: int, groups: int, tau: float
) -> torch.Tensor:
    g, t = at_least_float32(student), at_least_float32(teacher.detach())
    b, _, h, w = g.shape
    tokens = patch * patch * groups
    excluded = contrast_exclusion_mask(tokens, groups, g.device)
    # Bands of whole patch rows of one image, as many as the memory budget allows.
    patch_row_entries = tokens * tokens * (w // patch)
    band_rows = block_rows(h // patch, patch_row_entries, b * (h // patch) * patch_row_entries,
                           MATERIALISING_BUFFERS, BAND_BUFFERS)  # fmt: skip

    def band(image: int, top: int) -> tuple[slice, ...]:
        return slice(image, image + 1), slice(None), slice(top, top + band_rows * patch)

    def band_loss(g: torch.Tensor, image: int, top: int) -> torch.Tensor:
        return _band_loss(g[band(image, top)], t[band(image, top)], patch, groups, excluded, tau)

    def add_gradient(g: torch.Tensor, grad: torch.Tensor, image: int, top: int) -> torch.Tensor:
        where = band(image, top)
        return add_autograd_gradient(_band_loss, g[where], grad[where], t[where], patch, groups, excluded, tau)

    blocks = [(image, top) for image in range(b) for top in range(0, h, band_rows * patch)]
    return blockwise_sum(band_loss, g, blocks, add_gradient)


def check_patch_args(
    student: torch.Tensor, teacher: torch.Tensor, patch: int, groups: int, tau: float
) -> None:
    check_same_shape("patch_contrast", student, teacher, ndim=4)
    check_tau("patch_contrast", tau)
    _, c, h, w = student.shape
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch_contrast: map {h}x{w} is not divisible into whole {patch}x{patch} patches")
    if groups < 2 or c % groups:
        raise ValueError(
            f"patch_contrast: {c} channels cannot be split into groups={groups} (need >= 2, dividing C)"
        )


def patch_contrast(
    student: torch.Tensor,
    teacher: torch.Tensor,
    patch: int = 4,
    groups: int = 16,
    tau: float = 0.07,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Sum over all anchors of the Af-DCD omni-contrast InfoNCE term on pooled maps (B, C, H', W'),
    H' and W' divisible by ``patch``, C by ``groups``; a scalar, float32 (float64 for float64 inputs; see the module docstring)."""
    check_patch_args(student, teacher, patch, groups, tau)
    if resolve_backend(backend, student, teacher) == "triton":
        from segdistill.kernels.contrast_triton import patch_contrast_triton

        with device_of(student):
            return patch_contrast_triton(student, teacher, patch, groups, tau)
    return patch_contrast_reference(student, teacher, patch, groups, tau)
