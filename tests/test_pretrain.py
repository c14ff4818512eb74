"""KDEP pre-training (docs/loss_math.md §6): the pooled pre-activation features, the SVD basis, power temperature
scaling and the loss against independent computations; the script on a folder of unlabelled PNGs (a
stored basis reused, never recomputed; resume); and the round trip: the pre-trained backbone loads as
``model.pretrained`` of a student in a segmentation config."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from segdistill.checkpoint import NonFiniteLoss, state_dirs
from segdistill.config import ModelConfig
from segdistill.data.base import DatasetError
from segdistill.errors import ConfigError
from segdistill.kdep import PooledFeature, fit_basis, kdep_loss, kdep_target, power_temperature_scaling
from segdistill.models import build_model
from segdistill.pretrain import load_pretrain_config
from segdistill.pretrain import main as pretrain
from segdistill.train import main as train
from tests.helpers import ROOT, TINY

TEACHER = "teacher={name: resnet10t, kwargs: {channels: [8, 16, 32, 48]}}"  # 48-d features
STUDENT_KWARGS = {"channels": [8, 8, 16, 16]}  # 16-d features
STUDENT = "student={name: resnet10t, kwargs: {channels: [8, 8, 16, 16]}}"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """24 small PNGs of random sizes, half of them in a sub-folder, and a file that is not an image."""
    root = tmp_path_factory.mktemp("unlabelled")
    (root / "nested").mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        pixels = (rng.random((20 + i % 7, 28 + i % 5, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / ("nested" if i % 2 else ".") / f"image{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def run(image_folder: Path, output: Path, *overrides: str) -> Path:
    return pretrain([f"data.root={image_folder}", "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
                     TEACHER, STUDENT, "iterations=4", "checkpoint_interval=2", "log_interval=1",
                     f"output_dir={output}", *overrides])  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# The pieces


def test_power_temperature_scaling_by_hand() -> None:
    # sign(x) (|x| / 0.1)^(1/3): 0.8 -> 8^(1/3) = 2; -0.0008 -> -(0.008)^(1/3) = -0.2; 0 -> 0
    x = torch.tensor([0.8, -0.0008, 0.0])
    torch.testing.assert_close(power_temperature_scaling(x, 0.1, 3.0), torch.tensor([2.0, -0.2, 0.0]))


def test_target_and_loss_match_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(3, 5, generator=g), torch.randn(3, 2, generator=g)
    mean, basis = torch.randn(5, generator=g), torch.randn(5, 2, generator=g)
    expected_target = np.empty((3, 2))
    for b in range(3):
        for j in range(2):
            v = sum((float(teacher[b, c]) - float(mean[c])) * float(basis[c, j]) for c in range(5))
            expected_target[b, j] = math.copysign(abs(v / 0.1) ** (1 / 3), v)
    target = kdep_target(teacher, mean, basis, 0.1, 3.0)
    np.testing.assert_allclose(target.numpy(), expected_target, rtol=1e-5)
    expected_loss = 20.0 * ((student.numpy() - expected_target) ** 2).mean()  # w * MSE mean over B x D_s
    assert float(kdep_loss(student, target, 20.0)) == pytest.approx(expected_loss, rel=1e-5)


def test_basis_is_the_leading_principal_directions() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1]) + rng.normal(size=6)
    x = x @ np.linalg.qr(rng.normal(size=(6, 6)))[0]  # rotate: directions not aligned with the axes
    mean, basis = fit_basis(torch.from_numpy(x), 3)
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-5)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x.T))
    leading = eigenvectors[:, ::-1][:, :3]  # columns, largest variance first
    overlap = np.abs(leading.T @ basis.numpy().astype(np.float64))
    np.testing.assert_allclose(overlap, np.eye(3), atol=1e-4)  # the same directions, up to sign


def test_basis_needs_enough_features() -> None:
    with pytest.raises(ConfigError, match=r"at least as many teacher features as the student has dimensions \(8\), got 5.*views_per_image"):
        fit_basis(torch.randn(5, 16), 8)
    with pytest.raises(ConfigError, match="more than the teacher's 16"):
        fit_basis(torch.randn(50, 16), 32)


@pytest.mark.parametrize(
    "name, kwargs, final_activation",
    [
        ("resnet10t", {"channels": [8, 8, 16, 16]}, lambda m: m.layer4[-1].act2),  # basic block: act2
        ("resnet26", {}, lambda m: m.layer4[-1].act3),  # bottleneck: act3
        ("mobilenetv2_050", {}, lambda m: m.bn2.act),  # head BatchNorm's ReLU6
    ],
)
def test_pooled_feature_is_taken_before_the_final_activation(name: str, kwargs: dict, final_activation) -> None:
    torch.manual_seed(0)
    reference = timm.create_model(name, num_classes=0, **kwargs).eval()
    with torch.no_grad():  # timm zero-initialises the last BatchNorm of residual blocks: randomise them all
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.normal_()
                module.bias.normal_()
    seen = {}
    # a pre-hook, and a copy: the activations work in place
    final_activation(reference).register_forward_pre_hook(lambda module, inputs: seen.update(x=inputs[0].clone()))
    feature = PooledFeature(name, kwargs=kwargs).eval()
    feature.model.load_state_dict(reference.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference(images)
        expected = seen["x"].mean(dim=(2, 3))  # what enters the final activation, globally pooled
        got = feature(images)
    torch.testing.assert_close(got, expected)
    assert got.shape[1] == feature.dim and bool((got < 0).any()), "a pre-activation feature has negative values"


def test_unsupported_family_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"backbone 'lcnet_050' is a timm MobileNetV3, which is not supported. Supported: timm ResNets"):
        PooledFeature("lcnet_050")


# ----------------------------------------------------------------------------------------------------
# The script


def test_pretrain_on_a_folder_and_load_into_a_segmentation_student(image_folder: Path, tmp_path: Path, capsys) -> None:
    weights = run(image_folder, tmp_path / "kdep")
    assert "SVD basis of 24 teacher features saved" in capsys.readouterr().out  # 24 images, the .txt skipped
    basis = load_file(tmp_path / "kdep/svd_basis.safetensors")
    assert basis["mean"].shape == (48,) and basis["basis"].shape == (48, 16)
    torch.testing.assert_close(basis["basis"].T @ basis["basis"], torch.eye(16), atol=1e-5, rtol=0)

    trained = load_file(weights)
    torch.manual_seed(0)
    initial = timm.create_model("resnet10t", num_classes=0, **STUDENT_KWARGS).state_dict()
    assert not any(k.startswith("fc.") for k in trained)
    assert any(not torch.equal(trained[k], initial[k]) for k in trained if k.endswith("conv.weight") or "conv1" in k)

    # the round trip: a segmentation student initialised from it (timm's features_only backbone)
    cfg = ModelConfig(backbone="resnet10t", backbone_kwargs=STUDENT_KWARGS, head="fcn", head_channels=8, pretrained=str(weights))
    backbone_state = build_model(cfg, 7).backbone.body.state_dict()
    for key in ("conv1.0.weight", "layer4.0.conv2.weight", "layer1.0.bn1.running_mean"):
        torch.testing.assert_close(backbone_state[key], trained[key], rtol=0, atol=0)
    result = train([*TINY, f"output_dir={tmp_path / 'seg'}", "train.iterations=2", "model.backbone=resnet10t",
                    "model.backbone_kwargs={channels: [8, 8, 16, 16]}", f"model.pretrained={weights}"])  # fmt: skip
    assert 0.0 <= result["miou"] <= 1.0


def test_a_stored_basis_is_reused_never_recomputed(image_folder: Path, tmp_path: Path, capsys) -> None:
    run(image_folder, tmp_path / "first")
    basis = tmp_path / "first/svd_basis.safetensors"
    before = basis.read_bytes()
    capsys.readouterr()
    # other views and another seed would give another basis if it were fitted again
    run(image_folder, tmp_path / "second", f"svd.basis={basis}", "seed=3", "svd.views_per_image=2")
    assert f"reusing the SVD basis {basis}" in capsys.readouterr().out
    assert basis.read_bytes() == before and not (tmp_path / "second/svd_basis.safetensors").exists()
    wrong_student = "student={name: resnet10t, kwargs: {channels: [8, 8, 16, 24]}}"
    with pytest.raises(ConfigError, match=r"needs mean \(48,\) and basis \(48, 24\)"):
        run(image_folder, tmp_path / "third", f"svd.basis={basis}", wrong_student)


def test_resume_gives_the_same_backbone(image_folder: Path, tmp_path: Path) -> None:
    uninterrupted = load_file(run(image_folder, tmp_path / "a"))
    run(image_folder, tmp_path / "b")
    # as if killed after the checkpoint of step 2: the later state and the outputs are gone
    shutil.rmtree(tmp_path / "b/checkpoints/step_0000004")
    (tmp_path / "b/student_backbone.safetensors").unlink()
    resumed = load_file(run(image_folder, tmp_path / "b", "--resume"))
    different = [k for k in uninterrupted if not torch.equal(uninterrupted[k], resumed[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    with pytest.raises(ConfigError, match="already holds training checkpoints.*pass --resume"):
        run(image_folder, tmp_path / "b")


def test_non_finite_loss_stops_and_keeps_last_checkpoint(image_folder: Path, tmp_path: Path) -> None:
    # as the segmentation trainer (tests/test_trainer.py): the same error, naming the checkpoint to resume from
    with pytest.raises(NonFiniteLoss, match=r"not finite at step \d+ \(kdep=.*optimizer\.lr.*last good checkpoint") as err:
        run(image_folder, tmp_path, "optimizer.lr=1e30", "checkpoint_interval=1")
    kept = state_dirs(tmp_path)
    assert kept, "the checkpoint written before the failure is gone"
    assert str(kept[-1][1]) in str(err.value)
    assert not (tmp_path / "student_backbone.safetensors").exists()


def test_synthetic_images_and_bad_folders(tmp_path: Path) -> None:
    common = ["data.image_size=32", "data.batch_size=4", "data.num_workers=0", TEACHER, STUDENT, "iterations=1"]
    assert pretrain([*common, "data.synthetic.num_train=20", f"output_dir={tmp_path / 'syn'}"]).is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"image folder '.*empty' holds no images"):
        pretrain([*common, f"data.root={tmp_path / 'empty'}", f"output_dir={tmp_path / 'x'}"])
    with pytest.raises(ConfigError, match="needs at least as many teacher features"):
        pretrain([*common, "data.synthetic.num_train=20", "svd.images=10", f"output_dir={tmp_path / 'y'}"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs/kdep").glob("*.yaml")), ids=lambda p: p.name)
def test_kdep_presets_load(path: Path) -> None:
    cfg = load_pretrain_config(path)
    assert cfg.loss_weight > 0 and cfg.teacher.name and cfg.student.name and cfg.lr_steps == pytest.approx([1 / 3, 2 / 3])
