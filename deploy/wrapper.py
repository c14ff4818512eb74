"""The graph that is deployed: a student rebuilt from its checkpoint, returning full-resolution logits or
int32 labels only (no auxiliary head, no features), optionally taking uint8 NHWC images with the
normalisation folded in. Every exporter traces this module and every parity gate runs it as the
reference, so an artifact and its reference compute the same function by construction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segdistill.checkpoint import load_model, resolve_model_path, sha256_of
from segdistill.config import IMAGENET_MEAN, IMAGENET_STD
from segdistill.deploy.artifact import ArtifactInfo, TensorSpec
from segdistill.models.segmentor import Segmentor
from segdistill.models.torchvision_seg import TorchvisionSegmentor

OUTPUT_KINDS = ("logits", "labels")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INPUT_NAME = "images"


class DeployModel(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        mean: list[float],
        std: list[float],
        output: str = "logits",
        uint8_input: bool = False,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        if output not in OUTPUT_KINDS:
            raise ValueError(f"output must be one of {OUTPUT_KINDS}, not {output!r}")
        self.dtype = DTYPES[precision]
        self.model = drop_auxiliary_head(model).eval().to(self.dtype)
        self.output, self.uint8_input, self.precision = output, uint8_input, precision
        self.mean, self.std = list(mean), list(std)
        # (x / 255 - mean) / std as one multiply-add, which the exporters fold into constants.
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) / std_t, persistent=False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Cast before the permute: TensorRT has no UINT8 Transpose (UINT8 may only be a network input / output)
        x = images.float().permute(0, 3, 1, 2) * self.scale - self.shift if self.uint8_input else images
        logits = self.model(x.to(self.dtype)).logits
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.output == "labels":
            return logits.argmax(1).to(torch.int32)
        return logits.float()  # FP16/BF16 graphs still hand back float32 logits

    def input_spec(self, shape: list[int | str]) -> TensorSpec:
        """``shape`` is N, 3, H, W (ints or names of dynamic dimensions) in either layout."""
        n, _, h, w = shape
        if self.uint8_input:
            return TensorSpec(INPUT_NAME, "uint8", "NHWC", [n, h, w, 3])
        return TensorSpec(INPUT_NAME, "float32", "NCHW", [n, 3, h, w])

    def output_spec(self, shape: list[int | str], num_classes: int) -> TensorSpec:
        n, _, h, w = shape
        if self.output == "labels":
            return TensorSpec("labels", "int32", "NHW", [n, h, w])
        return TensorSpec("logits", "float32", "NCHW", [n, num_classes, h, w])

    def artifact_info(self, kind: str, meta: dict[str, Any], checkpoint: str | Path, shape: list[int | str]) -> ArtifactInfo:
        """The sidecar of an artifact traced from this module at ``shape`` (N, 3, H, W)."""
        weights, _ = resolve_model_path(checkpoint)
        return ArtifactInfo(
            kind=kind,
            file="",
            precision=self.precision,
            input=self.input_spec(shape),
            output=self.output_spec(shape, meta["num_classes"]),
            output_kind=self.output,
            normalization_in_graph=self.uint8_input,
            mean=self.mean,
            std=self.std,
            classes=list(meta["classes"]),
            palette=[list(c) for c in meta["palette"]],
            ignore_index=meta["ignore_index"],
            data=dict(meta.get("data", {})),
            # the weights file itself: model.json's hash is stale if the weights were replaced after it was written
            source={"checkpoint": str(Path(checkpoint).resolve()), "weights_sha256": sha256_of(weights)},
            versions={"torch": torch.__version__},
            extra={"architecture": meta["model"]},
        )


def drop_auxiliary_head(model: nn.Module) -> nn.Module:
    """Deployment never reads the auxiliary logits, so the deployed model does not compute them. Only in our
    own models and torchvision's, which allow it: a ``model.factory`` module is left as its author wrote it."""
    if isinstance(model, Segmentor):
        model.aux_head = None
    elif isinstance(model, TorchvisionSegmentor):
        model.net.aux_classifier = None
    return model


def load_deploy_model(
    checkpoint: str | Path, output: str = "logits", uint8_input: bool = False, precision: str = "fp32"
) -> tuple[DeployModel, dict[str, Any]]:
    """A :class:`DeployModel` around the student of ``checkpoint`` (a model folder), and its metadata."""
    model, meta = load_model(checkpoint)
    data = meta.get("data", {})
    mean = meta.get("mean", data.get("mean", IMAGENET_MEAN))
    std = meta.get("std", data.get("std", IMAGENET_STD))
    return DeployModel(model, mean, std, output, uint8_input, precision), meta
