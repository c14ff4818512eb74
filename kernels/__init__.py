"""Fused kernels for the hot distillation losses, each beside its plain-PyTorch reference.

CUDA tensors run the Triton kernels when Triton is importable; everything else runs the reference.
``SEGDISTILL_KERNELS=reference`` or ``use_reference(True)`` forces the reference, ``use_backend("triton")``
the kernels (on CPU tensors under ``TRITON_INTERPRET=1``). This package imports nothing from ``distill``.
See docs/kernels.md.
"""

from segdistill.kernels.affinity import cross_image_affinity_kl, pairwise_affinity_mse
from segdistill.kernels.contrast import patch_contrast
from segdistill.kernels.dispatch import triton_unavailable_reason, use_backend, use_reference
from segdistill.kernels.softmax_kl import class_softmax_kl, spatial_softmax_kl

__all__ = [
    "class_softmax_kl",
    "cross_image_affinity_kl",
    "pairwise_affinity_mse",
    "patch_contrast",
    "spatial_softmax_kl",
    "triton_unavailable_reason",
    "use_backend",
    "use_reference",
]
