"""Experiment configuration: YAML files plus ``key=value`` overrides, validated against dataclasses.

Every key is checked: an unknown key, a value of the wrong type, or an unknown dataset / model / loss
name raises :class:`ConfigError` naming the key and listing the valid choices. A file may start from
another one with ``base: other.yaml`` (a path relative to the file); its keys are merged on top: mappings
key by key, while a list (``losses:``) replaces the base's list whole, as in OmegaConf and mmengine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from segdistill.atomic_files import atomic_write_text
from segdistill.errors import ConfigError
from segdistill.parsing import parse_dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SyntheticConfig:
    """The built-in procedural scenes (see distill/data/synthetic.py)."""

    num_train: int = 512
    num_val: int = 96
    size: tuple[int, int] = (96, 96)
    seed: int = 0
    # Probability that an object of a training scene is labelled as another object class.
    label_noise: float = 0.0


@dataclass
class DataConfig:
    name: str = "synthetic"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    # Rescale whole images and labels on load (e.g. 0.5 for half-resolution CPU-scale runs).
    # Evaluation then also happens at that resolution.
    resize: float = 1.0
    crop_size: tuple[int, int] = (96, 96)
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    batch_size: int = 8
    val_batch_size: int = 1
    num_workers: int = 2
    # Only for the "folder" dataset: class names (index = label value) and the ignored label.
    classes: list[str] | None = None
    ignore_index: int = 255
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"
    head: str = "aspp"
    # null: 8 where the backbone can dilate, else its native 32; 8 or 16 on a model that cannot dilate is an error.
    output_stride: Literal[8, 16, 32] | None = None
    # None: random init; "hub": ImageNet weights from timm or torchvision (downloads); else a local file.
    pretrained: str | None = None
    # Extra keyword arguments for timm.create_model, e.g. {channels: [32, 64, 128, 256]} for a thin ResNet.
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    head_channels: int = 256
    # Extra keyword arguments for the head, e.g. {align_corners: true} for PSPNet weights trained so (CIRKD).
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    aux_head: bool = True
    dropout: float = 0.1
    # A complete torchvision segmentation model instead of backbone + head (e.g. "deeplabv3_resnet50").
    torchvision_model: str | None = None
    # Any nn.Module instead of backbone + head: "package.module:function", called with factory_kwargs; its
    # module must be importable (on PYTHONPATH or installed). See docs/models.md.
    factory: str | None = None
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    # Tensors of a factory model the losses can bind to: name -> module path, recorded by forward hooks
    # (e.g. {c3: "backbone.layer3", head: "decode_head.fuse"}).
    features: dict[str, str] = field(default_factory=dict)
    # Start from the weights of one of our model checkpoints of the same architecture (e.g. RUN/final);
    # `pretrained` is then not loaded.
    init_from: str | None = None


@dataclass
class TeacherConfig:
    # One of: a checkpoint of ours (model.safetensors beside its model.json), or model + weights.
    checkpoint: str | None = None
    model: ModelConfig | None = None
    weights: str | None = None
    # The input normalisation the teacher was trained with, when it differs from data.mean / data.std
    # (e.g. EfficientNet-Lite teachers use 0.5 / 0.5). None: from the checkpoint's model.json, else the
    # data's. The teacher's input is re-normalised accordingly; the student keeps data.mean / data.std.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


@dataclass
class LossConfig:
    name: str = "pixel_kd"
    weight: float = 1.0
    # Named tensors of SegOutput the loss reads ("logits", "aux_logits", "c1".."c4", "head").
    # None: the loss's own default binding.
    student: str | None = None
    teacher: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    # The loss's typed Params, parsed from `params` once, when the config is validated (losses/criterion.py
    # loss_params); not a key of the file.
    parsed_params: Any = field(default=None, init=False, repr=False, compare=False)


@dataclass
class OptimizerConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    # Multiplier of the learning rate for the head and the loss modules (backbone keeps lr).
    head_lr_mult: float = 1.0


@dataclass
class ScheduleConfig:
    name: Literal["poly", "constant"] = "poly"
    power: float = 0.9
    warmup_iters: int = 0
    min_lr: float = 0.0


@dataclass
class DiscriminatorConfig:
    """The discriminator step of adversarial losses (docs/loss_math.md §7.3), after each student step.

    Default: Adam(4e-4, betas (0.9, 0.99)), constant rate, as TorchDistiller, IFVD and CIRKD; SKD's
    official script uses SGD 4e-4 (momentum 0.9, wd 5e-4) with the poly schedule."""

    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(name="adam", lr=4e-4, betas=(0.9, 0.99), weight_decay=0.0)
    )
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="constant"))


@dataclass
class EnergyConfig:
    """Energy (kWh) and emissions (kg CO2) of training and of the final evaluation, measured by codecarbon
    offline (no network). Figures are estimates where the machine exposes no RAPL / NVML power counters."""

    # None: on when codecarbon is installed (pip install 'segdistill[sweep]'), off otherwise.
    enabled: bool | None = None
    # ISO 3166-1 alpha-3 code of the country whose electricity mix turns kWh into kg CO2.
    country_iso_code: str = "USA"
    # "process": this process's share of the CPU (and its RAM); "machine": the whole machine.
    tracking_mode: Literal["process", "machine"] = "process"
    measure_power_secs: float = 15.0


@dataclass
class TrainConfig:
    iterations: int = 200
    grad_accum: int = 1
    grad_clip: float | None = None
    aux_weight: float = 0.4
    # Per-class weights of the cross-entropy: one per class, or "median_frequency" computed from the training
    # labels at start (distill/class_weight.py); null: unweighted. Distillation terms are not weighted.
    class_weight: list[float] | Literal["median_frequency"] | None = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    sync_bn: bool = True
    eval_interval: int = 100
    checkpoint_interval: int = 100
    keep_checkpoints: int = 2
    log_interval: int = 10
    deterministic: bool = True
    # Loss kernels: "auto" runs the fused Triton kernels on CUDA tensors; "reference" forces the plain
    # PyTorch versions everywhere; "triton" forces the kernels, on CPU under TRITON_INTERPRET=1 (docs/kernels.md).
    kernels: Literal["auto", "reference", "triton"] = "auto"
    # Write the dataset indices each process consumes to samples_rank{R}.txt (data-order audit).
    record_samples: bool = False
    energy: EnergyConfig = field(default_factory=EnergyConfig)


@dataclass
class EvalConfig:
    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False


@dataclass
class QuantizationConfig:
    """Quantization-aware training (distill/quantization.py): INT8 fake quantization for TensorRT, calibrated
    on the first ``calibration_images`` training images before the first step; needs ``model.init_from``."""

    calibration_images: int = 64
    # Layers (module names, glob patterns) kept in float besides the first convolution, the classifiers
    # and the depthwise convolutions.
    keep_float: list[str] = field(default_factory=list)


@dataclass
class Config:
    output_dir: str = "runs/experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig | None = None
    losses: list[LossConfig] = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # null: FP32 training; a mapping (even {}): quantization-aware training.
    quantization: QuantizationConfig | None = None


def parse_config(values: dict) -> Config:
    """Build a validated :class:`Config` from a plain mapping (as read from YAML)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of keys, got {type(values).__name__}")
    cfg = parse_dataclass(Config, values, "")
    validate_names(cfg)
    return cfg


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {str(path)!r} includes itself through 'base'")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must contain a mapping of keys")
    base = values.pop("base", None)
    if base is None:
        return values
    return _merge(_read_yaml(path.parent / base, seen + (path.resolve(),)), values)


def _merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "params":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_override(values: dict, override: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (``lr=1e-3``, ``[1, 2]``)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key=value (for example train.iterations=100)")
    dotted, raw = override.split("=", 1)
    parts = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)  # YAML 1.1 reads "1e-3" as a string
    node: Any = values
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(part, node, parts[: depth + 1])]
        else:
            if node.get(part) is None:
                if parts[depth + 1].isdigit():
                    raise ConfigError(f"override key {'.'.join(parts)!r}: there is no list {'.'.join(parts[: depth + 1])!r} to index")
                node[part] = {}
            node = node[part]
        if not isinstance(node, dict | list):
            # e.g. "seed.x=1" where seed is a number: a ConfigError, not a TypeError from item assignment
            raise ConfigError(f"override key {'.'.join(parts)!r}: {'.'.join(parts[: depth + 1])!r} is not a mapping or a list")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(last, node, parts)] = value
    else:
        node[last] = value


def _list_index(part: str, node: list, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override key {'.'.join(parts)!r}: expected a list index below {len(node)}")
    return int(part)


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text.lower() for c in ".e") and text.lower() not in ("nan", "inf", "-inf")


def read_values(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """The plain mapping of a YAML file (with its ``base`` chain; {} when ``path`` is None) plus overrides."""
    values = _read_yaml(Path(path)) if path is not None else {}
    for override in overrides:
        apply_override(values, override)
    return values


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML file (or start from defaults when ``path`` is None) and apply overrides."""
    return parse_config(read_values(path, overrides))


def config_to_dict(cfg: Any) -> Any:
    """Plain data (lists instead of tuples) for YAML / JSON."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}
    if isinstance(cfg, list | tuple):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def validate_names(cfg: Config) -> None:
    """Check every registered name (dataset, backbone, head, loss) and the loss parameters."""
    from segdistill.data import DATASETS
    from segdistill.losses import LOSSES, loss_params
    from segdistill.models import check_model_config

    DATASETS.get(cfg.data.name, "data.name")
    check_model_config(cfg.model, "model")
    if cfg.teacher is not None:
        teacher = cfg.teacher
        if (teacher.checkpoint is None) == (teacher.model is None):
            raise ConfigError("config key 'teacher': give either 'checkpoint' (a model of ours) or 'model' (+ 'weights')")
        if teacher.model is not None:
            check_model_config(teacher.model, "teacher.model")
    for i, loss in enumerate(cfg.losses):
        where = f"losses[{i}]"
        LOSSES.get(loss.name, f"{where}.name")
        loss_params(loss, where)
        if LOSSES.get(loss.name).needs_teacher and cfg.teacher is None:
            raise ConfigError(f"{where}: loss {loss.name!r} distils from a teacher, but the config has no 'teacher'")
    if cfg.quantization is not None and cfg.model.init_from is None:
        raise ConfigError(
            "config key 'quantization': quantization-aware training starts from a trained FP32 model; "
            "set model.init_from to its checkpoint (e.g. model.init_from=RUN/final)"
        )
    if cfg.data.name == "folder" and not cfg.data.classes:
        raise ConfigError("config key 'data.classes': the folder dataset needs the list of class names")
