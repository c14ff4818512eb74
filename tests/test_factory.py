"""Any nn.Module as student or teacher (``model.factory`` + ``model.features``, distill/models/factory.py): the three
output forms become SegOutput with the hooked features, a factory student and teacher train, resume, evaluate and
export from their checkpoint, and each mistake ends in one message naming its config key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from segdistill.config import ModelConfig, load_config
from segdistill.errors import ConfigError
from segdistill.export import to_onnx
from segdistill.models import build_model
from segdistill.train import cli, main
from tests.helpers import TINY, run_python
from tests.test_export import save_student

B, K, SIZE = 2, 5, 32
FACTORY = "tests.factory_models:tiny_segnet"
FEATURES = {"c3": "backbone.layer3", "head": "decode_head.fuse"}


def factory_config(**kwargs) -> ModelConfig:
    return ModelConfig(factory=FACTORY, factory_kwargs={"num_classes": K, **kwargs}, features=FEATURES)


@pytest.mark.parametrize("output", ["dict", "tensor", "seg_output"])
def test_every_output_form_becomes_seg_output_with_the_hooked_features(output: str) -> None:
    torch.manual_seed(0)
    model = build_model(factory_config(output=output), K)
    images = torch.randn(B, 3, SIZE, SIZE)
    out = model(images)
    assert out.logits.shape == (B, K, SIZE // 8, SIZE // 8)
    assert (out.aux_logits is None) == (output == "tensor")
    assert out.features["c3"].shape == out.features["head"].shape == (B, 16, SIZE // 8, SIZE // 8)
    # the hooked c3 is layer3's output (for "seg_output" it replaces the model's own c3, taken after the gate)
    assert torch.equal(out.features["c3"], model.net.backbone(images))
    out.features["c3"].sum().backward()  # a loss on a hooked feature trains the modules before it
    assert model.net.backbone.stem[0].weight.grad.abs().sum() > 0
    assert not any(m._forward_hooks for m in model.net.modules())  # the hooks lived for that forward only


# the synthetic scenes have 9 classes; the teacher is wider (12 channels) and returns a bare logits tensor
STUDENT = f"model={{factory: '{FACTORY}', factory_kwargs: {{num_classes: 9}}, features: {{c3: backbone.layer3}}}}"
TEACHER = f"teacher.model={{factory: '{FACTORY}', factory_kwargs: {{num_classes: 9, width: 12, output: tensor}}, features: {FEATURES}}}"
LOSSES = "losses=[{name: cwd, student: c3, teacher: head}, {name: fitnet, student: c3, teacher: c3}]"


def train_args(run: Path) -> list[str]:
    return [*TINY, STUDENT, TEACHER, LOSSES, f"output_dir={run}"]


def test_factory_student_and_teacher_train_resume_evaluate_and_export(tmp_path: Path) -> None:
    run = tmp_path / "run"
    main(train_args(run))
    meta = json.loads((run / "final/model.json").read_text())
    assert meta["model"]["factory"] == FACTORY and meta["model"]["features"] == {"c3": "backbone.layer3"}
    assert meta["model"]["factory_kwargs"] == {"num_classes": 9}
    uninterrupted = load_file(run / "final/model.safetensors")

    main([*train_args(run), "--resume", str(run / "checkpoints/step_0000002")])
    resumed = load_file(run / "final/model.safetensors")
    assert uninterrupted.keys() == resumed.keys() and all(torch.equal(uninterrupted[k], resumed[k]) for k in resumed)

    # a fresh interpreter rebuilds the model from model.json alone (the factory's module is importable from
    # the repository root, the working directory of ``python -m``)
    evaluated = run_python(["-m", "segdistill.evaluate", "--checkpoint", str(run / "final"), "--workers", "0", "--no-energy"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert 0.0 <= json.loads((run / "final/eval_val/metrics.json").read_text())["miou"] <= 1.0

    out = tmp_path / "model.onnx"
    assert to_onnx.cli(["--checkpoint", str(run / "final"), "--dynamic", "batch,height,width", "--out", str(out)]) == 0
    assert json.loads(out.with_name("model.onnx.json").read_text())["parity"]["passed"]


def test_a_model_no_exporter_can_trace_ends_in_one_message(tmp_path: Path, capsys) -> None:
    """torch.export and then the TorchScript-based exporter both stop at an operator without an ONNX translation:
    one line naming the model and each exporter's reason, the file already there kept."""
    cfg = ModelConfig(factory="tests.factory_models:bessel_segnet", factory_kwargs={"num_classes": 9})
    checkpoint = save_student(tmp_path, "fcn", seed=0, cfg=cfg)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    assert to_onnx.cli(["--checkpoint", str(checkpoint), "--dynamic", "batch,height,width", "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    name = "model 'tests.factory_models:bessel_segnet'"
    assert line.startswith(f"error: torch.export cannot trace {name} with dynamic batch, height, width (")
    assert f"; the TorchScript-based exporter cannot trace {name} with dynamic batch, height, width (" in line
    assert "bessel_j0" in line
    assert line.endswith("is left as it was; export it static instead (without --dynamic, at the --shape you deploy)")
    assert out.read_bytes() == b"an earlier export"


def one_error_line(argv: list[str], capsys) -> str:
    assert cli(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.factory=no_such_package.models:build", "config key 'model.factory': module 'no_such_package.models' could not be imported (ModuleNotFoundError: No module named 'no_such_package'); it must be importable: on PYTHONPATH or installed"),
        ("teacher.model.factory=tests.factory_models:not_a_module", "config key 'teacher.model.factory': tests.factory_models:not_a_module returned dict; expected a torch.nn.Module"),
        ("model.factory=tests.factory_models:no_such_function", "config key 'model.factory': module 'tests.factory_models' has no function 'no_such_function'"),
        ("model.factory_kwargs.depth=3", "config key 'model.factory_kwargs': tests.factory_models:tiny_segnet could not be called"),
        ("model.features.c3=backbone.layer9", "config key 'model.features.c3': the model has no module 'backbone.layer9'. Did you mean 'backbone.layer3'"),
        ("teacher.model.features.head=decode_head.fuze", "config key 'teacher.model.features.head': the model has no module 'decode_head.fuze'. Did you mean 'decode_head.fuse'"),
        ("model.factory_kwargs.output=tuple", "config key 'model.factory': the model's forward returns tuple; expected a SegOutput"),
        ("model.factory_kwargs.num_classes=3", "config key 'model.factory': the model's logits must be a (B, 9, H, W) tensor"),
        ("model.features.c3=gate", "config key 'model.features.c3': module 'gate' returns a tensor of shape (2, 16); the losses read (B, C, H, W) maps"),
        ("model.features.c3=decode_head", "config key 'model.features.c3': module 'decode_head' did not run in the model's forward"),
        ("losses.1.student=c4", "loss 'fitnet' reads the student's tensor 'c4': this model provides no tensor 'c4'; it has: logits, aux_logits, c3"),
    ],
)  # fmt: skip
def test_each_mistake_is_one_message_naming_its_key(override: str, expected: str, tmp_path: Path, capsys) -> None:
    line = one_error_line([*train_args(tmp_path / "run"), override], capsys)
    assert expected in line, line
    assert not (tmp_path / "run/checkpoints").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.factory=tests.factory_models", "config key 'model.factory': expected 'package.module:function'"),
        ("model.features.logits=decode_head.classifier", "config key 'model.features.logits': 'logits' is the model's own output"),
        ("model.pretrained=hub", "config key 'model.pretrained': a factory model loads its own weights"),
        ("model.torchvision_model=fcn_resnet50", "give either 'factory' or 'torchvision_model'"),
    ],
)
def test_config_mistakes_stop_before_anything_is_built(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [STUDENT, override])
    assert expected in str(info.value)


def test_features_without_a_factory_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="config key 'model.features': recording module outputs needs a 'model.factory' model"):
        load_config(None, ["model.features.c3=backbone.layer3"])

