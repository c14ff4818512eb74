"""Trainable parameters that no loss reaches, found by one backward and frozen before DDP wraps the model.

DDP waits for a gradient of every trainable parameter and stops ("parameters that were not used in
producing loss") when one never gets any: an auxiliary head whose loss weight is 0, an adapter of a loss
that is not bound to it, a layer after the tensors the losses read. Such parameters cannot learn (a single
process leaves them as initialised too: the optimiser skips a parameter without gradient), so they are
frozen (``requires_grad=False``): DDP and the optimiser then leave them out, the same on one process or many.
That is cheaper than DDP's ``find_unused_parameters``, which searches the graph at every step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def unreached_parameters(objective: nn.Module, *inputs) -> set[str]:
    """Names of the trainable parameters of ``objective`` that one backward of its summed loss parts leaves
    without a gradient. Runs on a copy with the random state restored after, so the real modules'
    statistics and buffers (memory banks) and the run's random streams are untouched."""
    probe = copy.deepcopy(objective).train()
    devices = [inputs[0].device] if inputs[0].device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        parts, _ = probe(*inputs)
        sum(parts.values()).backward()
    return {name for name, p in probe.named_parameters() if p.requires_grad and p.grad is None}


def describe(module: nn.Module, names: set[str]) -> str:
    """The outermost submodules whose parameters are all in ``names`` (and any other names), for a message."""
    shown: list[str] = []
    for prefix, sub in module.named_modules():
        own = {f"{prefix}.{n}" if prefix else n for n, _ in sub.named_parameters()}
        if own and own <= names and not any(prefix.startswith(f"{s}.") for s in shown):
            shown.append(prefix)
    rest = sorted(n for n in names if not any(n.startswith(f"{s}.") for s in shown))
    return ", ".join(shown + rest)


def freeze_unreached(objective: nn.Module, *inputs) -> str | None:
    """Freeze the parameters of ``objective`` that no loss reaches; a note naming them, or None."""
    params = dict(objective.named_parameters())
    frozen = unreached_parameters(objective, *inputs)
    for name in frozen:
        params[name].requires_grad_(False)
    if not frozen:
        return None
    return (
        f"note: no loss reaches {describe(objective, frozen)}: frozen (as initialised), so that the "
        "optimiser and DDP leave them out"
    )
