"""Which implementation a kernel call runs: the Triton kernel or the plain-PyTorch reference.

``auto`` (the default) picks Triton for CUDA tensors when Triton is importable, the reference
otherwise. ``use_backend("reference" | "triton")`` (a plain call or a ``with`` block, like
``torch.set_grad_enabled``) makes every ``auto`` call run that implementation; ``use_reference(True)``
is ``use_backend("reference")``, and the environment variable ``SEGDISTILL_KERNELS=reference`` forces
the reference while the switch is ``auto``. Forced Triton runs on CPU tensors under the Triton
interpreter (``TRITON_INTERPRET=1`` set before ``triton`` is imported), as the tests do.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Literal

import torch

Backend = Literal["auto", "reference", "triton"]
BACKENDS = ("auto", "reference", "triton")
ENV_VAR = "SEGDISTILL_KERNELS"
ENV_CHOICES = ("auto", "reference")

_forced: Backend = "auto"


class use_backend:  # noqa: N801  (used like a function, as torch.set_grad_enabled)
    """Make every ``auto`` kernel call run ``backend`` (``auto`` stops forcing).

    ``use_backend("triton")`` applies at once and stays; ``with use_backend("triton"): ...`` restores the
    previous setting on exit.
    """

    def __init__(self, backend: Backend = "auto") -> None:
        global _forced
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
        self._previous = _forced
        _forced = backend

    def __enter__(self) -> use_backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _forced
        _forced = self._previous


def use_reference(enabled: bool = True) -> use_backend:
    """Force (``True``) or stop forcing (``False``) the reference implementations; see ``use_backend``."""
    return use_backend("reference" if enabled else "auto")


def forced_backend() -> Backend:
    """What an ``auto`` call runs as: the switch's choice, else the environment variable's."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in ENV_CHOICES:
        raise ValueError(
            f"environment variable {ENV_VAR}={value!r}: expected one of {', '.join(ENV_CHOICES)}"
        )
    return _forced if _forced != "auto" else value


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_unavailable_reason(on_cuda: bool) -> str | None:
    """Why the Triton kernels cannot run on CUDA (``on_cuda``) or CPU tensors here; None when they can."""
    if not triton_available():
        return "triton is not installed (pip install triton)"
    if not on_cuda and not interpreter_enabled():
        return "Triton on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported"
    return None


def resolve_backend(backend: Backend, *tensors: torch.Tensor) -> Literal["reference", "triton"]:
    """The implementation to run for ``tensors``; Triton asked for (or forced) where it cannot run is an error."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        backend = forced_backend()
    if backend == "triton":
        reason = triton_unavailable_reason(on_cuda)
        if reason is not None:
            raise RuntimeError(f"backend='triton' asked for, but {reason}")
        return "triton"
    if backend == "reference" or not on_cuda or not triton_available():
        return "reference"
    return "triton"


def device_of(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make the tensor's GPU current: Triton launches on the current device (backward runs on an
    autograd thread that already has it); a no-op for CPU tensors under the interpreter."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
