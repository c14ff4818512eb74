"""One predictor interface over every backend.

A predictor takes what a camera or an image file gives, uint8 images (N, H, W, 3), and returns int32
labels (N, H, W) on the host. The three steps are separate so that the benchmark can time the compute
alone and the whole path:

* ``prepare``: host -> device, and the normalisation and NCHW layout unless the graph does them;
* ``forward``: the artifact alone, on data already on its device (compute only);
* ``labels``: argmax (unless the graph outputs labels) and the copy back to the host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segdistill.deploy.artifact import ArtifactError, ArtifactInfo
from segdistill.deploy.shapes import ImageShape, accepts

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "uint8": torch.uint8, "int32": torch.int32}


class Predictor(ABC):
    backend: str = ""

    def __init__(self, artifact: str | Path, info: ArtifactInfo, device: str | torch.device = "cpu") -> None:
        self.artifact, self.info, self.device = Path(artifact), info, torch.device(device)
        self.mean = torch.tensor(info.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(info.std, device=self.device).view(1, 3, 1, 1)
        self.mean_np = np.asarray(info.mean, np.float32).reshape(1, 3, 1, 1)
        self.std_np = np.asarray(info.std, np.float32).reshape(1, 3, 1, 1)

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.artifact.name}"

    def check_shape(self, shape: ImageShape) -> None:
        spec = self.info.input
        if not accepts(spec.shape, spec.layout, shape):
            raise ArtifactError(
                f"{self.name} takes input {spec.name!r} of shape {spec.shape} ({spec.layout}); a batch of "
                f"{shape} does not fit: export a graph at this shape or with --dynamic for the dimensions that vary"
            )

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) host images -> the artifact's input on its device."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ArtifactError(f"{self.name} predicts from uint8 images (N, H, W, 3), not {images.dtype} {images.shape}")
        self.check_shape(ImageShape(images.shape[0], images.shape[1], images.shape[2]))
        if self.info.normalization_in_graph:
            return torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        if self.device.type == "cpu":
            # NumPy on the host: torch's small CPU ops pay OpenMP wake-ups that cost more than the work
            x = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
            return torch.from_numpy(np.ascontiguousarray((x - self.mean_np) / self.std_np))
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        x = (x.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        return x.contiguous().to(TORCH_DTYPES[self.info.input.dtype])

    @abstractmethod
    def forward(self, inputs: Any) -> Any:
        """The artifact alone; outputs stay where the backend puts them."""

    def to_numpy(self, outputs: Any) -> np.ndarray:
        """Raw outputs (logits or labels) on the host, as float32 / int32."""
        return torch.as_tensor(outputs).cpu().numpy()

    def labels(self, outputs: Any) -> np.ndarray:
        out = torch.as_tensor(outputs)
        if self.info.output_kind == "logits" and out.device.type != "cpu":
            out = out.argmax(1)  # on the GPU: only labels cross to the host
        out = out.cpu().numpy()
        return (out.argmax(1) if self.info.output_kind == "logits" and out.ndim == 4 else out).astype(np.int32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The whole path: uint8 (N, H, W, 3) host images -> int32 labels (N, H, W) on the host."""
        return self.labels(self.forward(self.prepare(images)))

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
