"""Any ``nn.Module`` as student or teacher: ``model.factory: "package.module:function"`` builds it with
``model.factory_kwargs``, and :class:`FactoryModel` turns its output into a :class:`SegOutput`.

The model's forward may return a :class:`SegOutput`, a logits tensor (B, K, h, w), or a torchvision-style
dict (``out``, optional ``aux``). ``model.features`` names the modules whose outputs the losses may read
(``{c3: "backbone.layer3", head: "decode_head.fuse"}``): forward hooks record them during each forward, as
mmrazor's recorders do. The hooks live only for the duration of a forward, so a module swapped after building
(SyncBatchNorm conversion, a dropped auxiliary head) is still the one recorded. Every mistake (a factory that
does not import, returns the wrong type, a path that does not exist, an output the losses cannot read) is a
:class:`ConfigError` naming the config key; the trainer's dry-run forward meets it before training.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping

import torch
from torch import nn

from segdistill.errors import ConfigError
from segdistill.models.output import SegOutput

RESERVED_NAMES = ("logits", "aux_logits")  # the tensors a SegOutput names itself
ACCEPTED_OUTPUTS = "a SegOutput, a logits tensor (B, K, H, W) or a dict with 'out' (and optionally 'aux')"


def import_factory(spec: str, where: str) -> Callable[..., nn.Module]:
    """The function ``spec`` ("package.module:function") names."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"config key '{where}.factory': expected 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module: whatever it raises on import is the user's to fix
        raise ConfigError(
            f"config key '{where}.factory': module {module_name!r} could not be imported ({type(err).__name__}: {err}); "
            "it must be importable: on PYTHONPATH or installed"
        ) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigError(f"config key '{where}.factory': module {module_name!r} has no function {attribute!r}")
    return factory


def check_factory_config(cfg, where: str) -> None:
    """What can be checked without building the model: the factory imports, the feature names and paths are usable."""
    if cfg.torchvision_model is not None:
        raise ConfigError(f"config key '{where}.factory': give either 'factory' or 'torchvision_model', not both")
    if cfg.pretrained is not None:
        raise ConfigError(f"config key '{where}.pretrained': a factory model loads its own weights; pass them through '{where}.factory_kwargs'")
    import_factory(cfg.factory, where)
    for name, path in cfg.features.items():
        if name in RESERVED_NAMES:
            raise ConfigError(f"config key '{where}.features.{name}': {name!r} is the model's own output; choose another name")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"config key '{where}.features.{name}': expected a module path such as 'backbone.layer3', got {path!r}")


class FactoryModel(nn.Module):
    """The user's module (``net``) returning :class:`SegOutput`, with the outputs of the ``features`` modules."""

    def __init__(self, net: nn.Module, features: Mapping[str, str], num_classes: int, where: str) -> None:
        super().__init__()
        self.net, self.feature_paths, self.num_classes, self.where = net, dict(features), num_classes, where
        paths = [name for name, _ in net.named_modules() if name]
        for name, path in self.feature_paths.items():
            if path not in paths:
                close = difflib.get_close_matches(path, paths, n=3, cutoff=0.5)
                hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise ConfigError(f"config key '{where}.features.{name}': the model has no module {path!r}.{hint}")

    def forward(self, images: torch.Tensor) -> SegOutput:
        recorded: dict[str, object] = {}

        def recorder(name: str):
            def hook(module: nn.Module, args, output) -> None:
                recorded[name] = output  # a module that runs twice: its last output

            return hook

        handles = [self.net.get_submodule(path).register_forward_hook(recorder(name)) for name, path in self.feature_paths.items()]
        try:
            out = self.net(images)
        finally:
            for handle in handles:
                handle.remove()
        output = self.as_seg_output(out)
        for name, path in self.feature_paths.items():
            output.features[name] = self.feature_map(name, path, recorded)
        return output

    def as_seg_output(self, out: object) -> SegOutput:
        if isinstance(out, SegOutput):
            output = SegOutput(out.logits, out.aux_logits, dict(out.features))
        elif isinstance(out, torch.Tensor):
            output = SegOutput(out)
        elif isinstance(out, Mapping) and "out" in out:
            output = SegOutput(out["out"], out.get("aux"))
        else:
            raise ConfigError(f"config key '{self.where}.factory': the model's forward returns {type(out).__name__}; expected {ACCEPTED_OUTPUTS}")
        for name, tensor in (("logits", output.logits), ("aux_logits", output.aux_logits)):
            if tensor is None:
                continue
            if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4 or tensor.shape[1] != self.num_classes:
                shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ConfigError(
                    f"config key '{self.where}.factory': the model's {name} must be a (B, {self.num_classes}, H, W) tensor "
                    f"(the dataset has {self.num_classes} classes; pass the count through '{self.where}.factory_kwargs'), got {shape}"
                )
        return output

    def feature_map(self, name: str, path: str, recorded: dict[str, object]) -> torch.Tensor:
        key = f"config key '{self.where}.features.{name}'"
        if name not in recorded:
            raise ConfigError(f"{key}: module {path!r} did not run in the model's forward, so it has no output to record")
        value = recorded[name]
        if not isinstance(value, torch.Tensor) or value.dim() != 4:
            got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ConfigError(f"{key}: module {path!r} returns {got}; the losses read (B, C, H, W) maps, so name a module that returns one")
        return value


def build_factory_model(cfg, num_classes: int, where: str) -> FactoryModel:
    factory = import_factory(cfg.factory, where)
    try:
        net = factory(**cfg.factory_kwargs)
    except TypeError as err:  # arguments the function does not take, or lacks
        raise ConfigError(f"config key '{where}.factory_kwargs': {cfg.factory} could not be called with {cfg.factory_kwargs}: {err}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"config key '{where}.factory': {cfg.factory} returned {type(net).__name__}; expected a torch.nn.Module")
    return FactoryModel(net, cfg.features, num_classes, where)
