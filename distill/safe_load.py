"""Reading tensor files a user names (weights, training states) without ever running code from them.

Pickles are loaded with ``weights_only=True``. PyTorch's refusal of other objects advises loading the file
with ``weights_only=False``, which would run whatever code it holds: that advice never reaches the user.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

# What loading a missing, truncated, corrupt or refused file raises (torch, safetensors, pickle).
LOAD_ERRORS = (pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError, SafetensorError)


class UnreadableTensors(ValueError):
    """A tensor file that cannot be read safely; the message is the one-line reason."""


def refusal_reason(err: BaseException) -> str:
    """One line saying why a file could not be loaded, without advice to load it unsafely."""
    text = str(err).strip()
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in text:
        return "it holds Python objects other than tensors, which are never unpickled (that could run code)"
    return text.splitlines()[0] if text else type(err).__name__


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a ``torch.save`` state dict (``weights_only=True``), as a dict of tensors."""
    path = Path(path)
    try:
        state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as err:
        raise UnreadableTensors(refusal_reason(err)) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnreadableTensors(f"it holds a {type(state).__name__}, not a state dict (names -> tensors)")
    return state
