"""Argument checks shared by the kernel entry points: one clear message naming the function and value."""

from __future__ import annotations

import math

import torch


def check_tau(name: str, tau: float) -> None:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"{name}: tau={tau!r}, expected a finite number > 0")


def check_float(name: str, **tensors: torch.Tensor) -> None:
    for arg, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{name}: {arg} has dtype {tensor.dtype}, expected a floating-point tensor")


def check_same_shape(name: str, student: torch.Tensor, teacher: torch.Tensor, ndim: int) -> None:
    check_float(name, student=student, teacher=teacher)
    if student.dim() != ndim or student.shape != teacher.shape:
        raise ValueError(
            f"{name}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must have the same "
            f"{ndim}-D shape"
        )
    if student.device != teacher.device:
        raise ValueError(
            f"{name}: student on {student.device}, teacher on {teacher.device}; expected one device"
        )


def check_nodes(name: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Affinity inputs: (B, C_s, N) and (B, C_t, N), same batch and node count, channels may differ."""
    check_float(name, student=student, teacher=teacher)
    if (
        student.dim() != 3
        or teacher.dim() != 3
        or student.shape[0] != teacher.shape[0]
        or student.shape[2] != teacher.shape[2]
    ):
        raise ValueError(
            f"{name}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must be (B, C_s, N) "
            "and (B, C_t, N) with the same B and N"
        )
    if student.device != teacher.device:
        raise ValueError(
            f"{name}: student on {student.device}, teacher on {teacher.device}; expected one device"
        )
