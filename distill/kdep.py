"""KDEP, knowledge distillation as efficient pre-training (docs/loss_math.md §6): the pieces of the method.

* :class:`PooledFeature`: a timm classification backbone without its classifier, returning the globally
  average-pooled *pre-activation* last feature. The final activation is replaced by the identity:
  ResNets (timm ``ResNet``: resnet*, resnet*d, resnet10t, ...) lose the activation after the residual sum
  of their last block (``layer4[-1].act2`` for basic blocks, ``act3`` for bottlenecks); MobileNetV2 and
  EfficientNets (timm ``EfficientNet``: mobilenetv2_*, efficientnet_*, tf_efficientnet_*, the Lite ones)
  lose the activation of their head's BatchNorm (``bn2.act``, ReLU6 or SiLU) after the 1x1 ``conv_head``,
  giving 1280-d features for MobileNetV2-1.0. Other families are refused.
* The SVD basis, fitted once on teacher features (``X - mean = U S V^T``) and stored with the mean and
  the first D_s right singular vectors V[:, :D_s] (safetensors). Singular vectors' signs depend on the
  implementation, so a stored basis is always reused, never recomputed.
* Power temperature scaling PTS(x) = sign(x) (|x| / T)^(1/n), T = 0.1, n = 3 (official ``src/resnet.py``).
* The loss: w * MSE_mean(f_s, PTS((f_t - mean) V[:, :D_s])).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import ResNet
from torch import nn

from segdistill.atomic_files import atomic_write
from segdistill.errors import ConfigError

BASIS_FORMAT = "segdistill-kdep-basis/1"


def remove_final_activation(model: nn.Module, name: str) -> None:
    if isinstance(model, ResNet):
        block = model.layer4[-1]
        setattr(block, "act3" if hasattr(block, "act3") else "act2", nn.Identity())
    elif isinstance(model, EfficientNet):
        model.bn2.act = nn.Identity()
    else:
        raise ConfigError(
            f"KDEP reads a backbone's pooled pre-activation feature; backbone {name!r} is a timm "
            f"{type(model).__name__}, which is not supported. Supported: timm ResNets (resnet18, resnet50, "
            "resnet10t, ...), MobileNetV2 and EfficientNets (mobilenetv2_100, efficientnet_b0, tf_efficientnet_lite2, ...)"
        )


class PooledFeature(nn.Module):
    """``forward(images) -> (B, D)``: the pooled pre-activation feature of a timm backbone."""

    def __init__(self, name: str, pretrained: str | None = None, kwargs: dict | None = None) -> None:
        super().__init__()
        options: dict = {k: tuple(v) if isinstance(v, list) else v for k, v in (kwargs or {}).items()}
        if pretrained == "hub":
            options["pretrained"] = True
        elif pretrained is not None:
            if not Path(pretrained).is_file():
                raise ConfigError(f"weights file {pretrained!r} for backbone {name!r} does not exist")
            options.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained)})
        if name.split(".")[0] not in timm.list_models():
            raise ConfigError(f"unknown timm backbone {name!r} for KDEP")
        self.model = timm.create_model(name, num_classes=0, **options)
        remove_final_activation(self.model, name)
        self.dim = self.model.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def fit_basis(features: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, V[:, :dim]) of teacher features (n, D_t), in float64 for the decomposition."""
    n, d_t = features.shape
    if dim > d_t:
        raise ConfigError(f"the student's feature has {dim} dimensions, more than the teacher's {d_t}: KDEP projects the teacher's onto the student's")
    if n < dim:
        raise ConfigError(
            f"the SVD basis needs at least as many teacher features as the student has dimensions ({dim}), "
            f"got {n}: raise svd.views_per_image or svd.images"
        )
    x = features.double()
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return mean.float(), vh[:dim].T.contiguous().float()


def save_basis(path: Path, mean: torch.Tensor, basis: torch.Tensor, provenance: dict[str, str]) -> None:
    """Write the basis beside its final name, then rename: never a half-written file."""
    tensors = {"mean": mean.contiguous(), "basis": basis.contiguous()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": BASIS_FORMAT, **provenance}))


def load_basis(path: Path, teacher_dim: int, student_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"SVD basis {str(path)!r} could not be read: {err}") from None
    mean, basis = tensors.get("mean"), tensors.get("basis")
    if mean is None or basis is None or mean.shape != (teacher_dim,) or basis.shape != (teacher_dim, student_dim):
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        raise ConfigError(
            f"SVD basis {str(path)!r} holds {found}; this teacher/student pair needs mean ({teacher_dim},) and "
            f"basis ({teacher_dim}, {student_dim}). Point svd.basis at another file (a basis is never recomputed in place)"
        )
    return mean, basis


def power_temperature_scaling(x: torch.Tensor, temperature: float = 0.1, power: float = 3.0) -> torch.Tensor:
    """sign(x) (|x| / T)^(1/n)."""
    return torch.sign(x) * (x.abs() / temperature).pow(1.0 / power)


def kdep_target(teacher_feature: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor, temperature: float, power: float) -> torch.Tensor:
    return power_temperature_scaling((teacher_feature - mean) @ basis, temperature, power)


def kdep_loss(student_feature: torch.Tensor, target: torch.Tensor, weight: float) -> torch.Tensor:
    return weight * F.mse_loss(student_feature.float(), target.float())
