"""Native TensorRT runtime (TensorRT 10.3 to 11.x) on torch CUDA tensors.

The engine's input and output buffers are torch CUDA tensors: their ``data_ptr()`` goes to
``set_tensor_address`` and the engine is enqueued with ``execute_async_v3`` on a torch CUDA stream of
its own (on the legacy default stream TensorRT adds synchronisations, which would skew the latency),
ordered after torch's work that wrote the input and before torch's work that reads the output. So
TensorRT works in the CUDA context torch already holds (the device's primary context) and nothing else
is needed: pycuda is a source build against the CUDA toolkit and creates a separate context of its own,
which only adds a dependency and context switches.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from segdistill.deploy.artifact import ArtifactError, ArtifactInfo
from segdistill.deploy.predictor import Predictor
from segdistill.deploy.shapes import ImageShape

SUPPORTED = ((10, 3), (12, 0))  # TensorRT 10.3 (JetPack 6) up to, not including, 12
INSTALL_HINT = (
    "install it on a machine with an NVIDIA GPU and driver (pip install 'segdistill[tensorrt]', or JetPack 6 "
    "on a Jetson), or build and run the container: docker build -t segdistill . && docker run --gpus all ... "
    "(docs/deployment.md has the exact lines)"
)
TORCH_DTYPES = {
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8, "UINT8": torch.uint8,
    "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool,
}  # fmt: skip


def tensorrt_module() -> ModuleType:
    """``import tensorrt``, with a clear message when it is missing or of an unsupported version."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ArtifactError(f"TensorRT is not installed here: {INSTALL_HINT}") from None
    version = tuple(int(p) for p in trt.__version__.split(".")[:2])
    if not SUPPORTED[0] <= version < SUPPORTED[1]:
        raise ArtifactError(f"TensorRT {trt.__version__} is not supported: use 10.3 to 11.x")
    return trt


def require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        raise ArtifactError(
            f"{what} needs an NVIDIA GPU and torch with CUDA; this machine has none (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}). Run it where the engine will be deployed: {INSTALL_HINT}"
        )


def gpu_description(device: torch.device) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "compute_capability": [props.major, props.minor], "memory_gib": round(props.total_memory / 2**30, 1)}


def check_engine_fits(info: ArtifactInfo, trt: ModuleType, device: torch.device, artifact: Path) -> None:
    """Engines are specific to a TensorRT version and a GPU: say so instead of failing obscurely."""
    built = info.extra.get("tensorrt", {})
    if built.get("version") != trt.__version__:
        raise ArtifactError(
            f"engine {str(artifact)!r} was built with TensorRT {built.get('version')}; this runtime is TensorRT "
            f"{trt.__version__}. Rebuild it here: python export/to_trt.py --onnx {built.get('onnx', 'MODEL.onnx')}"
        )
    here, there = gpu_description(device), built.get("gpu", {})
    if there.get("compute_capability") != here["compute_capability"]:
        raise ArtifactError(
            f"engine {str(artifact)!r} was built for {there.get('name')} (compute capability "
            f"{there.get('compute_capability')}); this GPU is {here['name']} ({here['compute_capability']}). "
            "Rebuild it on this GPU with export/to_trt.py"
        )


class TensorRTPredictor(Predictor):
    backend = "tensorrt"

    def __init__(self, artifact: Path, info: ArtifactInfo, device: str | torch.device = "cuda") -> None:
        trt = tensorrt_module()
        require_cuda("the TensorRT runtime")
        device = torch.device(device if torch.device(device).type == "cuda" else "cuda")
        super().__init__(artifact, info, device)
        check_engine_fits(info, trt, self.device, artifact)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(artifact.read_bytes())
            if self.engine is None:
                raise ArtifactError(f"TensorRT could not deserialize {str(artifact)!r} (see its log above); rebuild it here")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise ArtifactError(f"TensorRT could not create an execution context for {str(artifact)!r} (see its log above: GPU memory?)")
            self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(f"engine {str(artifact)!r} has inputs {inputs} and outputs {outputs}; expected one of each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.output_dtype = TORCH_DTYPES[self.engine.get_tensor_dtype(self.output_name).name]
        declared = tuple(self.engine.get_tensor_shape(self.input_name))
        if -1 in declared:
            low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.shape_range = (tuple(low), tuple(high))
        else:
            self.shape_range = (declared, declared)

    def check_shape(self, shape: ImageShape) -> None:
        super().check_shape(shape)
        wanted = shape.tensor_shape(self.info.input.layout)
        low, high = self.shape_range
        if any(w < lo or w > hi for w, lo, hi in zip(wanted, low, high, strict=True)):
            raise ArtifactError(
                f"{self.name} was built for input shapes {list(low)} to {list(high)}; {list(wanted)} is outside: "
                "rebuild it with export/to_trt.py --shapes MIN/OPT/MAX covering it"
            )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        # Each of these calls returns False (and logs why) instead of raising.
        if not self.context.set_input_shape(self.input_name, tuple(inputs.shape)):
            raise ArtifactError(f"TensorRT refused input shape {tuple(inputs.shape)} for {self.name} (set_input_shape returned False)")
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype, device=self.device)
        for name, tensor in ((self.input_name, inputs), (self.output_name, out)):
            if not self.context.set_tensor_address(name, tensor.data_ptr()):
                raise RuntimeError(f"TensorRT refused the address of {name!r} for {self.name} (set_tensor_address returned False)")
        # Torch's stream wrote the input and will read the output (and reuse both blocks): order the
        # engine's stream after it, and it after the engine.
        torch_stream = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(torch_stream)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT could not run {self.name} (execute_async_v3 returned False; see its log)")
        torch_stream.wait_stream(self.stream)
        return out
