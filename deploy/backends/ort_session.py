"""ONNX Runtime: CPU, CUDA and TensorRT execution providers over one ``.onnx`` file."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segdistill.deploy.artifact import ArtifactError, ArtifactInfo
from segdistill.deploy.predictor import Predictor

PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-tensorrt": "TensorrtExecutionProvider",
}


def provider_list(backend: str, info: ArtifactInfo, cache_dir: Path) -> list[Any]:
    """The providers in order of preference; ONNX Runtime runs what the first cannot on the next."""
    if backend == "ort-cpu":
        return ["CPUExecutionProvider"]
    if backend == "ort-cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    trt_options = {
        "trt_fp16_enable": info.precision == "fp16",
        "trt_int8_enable": info.precision == "int8",  # explicit QDQ graph: no calibration table is needed
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
    }
    return [("TensorrtExecutionProvider", trt_options), "CUDAExecutionProvider", "CPUExecutionProvider"]


def fused_nodes(artifact: Path) -> int:
    """Nodes of the graph as ONNX Runtime's CPU provider runs it, after all its fusions (Q/DQ pairs into
    integer kernels, Conv + activation, ...), subgraphs included: what "the same graph size" means when an
    INT8 graph's latency is compared with another's."""
    import onnx
    import onnxruntime as ort

    def count(graph: Any) -> int:
        return sum(1 + sum(count(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH) for n in graph.node)

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # its warning, that the optimized graph is specific to this machine, is the point here
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
        return count(onnx.load(options.optimized_model_filepath, load_external_data=False).graph)


class OnnxRuntimePredictor(Predictor):
    def __init__(self, artifact: Path, info: ArtifactInfo, device: str | torch.device, backend: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        wanted = PROVIDERS[backend]
        if wanted not in ort.get_available_providers():
            raise ArtifactError(
                f"backend {backend!r} needs ONNX Runtime's {wanted}, which this installation lacks (it has "
                f"{', '.join(ort.get_available_providers())}): install onnxruntime-gpu "
                "(pip install 'segdistill[onnxruntime-gpu]') on a machine with an NVIDIA GPU"
            )
        device = "cpu" if backend == "ort-cpu" else (device if torch.device(device).type == "cuda" else "cuda")
        super().__init__(artifact, info, device)
        self.backend = backend
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        cache = artifact.parent / f".{artifact.name}.ort_trt_cache"
        self.session = ort.InferenceSession(str(artifact), options, providers=provider_list(backend, info, cache))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.numpy_input_type = np.dtype(info.input.dtype)

    def forward(self, inputs: torch.Tensor) -> Any:
        if self.device.type == "cpu":
            return self.session.run([self.output_name], {self.input_name: inputs.numpy()})[0]
        # On the GPU the input stays in torch's CUDA memory: ONNX Runtime reads it in place.
        binding = self.session.io_binding()
        binding.bind_input(
            self.input_name, "cuda", self.device.index or 0, self.numpy_input_type, tuple(inputs.shape), inputs.data_ptr()
        )
        binding.bind_output(self.output_name, "cuda", self.device.index or 0)
        torch.cuda.current_stream(self.device).synchronize()  # ONNX Runtime uses its own stream
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0]

    def to_numpy(self, outputs: Any) -> np.ndarray:
        return outputs if isinstance(outputs, np.ndarray) else outputs.numpy()

    def labels(self, outputs: Any) -> np.ndarray:
        return super().labels(self.to_numpy(outputs))
