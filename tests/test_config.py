"""Configuration: YAML files, ``base:`` includes, ``key=value`` overrides, and the errors a user can cause."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segdistill.config import (
    Config,
    ConfigError,
    LossConfig,
    ModelConfig,
    TeacherConfig,
    load_config,
    save_config,
)

KD_LOSS = {"name": "pixel_kd", "weight": 1.0, "params": {"tau": 2.0}}


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


@pytest.fixture
def kd_yaml(tmp_path: Path) -> Path:
    """A small valid config with a teacher and one distillation loss."""
    return write_yaml(
        tmp_path / "kd.yaml",
        {
            "model": {"backbone": "lcnet_050", "head": "fcn", "head_channels": 16},
            "teacher": {"checkpoint": "runs/teacher/final"},
            "losses": [dict(KD_LOSS)],
        },
    )


# ----------------------------------------------------------------------------------------------------
# Reading and overriding


def test_defaults_without_a_file() -> None:
    cfg = load_config(None)
    assert cfg == Config()


def test_yaml_values_are_read(kd_yaml: Path) -> None:
    cfg = load_config(kd_yaml)
    assert cfg.model.backbone == "lcnet_050"
    assert cfg.model.head == "fcn"
    assert cfg.model.head_channels == 16
    assert cfg.teacher == TeacherConfig(checkpoint="runs/teacher/final")
    assert cfg.losses == [LossConfig(name="pixel_kd", weight=1.0, params={"tau": 2.0})]
    # untouched keys keep their defaults
    assert cfg.train.iterations == Config().train.iterations


def test_nested_override(kd_yaml: Path) -> None:
    cfg = load_config(
        kd_yaml, ["train.optimizer.momentum=0.5", "model.output_stride=16", "data.synthetic.seed=7"]
    )
    assert cfg.train.optimizer.momentum == 0.5
    assert cfg.model.output_stride == 16
    assert cfg.data.synthetic.seed == 7


def test_list_index_override(kd_yaml: Path) -> None:
    cfg = load_config(kd_yaml, ["losses.0.weight=2", "losses.0.params.tau=4"])
    assert cfg.losses[0].weight == 2.0
    assert isinstance(cfg.losses[0].weight, float)
    assert cfg.losses[0].params == {"tau": 4}


def test_list_index_out_of_range(kd_yaml: Path) -> None:
    with pytest.raises(ConfigError, match=r"losses\.3"):
        load_config(kd_yaml, ["losses.3.weight=2"])


def test_override_values_are_yaml() -> None:
    cfg = load_config(
        None, ["data.crop_size=[1, 2]", "train.optimizer.lr=1e-3", "train.grad_clip=null", "data.hflip=false"]
    )
    assert cfg.data.crop_size == (1, 2)
    assert isinstance(cfg.train.optimizer.lr, float)
    assert cfg.train.optimizer.lr == pytest.approx(1e-3)
    assert cfg.train.grad_clip is None
    assert cfg.data.hflip is False


def test_exponent_without_dot_is_a_float() -> None:
    # YAML 1.1 reads "5e-4" as a string; the override must still give a float
    cfg = load_config(None, ["train.optimizer.weight_decay=5e-4"])
    assert cfg.train.optimizer.weight_decay == pytest.approx(5e-4)
    assert isinstance(cfg.train.optimizer.weight_decay, float)


def test_override_below_a_scalar(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "seed.yaml", {"seed": 3})
    with pytest.raises(ConfigError, match="seed"):
        load_config(path, ["seed.x=1"])


def test_override_without_equals_sign() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.iterations"])


def test_base_include_merges(tmp_path: Path) -> None:
    (tmp_path / "presets").mkdir()
    write_yaml(
        tmp_path / "presets" / "base.yaml",
        {
            "output_dir": "runs/base",
            "model": {"backbone": "resnet18", "head": "psp", "head_channels": 32},
            "train": {"iterations": 50, "optimizer": {"lr": 0.1, "momentum": 0.8}},
        },
    )
    child = write_yaml(
        tmp_path / "child.yaml",
        {"base": "presets/base.yaml", "model": {"head": "aspp"}, "train": {"optimizer": {"lr": 0.05}}},
    )
    cfg = load_config(child)
    assert cfg.output_dir == "runs/base"  # from the base
    assert cfg.model.backbone == "resnet18"  # from the base, beside an overridden sibling
    assert cfg.model.head == "aspp"  # from the child
    assert cfg.model.head_channels == 32
    assert cfg.train.iterations == 50
    assert cfg.train.optimizer.lr == 0.05
    assert cfg.train.optimizer.momentum == 0.8  # deep merge keeps the base's sibling
    # and overrides apply on top of both
    assert load_config(child, ["model.head=fcn"]).model.head == "fcn"


def test_base_list_is_replaced_whole(tmp_path: Path) -> None:
    teacher = {"checkpoint": "runs/teacher/final"}
    write_yaml(tmp_path / "base.yaml", {"teacher": teacher, "losses": [{"name": "pixel_kd"}, {"name": "cwd"}]})
    child = write_yaml(tmp_path / "child.yaml", {"base": "base.yaml", "losses": [{"name": "dist", "weight": 2.0}]})
    assert [(loss.name, loss.weight) for loss in load_config(child).losses] == [("dist", 2.0)]


def test_base_include_of_itself(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "loop.yaml", {"base": "loop.yaml"})
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_save_then_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "model.backbone=lcnet_050",
            "model.output_stride=16",
            "data.crop_size=[64, 48]",
            "train.optimizer.name=adamw",
            "train.grad_clip=1.5",
            "eval.mode=slide",
            "eval.crop_size=[32, 32]",
            "eval.scales=[0.5, 1.0, 1.5]",
            "teacher.model.backbone=resnet18",
            "teacher.model.head=psp",
        ],
    )
    cfg.losses = [LossConfig(name="pixel_kd", weight=0.5, params={"tau": 4.0, "normalization": "batch_sum"})]
    path = tmp_path / "saved.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert again.teacher.model == ModelConfig(backbone="resnet18", head="psp")
    assert again.data.crop_size == (64, 48)


# ----------------------------------------------------------------------------------------------------
# Errors


def error_of(overrides: list[str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_unknown_key_suggests_close_match() -> None:
    message = error_of(["train.iteratons=5"])
    assert "'train.iteratons'" in message
    assert "Did you mean 'train.iterations'?" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "typo.yaml", {"modle": {"backbone": "resnet18"}})
    message = error_of([], path)
    assert "'modle'" in message
    assert "'model'" in message


def test_wrong_type_int() -> None:
    message = error_of(["train.iterations=abc"])
    assert "train.iterations" in message
    assert "int" in message
    assert "abc" in message


def test_bool_is_not_an_int() -> None:
    assert "train.iterations" in error_of(["train.iterations=true"])


def test_wrong_tuple_length() -> None:
    message = error_of(["data.crop_size=[1]"])
    assert "data.crop_size" in message
    assert "2" in message


def test_wrong_type_inside_a_list() -> None:
    assert "eval.scales[1]" in error_of(["eval.scales=[1.0, big]"])


def test_unknown_dataset_name() -> None:
    message = error_of(["data.name=camvd"])
    assert "'camvd'" in message
    assert "data.name" in message
    assert "'camvid'" in message  # the suggestion
    assert "synthetic" in message  # the valid choices


def test_unknown_head() -> None:
    message = error_of(["model.head=asp"])
    assert "'asp'" in message
    assert "model.head" in message
    assert "aspp" in message and "psp" in message and "fcn" in message


def test_unknown_timm_backbone() -> None:
    message = error_of(["model.backbone=resnet181"])
    assert "'resnet181'" in message
    assert "model.backbone" in message
    assert "timm.list_models" in message
    assert "'resnet18'" in message  # close match


def test_unknown_torchvision_backbone() -> None:
    message = error_of(["model.backbone=torchvision:resnet5"])
    assert "torchvision:resnet50" in message


def test_torchvision_basic_block_cannot_dilate() -> None:
    message = error_of(["model.backbone=torchvision:resnet18", "model.output_stride=8"])
    assert "BasicBlock" in message
    load_config(None, ["model.backbone=torchvision:resnet18", "model.output_stride=32"])  # allowed


def test_unknown_loss_name(kd_yaml: Path) -> None:
    message = error_of(["losses.0.name=pixel_dk"], kd_yaml)
    assert "'pixel_dk'" in message
    assert "losses[0].name" in message
    assert "pixel_kd" in message


def test_unknown_loss_param(kd_yaml: Path) -> None:
    message = error_of(["losses.0.params.temperature=2"], kd_yaml)
    assert "losses[0].params.temperature" in message
    assert "tau" in message


def test_wrong_loss_param_value(kd_yaml: Path) -> None:
    message = error_of(["losses.0.params.normalization=sum"], kd_yaml)
    assert "losses[0].params.normalization" in message
    assert "pixel_mean" in message


def test_missing_pretrained_file(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_weights.safetensors"
    message = error_of([f"model.pretrained={missing}"])
    assert "model.pretrained" in message
    assert "no_such_weights.safetensors" in message


def test_loss_needs_a_teacher(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "no_teacher.yaml", {"losses": [dict(KD_LOSS)]})
    message = error_of([], path)
    assert "losses[0]" in message
    assert "pixel_kd" in message
    assert "teacher" in message


def test_teacher_needs_exactly_one_source() -> None:
    assert "teacher" in error_of(["teacher.weights=w.safetensors"])


def test_literal_field() -> None:
    message = error_of(["train.mixed_precision=fp8"])
    assert "train.mixed_precision" in message
    assert "'bf16'" in message and "'fp16'" in message
    assert load_config(None, ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"


def test_literal_int_field() -> None:
    message = error_of(["model.output_stride=4"])
    assert "model.output_stride" in message
    assert "8" in message and "16" in message


def test_unknown_torchvision_segmentation_model() -> None:
    message = error_of(["model.torchvision_model=fcn_resnet5"])
    assert "model.torchvision_model" in message
    assert "fcn_resnet50" in message
