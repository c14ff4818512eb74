"""The arithmetic precision of the references: float32 at least.

Half and bfloat16 inputs are promoted to float32 (the accumulation the kernels use); float64 stays
float64, so the references (and the losses built on them) pass float64 gradcheck. The public functions
return float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))
