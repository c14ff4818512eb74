"""Quantization-aware training: INT8 fake quantization of a student, placed as TensorRT runs it.

NVIDIA ModelOpt (``modelopt.torch.quantization``) inserts the quantizers: weights int8 per output channel,
activations (each layer's input) int8 per tensor, both symmetric, scales from the maximum seen on the
calibration images, then trained with straight-through gradients. Kept in float, as ``export/to_int8.py
--target tensorrt`` keeps them: the first convolution (it sees the raw image), the classifiers (quantized
logits move the argmax wherever two classes are close) and the depthwise convolutions, plus any layer
named in ``quantization.keep_float``. BatchNorm layers train in eval mode (running statistics, their
affine weights still learn), as the exported graph folds them into the quantized convolutions. The scales are buffers of the model (``*_quantizer._amax``), so
training states, ``final/`` and the exported QDQ ONNX all carry them; ``model.json`` names the float layers.
"""

from __future__ import annotations

import copy
import fnmatch
import types
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from segdistill.errors import ConfigError

QUANTIZED_TYPES = (nn.Conv2d, nn.Linear)


def modelopt_quantization():
    try:
        import modelopt.torch.quantization as mtq
    except ImportError:
        raise ConfigError("quantization needs NVIDIA ModelOpt: pip install 'segdistill[qat]' (or ./run.sh setup)") from None
    return mtq


def float_layers(model: nn.Module, probe: torch.Tensor, num_classes: int, keep_float: Iterable[str]) -> list[str]:
    """Names of the layers left in float: the first convolution a forward of ``probe`` calls, the 1x1
    convolutions that output the ``num_classes`` class scores, the depthwise convolutions, and the layers
    matching a ``keep_float`` pattern."""
    called: list[str] = []
    hooks = [
        m.register_forward_hook(lambda *_, name=name: called.append(name))
        for name, m in model.named_modules() if isinstance(m, nn.Conv2d)
    ]  # fmt: skip
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(probe)
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    keep = set(called[:1])
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            classifier = m.out_channels == num_classes and m.kernel_size == (1, 1)
            depthwise = m.groups > 1 and m.groups == m.in_channels
            if classifier or depthwise:
                keep.add(name)
        if isinstance(m, QUANTIZED_TYPES) and any(fnmatch.fnmatchcase(name, p) for p in keep_float):
            keep.add(name)
    return sorted(keep)


def insert_quantizers(model: nn.Module, keep: list[str], calibrate=None) -> None:
    """Fake-quantize ``model`` in place (all but the ``keep`` layers); ``calibrate(model)`` runs the images
    whose maxima set the scales (None: the scales come later, from a checkpoint)."""
    mtq = modelopt_quantization()
    quantizable = [name for name, m in model.named_modules() if isinstance(m, QUANTIZED_TYPES) and name not in keep]
    if not quantizable:
        raise ConfigError(
            f"config key 'quantization': the model has no quantizable layer (convolution or linear) once "
            f"{len(keep)} are kept in float (first convolution, classifiers, depthwise, quantization.keep_float)"
        )
    config = copy.deepcopy(mtq.INT8_DEFAULT_CFG)  # int8, weights per output channel, symmetric, max calibration
    config["quant_cfg"] += [{"quantizer_name": f"{name}.*", "enable": False} for name in keep]
    mtq.quantize(model, config, forward_loop=calibrate)


def quantize_student(model: nn.Module, keep: list[str], images: list[torch.Tensor]) -> None:
    """Insert the quantizers and calibrate them on ``images`` (float batches in [0, 1]), in eval mode."""
    if not images:
        raise ConfigError("config key 'quantization.calibration_images': no calibration image could be read (must be >= 1)")

    def calibrate(m: nn.Module) -> None:
        was_training = m.training
        m.eval()
        with torch.no_grad():
            for batch in images:
                m(batch)
        m.train(was_training)

    insert_quantizers(model, keep, calibrate)
    freeze_batch_norm(model)


def freeze_batch_norm(model: nn.Module) -> None:
    """Keep every BatchNorm in eval mode, also through ``model.train()``: with batch statistics a channel
    that the quantizers make (nearly) constant in a batch has a near-zero variance, whose 1/sqrt(var + eps)
    blows the gradients up (seen on the tiny test model: 1e12 after one step, NaN after two)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train = types.MethodType(lambda self, mode=True: nn.Module.train(self, False), m)
            m.eval()


def quantization_meta(keep: list[str]) -> dict[str, Any]:
    """What ``model.json`` records of a fake-quantized model, all that :func:`restore_quantizers` needs."""
    import modelopt

    return {
        "library": f"nvidia-modelopt {modelopt.__version__}",
        "weights": "int8 per output channel, symmetric",
        "activations": "int8 per tensor, symmetric",
        "float_layers": keep,
    }


def restore_quantizers(model: nn.Module, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Rebuild the quantizers of a saved QAT model and give them the scales in ``state`` (no calibration)."""
    insert_quantizers(model, list(meta["float_layers"]))
    for key, value in state.items():
        if key.endswith("._amax"):
            model.get_submodule(key.removesuffix("._amax")).amax = value
