"""The training script end to end on tiny synthetic runs: outputs, distillation, resume after a kill,
and the bad inputs a user can cause (each with a clear message and no checkpoint lost)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from segdistill.atomic_files import current_umask
from segdistill.checkpoint import CheckpointError, NonFiniteLoss, load_model, save_model, state_dirs
from segdistill.config import ModelConfig
from segdistill.data import DatasetInfo
from segdistill.data.synthetic import CLASSES
from segdistill.errors import ConfigError
from segdistill.evaluate import main as evaluate
from segdistill.train import main
from tests.helpers import TINY, kill_training_after, run_python


def test_supervised_run_writes_every_output(tiny_teacher: Path) -> None:
    run = tiny_teacher.parent
    for name in ("config.yaml", "metrics.json", "final/model.safetensors", "final/model.json", "best/model.json"):
        assert (run / name).is_file(), name
    assert [step for step, _ in state_dirs(run)] == [2, 4]
    assert list((run / "tensorboard").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    # Every file is as readable as the umask allows (a container's other user reads a mounted final/).
    expected = 0o666 & ~current_umask()
    written = [p for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts]
    assert {str(p.relative_to(run)): p.stat().st_mode & 0o777 for p in written} == {str(p.relative_to(run)): expected for p in written}
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and [h["step"] for h in metrics["history"]] == [2, 4]
    meta = json.loads((run / "final/model.json").read_text())
    assert meta["num_classes"] == len(CLASSES) and meta["classes"][0] == "sky" and len(meta["palette"]) == len(CLASSES)
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["model"]["backbone"] == "lcnet_050"
    # The saved model alone reproduces the reported validation mIoU.
    result = evaluate(["--checkpoint", str(tiny_teacher), "--workers", "0", "--overlays", "2", "--output", str(run / "eval")])
    assert result["miou"] == pytest.approx(metrics["miou"], abs=1e-9)
    assert (run / "eval/iou.png").is_file() and len(list((run / "eval/overlays").glob("*.png"))) == 2


def test_distillation_trains_student_with_frozen_teacher(tiny_teacher: Path, tmp_path: Path) -> None:
    teacher_before = load_file(tiny_teacher / "model.safetensors")
    result = main([*TINY, f"output_dir={tmp_path}", f"teacher.checkpoint={tiny_teacher}", "losses=[{name: pixel_kd, weight: 1.0, params: {tau: 2.0}}]"])
    assert 0.0 <= result["miou"] <= 1.0
    teacher_after = load_file(tiny_teacher / "model.safetensors")
    assert all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before)
    meta = json.loads((tmp_path / "final/model.json").read_text())
    assert meta["losses"] == ["pixel_kd"] and meta["teacher"]["checkpoint"] == str(tiny_teacher)


def test_resume_after_kill_gives_the_same_weights(tmp_path: Path) -> None:
    """Kill a run with SIGKILL after its first checkpoint; resuming it ends with the weights of an
    uninterrupted run, bit for bit (CPU, deterministic settings, same thread count), even when the
    resumed run uses loader workers."""
    args = [*TINY, "train.iterations=12", "train.checkpoint_interval=3", "train.eval_interval=6", "model.dropout=0.3"]
    reference = tmp_path / "reference"
    done = run_python(["-m", "segdistill.train", *args, f"output_dir={reference}"])
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    kill_training_after(args, killed)

    resumed = run_python(["-m", "segdistill.train", *args, f"output_dir={killed}", "data.num_workers=2", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    a = load_file(reference / "final/model.safetensors")
    b = load_file(killed / "final/model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_existing_run_is_not_overwritten_without_resume(tiny_teacher: Path) -> None:
    run = tiny_teacher.parent
    before = (run / "checkpoints/step_0000004/model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already holds training checkpoints.*--resume"):
        main([*TINY, f"output_dir={run}"])
    assert (run / "checkpoints/step_0000004/model.safetensors").read_bytes() == before


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLoss, match=r"not finite at step \d+.*last good checkpoint") as err:
        main([*TINY, f"output_dir={tmp_path}", "train.optimizer.lr=1e30", "train.checkpoint_interval=1", "train.iterations=20"])
    kept = state_dirs(tmp_path)
    assert kept, "the checkpoint written before the failure is gone"
    assert str(kept[-1][1]) in str(err.value)
    assert not (tmp_path / "final").exists()


def test_teacher_with_other_class_count_is_refused(tmp_path: Path) -> None:
    from segdistill.models import build_model

    cfg = ModelConfig(backbone="lcnet_050", head="fcn", head_channels=16)
    info = DatasetInfo("other", tuple(f"c{i}" for i in range(5)), tuple((i, i, i) for i in range(5)), 255)
    save_model(build_model(cfg, 5), tmp_path / "teacher", cfg, info, {"data": {"name": "synthetic"}})
    with pytest.raises(CheckpointError, match=f"predicts 5 classes.*has {len(CLASSES)}"):
        main([*TINY, f"output_dir={tmp_path / 'run'}", f"teacher.checkpoint={tmp_path / 'teacher'}", "losses=[{name: pixel_kd}]"])


def test_teacher_weights_that_do_not_fit_are_refused(tiny_teacher: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not match the model"):
        main([
            *TINY, f"output_dir={tmp_path}", "losses=[{name: pixel_kd}]",
            "teacher.model={backbone: resnet18, head: aspp, head_channels: 16}",
            f"teacher.weights={tiny_teacher / 'model.safetensors'}",
        ])  # fmt: skip


def test_script_reports_config_errors_in_one_line() -> None:
    done = run_python(["distill/train.py", "train.iteratons=3"])
    assert done.returncode == 2
    assert "error: unknown config key 'train.iteratons'. Did you mean 'train.iterations'?" in done.stderr
    assert "Traceback" not in done.stderr


def test_gradient_accumulation_consumes_that_many_batches(tmp_path: Path) -> None:
    main([*TINY, f"output_dir={tmp_path}", "train.grad_accum=2", "train.iterations=3", "train.record_samples=true"])
    lines = (tmp_path / "samples_rank0.txt").read_text().splitlines()
    assert len(lines) == 6
    epoch0 = [int(i) for line in lines[:4] for i in line.split()[2:]]
    assert sorted(epoch0) == list(range(16)), "one epoch must visit each of the 16 samples once"


def test_bf16_mixed_precision_runs(tmp_path: Path) -> None:
    done = run_python(["-m", "segdistill.train", *TINY, f"output_dir={tmp_path}", "train.mixed_precision=bf16", "train.iterations=2"])
    assert done.returncode == 0, done.stderr[-2000:]
    model, _ = load_model(tmp_path / "final")
    assert all(p.dtype == torch.float32 for p in model.parameters())
