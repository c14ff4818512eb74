"""PyTorch backends: the eager model rebuilt from its checkpoint, TorchScript, and torch.export (.pt2)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from segdistill.deploy.artifact import ArtifactInfo
from segdistill.deploy.predictor import Predictor
from segdistill.deploy.wrapper import load_deploy_model


class TorchPredictor(Predictor):
    def __init__(self, module: nn.Module, artifact: str | Path, info: ArtifactInfo, device: str | torch.device, backend: str) -> None:
        super().__init__(artifact, info, device)
        self.module, self.backend = module, backend

    @torch.inference_mode()
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.module(inputs)


def eager_predictor(
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    output: str = "logits",
    uint8_input: bool = False,
    precision: str = "fp32",
) -> TorchPredictor:
    """The PyTorch reference: the student of a checkpoint folder wrapped as it is exported."""
    model, meta = load_deploy_model(checkpoint, output, uint8_input, precision)
    info = model.artifact_info("checkpoint", meta, checkpoint, ["batch", 3, "height", "width"])
    info.file, info.sha256 = "model.safetensors", info.source["weights_sha256"]
    return TorchPredictor(model.to(device), checkpoint, info, device, "eager")


def torchscript_predictor(artifact: Path, info: ArtifactInfo, device: str | torch.device) -> TorchPredictor:
    # A TorchScript archive holds TorchScript code and tensors, not arbitrary pickled Python objects.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": kept for LibTorch users
        module = torch.jit.load(str(artifact), map_location=device).eval()
    return TorchPredictor(module, artifact, info, device, "torchscript")


def torch_export_predictor(artifact: Path, info: ArtifactInfo, device: str | torch.device) -> TorchPredictor:
    program = torch.export.load(str(artifact))
    if torch.device(device).type != "cpu":  # programs are traced on the CPU; their constants move too
        program = torch.export.passes.move_to_device_pass(program, device)
    module = program.module()
    return TorchPredictor(module, artifact, info, device, "torch-export")
