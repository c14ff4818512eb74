"""Which implementation a kernel call runs: the Triton kernel or the plain-PyTorch reference.

``auto`` (the default) picks Triton for CUDA tensors when Triton is importable, the reference
otherwise. The reference is forced by the environment variable ``SEGDISTILL_KERNELS=reference`` or by
``use_reference(True)`` (a plain call or a ``with`` block, like ``torch.set_grad_enabled``). Tests ask
for ``backend="triton"`` explicitly to run the kernels on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Literal

import torch

Backend = Literal["auto", "reference", "triton"]
ENV_VAR = "SEGDISTILL_KERNELS"
ENV_CHOICES = ("auto", "reference")

_force_reference = False


class use_reference:  # noqa: N801  (used like a function, as torch.set_grad_enabled)
    """Force (``True``) or stop forcing (``False``) the reference implementations.

    ``use_reference(True)`` applies at once and stays; ``with use_reference(True): ...`` restores the
    previous setting on exit.
    """

    def __init__(self, enabled: bool = True) -> None:
        global _force_reference
        self._previous = _force_reference
        _force_reference = bool(enabled)

    def __enter__(self) -> use_reference:
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _force_reference
        _force_reference = self._previous


def reference_forced() -> bool:
    """True when the switch or the environment variable asks for the reference implementations."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in ENV_CHOICES:
        raise ValueError(
            f"environment variable {ENV_VAR}={value!r}: expected one of {', '.join(ENV_CHOICES)}"
        )
    return _force_reference or value == "reference"


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: Backend, *tensors: torch.Tensor) -> Literal["reference", "triton"]:
    """The implementation to run for ``tensors``; an explicit ``triton`` that cannot run is an error."""
    if backend == "reference":
        return "reference"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' asked for, but triton is not installed (pip install triton)")
        on_cuda = all(t.is_cuda for t in tensors)
        if not on_cuda and not interpreter_enabled():
            raise RuntimeError(
                "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported"
            )
        return "triton"
    if backend != "auto":
        raise ValueError(f"backend={backend!r}: expected 'auto', 'reference' or 'triton'")
    if reference_forced() or not all(t.is_cuda for t in tensors) or not triton_available():
        return "reference"
    return "triton"


def device_of(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make the tensor's GPU current: Triton launches on the current device (backward runs on an
    autograd thread that already has it); a no-op for CPU tensors under the interpreter."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
