"""Train a segmentation model, supervised or distilled from a frozen teacher.

    accelerate launch distill/train.py --config configs/demo/student_kd.yaml [key=value ...] [--resume]

The same script runs on one CPU, one GPU, several GPUs or machines (Accelerate / DDP). Read it top to
bottom: build data, models and losses; prepare with Accelerate; then the loop (forward, backward,
step, log, validate, checkpoint). A run killed at any moment and started again with ``--resume``
continues from its last checkpoint and ends with the weights an uninterrupted run would have.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from torch import nn
from tqdm import tqdm

from segdistill import kernels
from segdistill.atomic_files import atomic_write_text
from segdistill.checkpoint import (
    init_from_checkpoint,
    resume_state,
    resume_target,
    save_model,
    save_training_state,
    stop_if_not_finite,
)
from segdistill.class_weight import class_weight
from segdistill.config import Config, config_to_dict, load_config, save_config
from segdistill.data import build_dataset
from segdistill.data.loader import DataPosition, eval_loader, train_loader
from segdistill.energy import start_meter
from segdistill.errors import ConfigError, command
from segdistill.evaluation import confusion_matrix
from segdistill.losses import Criterion, LossContext, TaskLoss, build_criterion
from segdistill.metrics import SegMetrics
from segdistill.models import SegOutput, build_model, count_parameters
from segdistill.optim import build_optimizer, learning_rate, set_learning_rate
from segdistill.processes import die_with_launcher
from segdistill.quantization import float_layers, quantization_meta, quantize_student
from segdistill.run_lock import run_folder_lock
from segdistill.teacher import build_teacher
from segdistill.unreached import freeze_unreached

DIVERGED = "Lower the learning rate or enable gradient clipping (train.grad_clip)"  # what to change when the loss is not finite


class Objective(nn.Module):
    """The trained model and the loss modules that learn with it (adapters, projections), as one
    module so that DDP synchronises all their gradients."""

    def __init__(self, student: nn.Module, criterion: Criterion) -> None:
        super().__init__()
        self.student, self.criterion = student, criterion

    def forward(
        self, images: torch.Tensor, context: LossContext, teacher_out: SegOutput | None
    ) -> tuple[dict[str, torch.Tensor], SegOutput]:
        """The named loss parts and the student's output (which a discriminator step reads)."""
        student_out = self.student(images)
        return self.criterion(student_out, teacher_out, context), student_out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML experiment file (defaults apply without one)")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="PATH", help="continue from the latest (or the given) checkpoint")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.iterations=100")
    args = parser.parse_intermixed_args(argv)
    if args.resume is not None and "=" in args.resume and not Path(args.resume).exists():
        # ``--resume key=value``: an override after a bare --resume, not a checkpoint path
        args.overrides.append(args.resume)
        args.resume = "latest"
    return args


def dry_run(student: nn.Module, teacher: nn.Module | None, images: torch.Tensor) -> tuple[SegOutput, SegOutput | None]:
    """One forward of both models in eval mode, for the shapes the losses are built from."""
    student.eval()
    with torch.no_grad():
        s_out = student(images)
        t_out = teacher(images) if teacher is not None else None
    student.train()
    if t_out is not None and t_out.logits.shape[1] != s_out.logits.shape[1]:
        raise ConfigError(
            f"the teacher predicts {t_out.logits.shape[1]} classes but the student {s_out.logits.shape[1]}; "
            "they must be trained on the same label set"
        )
    return s_out, t_out


def discriminator_backward(
    accelerator: Accelerator, adversary: nn.Module, outputs: list[tuple[SegOutput, SegOutput]]
) -> dict[str, torch.Tensor]:
    """Gradients of the discriminators' losses over a step's micro-batches; their mean values by name."""
    sums: dict[str, torch.Tensor] = {}
    for i, (student_out, teacher_out) in enumerate(outputs):
        with nullcontext() if i == len(outputs) - 1 else accelerator.no_sync(adversary):
            parts = adversary(student_out, teacher_out)
            accelerator.backward(sum(parts.values()) / len(outputs))
        for name, value in parts.items():
            sums[name] = sums.get(name, 0) + value.detach() / len(outputs)
    return sums


def evaluate(accelerator: Accelerator, model: nn.Module, loader, info, cfg: Config) -> SegMetrics:
    matrix = confusion_matrix(model, loader, info.num_classes, info.ignore_index, cfg.eval, accelerator.device)
    matrix.counts = accelerator.reduce(matrix.counts, reduction="sum")
    return matrix.result()


def flat_hparams(cfg: Config) -> dict[str, float | int | str | bool]:
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        else:
            flat[prefix] = value if isinstance(value, int | float | str | bool) else str(value)

    walk("", config_to_dict(cfg))
    return flat


def main(argv: list[str] | None = None) -> dict:
    die_with_launcher()
    with ExitStack() as held:  # the run folder's lock, released when training ends, however it ends
        return train(parse_args(argv), held)


def train(args: argparse.Namespace, held: ExitStack) -> dict:
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(cfg.output_dir)
    # cpu=True on machines without an accelerator: only then does Accelerate run several processes
    # (``accelerate launch --multi_gpu --num_processes N``) as one gloo group instead of N lone runs.
    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available(),
        mixed_precision=cfg.train.mixed_precision,
        log_with="tensorboard",
        project_dir=str(run_dir),
    )
    main_process = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    if cfg.train.kernels == "triton" and (why := kernels.triton_unavailable_reason(accelerator.device.type == "cuda")):
        raise ConfigError(f"config key 'train.kernels': 'triton' cannot run on device {accelerator.device}: {why}")
    kernels.use_backend(cfg.train.kernels)
    set_seed(cfg.seed)

    # First the lock: no process writes in the run folder, nor reads its checkpoints, while another run may
    # be writing them.
    if main_process:
        held.enter_context(run_folder_lock(run_dir))
    accelerator.wait_for_everyone()
    resume_dir = resume_target(run_dir, args.resume, world)
    # Energy of the training (setup included; all processes' when there are several), then of the final evaluation.
    meter = start_meter(cfg.train.energy, whole_machine=world > 1) if main_process else None

    # ---- data, models, losses -------------------------------------------------------------------
    train_set, val_set = build_dataset(cfg.data, cfg.data.train_split), build_dataset(cfg.data, cfg.data.val_split)
    info = train_set.info
    weights = class_weight(cfg.train.class_weight, train_set, info)
    if weights is not None and main_process:
        named = ", ".join(f"{c} {w:.3f}" for c, w in zip(info.classes, weights.tolist(), strict=True))
        print(f"class weights of the cross-entropy: {named}")
    if cfg.model.init_from is None:
        student = build_model(cfg.model, info.num_classes)
    else:  # every weight comes from the checkpoint: no ImageNet initialisation to load first
        student = build_model(dataclasses.replace(cfg.model, pretrained=None), info.num_classes)
        init_from_checkpoint(student, cfg.model.init_from)
    teacher = build_teacher(cfg.teacher, info, cfg.data).to(accelerator.device) if cfg.teacher is not None else None
    sync_bn = world > 1 and cfg.train.sync_bn and accelerator.distributed_type == DistributedType.MULTI_GPU
    if sync_bn:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    elif world > 1 and cfg.train.sync_bn and main_process:
        print("note: SyncBatchNorm needs GPUs; on CPU processes each normalise over their own batch")
    student.to(accelerator.device)
    probe_images = torch.stack([val_set[0][0]] * 2).float().to(accelerator.device) / 255
    quantization = None  # what model.json records of a quantization-aware run
    if cfg.quantization is not None:
        # Before the first step (and again, identically, before a resume loads the trained scales)
        keep = float_layers(student, probe_images, info.num_classes, cfg.quantization.keep_float)
        count = min(cfg.quantization.calibration_images, len(train_set))
        calibration = [train_set[i][0][None].float().to(accelerator.device) / 255 for i in range(count)]
        quantize_student(student, keep, calibration)
        quantization = {**quantization_meta(keep), "calibration_images": count}
    s_out, t_out = dry_run(student, teacher, probe_images)
    criterion = build_criterion(cfg.losses, TaskLoss(info.ignore_index, cfg.train.aux_weight, weights), s_out, t_out).to(accelerator.device)
    if sync_bn:  # loss modules with BatchNorm (adapters, projection heads) normalise over all processes too
        criterion = nn.SyncBatchNorm.convert_sync_batchnorm(criterion)
    objective = Objective(student, criterion)
    probe_context = LossContext(torch.stack([val_set[0][1]] * 2).long().to(accelerator.device), info.ignore_index, info.num_classes)
    note = freeze_unreached(objective, probe_images, probe_context, t_out)
    if note and main_process:
        print(note)
    head_modules = [m for name, m in student.named_children() if name != "backbone"] + [criterion]
    backbone = getattr(student, "backbone", nn.Identity())
    optimizer = build_optimizer(backbone, head_modules, cfg.train.optimizer)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    # Adversarial losses: their discriminators, trained by a step of their own after the student's.
    adversary = criterion.adversary()
    if adversary is not None:
        d_optimizer = build_optimizer(adversary, [], cfg.train.discriminator.optimizer)
        adversary, d_optimizer = accelerator.prepare(adversary, d_optimizer)

    # ---- resume ---------------------------------------------------------------------------------
    progress = {"step": 0, "epoch": 0, "epoch_step": 0, "best_miou": None, "best_step": None, "history": []}
    if resume_dir is not None:
        progress = resume_state(accelerator, run_dir, resume_dir)
    if main_process:  # only now: a failed attempt leaves the run's config.yaml as it was
        save_config(cfg, run_dir / "config.yaml")
    position = DataPosition(progress["epoch"], progress["epoch_step"])
    loader, sampler = train_loader(train_set, cfg.data, rank, world, cfg.seed, position)
    val_loader = eval_loader(val_set, cfg.data, rank, world)

    accelerator.init_trackers("tensorboard", config=flat_hparams(cfg))
    total = cfg.train.iterations
    step = progress["step"]
    if main_process:
        role = "distilling" if teacher is not None else "training"
        print(
            f"{role} {count_parameters(student) / 1e6:.2f}M-parameter model on {info.name} "
            f"({len(train_set)} train / {len(val_set)} val images, {world} process(es), device {accelerator.device})"
        )
    samples_log = open(run_dir / f"samples_rank{rank}.txt", "a") if cfg.train.record_samples else None
    bar = tqdm(total=total, initial=step, disable=not main_process, desc="train", dynamic_ncols=True)
    data = iter(loader)
    unwrapped = accelerator.unwrap_model(objective)
    last_logged = time.perf_counter()

    # ---- the loop -------------------------------------------------------------------------------
    first_step = step
    try:
        while step < total:
            lr = learning_rate(step, total, cfg.train.optimizer.lr, cfg.train.schedule)
            set_learning_rate(optimizer, lr)
            sums: dict[str, torch.Tensor] = {}
            outputs = []  # (student, teacher) outputs of each micro-batch, for a discriminator step
            for micro in range(cfg.train.grad_accum):
                images, labels, indices = next(data)
                if samples_log is not None:
                    samples_log.write(f"{position.epoch} {position.step} {' '.join(map(str, indices.tolist()))}\n")
                position.advance(sampler.steps_per_epoch)
                images, labels = images.to(accelerator.device), labels.to(accelerator.device)
                context = LossContext(labels, info.ignore_index, info.num_classes)
                sync = micro == cfg.train.grad_accum - 1
                with nullcontext() if sync else accelerator.no_sync(objective):
                    with accelerator.autocast():
                        teacher_out = None
                        if teacher is not None:
                            with torch.no_grad():
                                teacher_out = teacher(images)
                        parts, student_out = objective(images, context, teacher_out)
                    loss = sum(parts.values())
                    accelerator.backward(loss / cfg.train.grad_accum)
                for name, value in parts.items():
                    sums[name] = sums.get(name, 0) + value.detach() / cfg.train.grad_accum
                if adversary is not None:
                    outputs.append((student_out, teacher_out))
            stop_if_not_finite(accelerator, sums, step, run_dir, DIVERGED)
            if cfg.train.grad_clip is not None:
                accelerator.clip_grad_norm_(objective.parameters(), cfg.train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            d_sums: dict[str, torch.Tensor] = {}
            if adversary is not None:
                # After the student's step, as SKD: the discriminators learn on the same outputs (the
                # student's detached), with their own optimiser.
                d_sums = discriminator_backward(accelerator, adversary, outputs)
                stop_if_not_finite(accelerator, d_sums, step, run_dir, DIVERGED)
                d_cfg = cfg.train.discriminator
                set_learning_rate(d_optimizer, learning_rate(step, total, d_cfg.optimizer.lr, d_cfg.schedule))
                d_optimizer.step()
                d_optimizer.zero_grad(set_to_none=True)
            local = torch.stack([*sums.values(), *d_sums.values()])
            step += 1
            bar.update(1)

            if step % cfg.train.log_interval == 0 or step == total:
                mean_parts = accelerator.reduce(local, "mean")
                names = [f"loss/{k}" for k in sums] + [f"discriminator/{k}" for k in d_sums]
                logged = {name: float(v) for name, v in zip(names, mean_parts, strict=True)}
                logged["loss/total"] = float(mean_parts[: len(sums)].sum())
                logged["lr"] = lr
                logged["time/step_s"] = (time.perf_counter() - last_logged) / cfg.train.log_interval
                last_logged = time.perf_counter()
                accelerator.log(logged, step=step)
                bar.set_postfix(loss=f"{logged['loss/total']:.4f}", lr=f"{lr:.2e}")

            if step % cfg.train.eval_interval == 0 or step == total:
                metrics = evaluate(accelerator, unwrapped.student, val_loader, info, cfg)
                accelerator.log({"val/miou": metrics.miou, "val/pixel_accuracy": metrics.pixel_accuracy}, step=step)
                progress["history"].append({"step": step, "miou": metrics.miou, "pixel_accuracy": metrics.pixel_accuracy})
                if progress["best_miou"] is None or metrics.miou > progress["best_miou"]:
                    progress["best_miou"], progress["best_step"] = metrics.miou, step
                    if main_process:
                        save_model(unwrapped.student, run_dir / "best", cfg.model, info, model_extra(cfg, step, metrics, quantization))
                if main_process:
                    bar.write(f"step {step}: val mIoU {100 * metrics.miou:.2f}  (best {100 * progress['best_miou']:.2f} at {progress['best_step']})")

            if step % cfg.train.checkpoint_interval == 0 or step == total:
                progress.update(step=step, epoch=position.epoch, epoch_step=position.step)
                save_training_state(accelerator, run_dir, progress, cfg.train.keep_checkpoints)
    finally:
        bar.close()
        if samples_log is not None:
            samples_log.close()

    # ---- final model and report -----------------------------------------------------------------
    energy = {"train": {**meter.stop(), "steps": step - first_step}} if meter is not None else None
    meter = start_meter(cfg.train.energy, whole_machine=world > 1) if main_process else None
    metrics = evaluate(accelerator, unwrapped.student, val_loader, info, cfg)
    if meter is not None:
        energy["eval"] = meter.stop(images=len(val_set))
    result = {
        "miou": metrics.miou,
        "pixel_accuracy": metrics.pixel_accuracy,
        "iou": dict(zip(info.classes, metrics.iou, strict=True)),
        "best_miou": progress["best_miou"],
        "best_step": progress["best_step"],
        "parameters": count_parameters(unwrapped.student),
        "history": progress["history"],
        "energy": energy,
    }
    if main_process:
        save_model(unwrapped.student, run_dir / "final", cfg.model, info, model_extra(cfg, step, metrics, quantization))
        atomic_write_text(run_dir / "metrics.json", json.dumps(result, indent=2))
        print(f"\nfinal model: {run_dir / 'final'}\n{metrics.table(info.classes)}")
    accelerator.end_training()
    return result


def model_extra(cfg: Config, step: int, metrics: SegMetrics, quantization: dict | None) -> dict:
    return {
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
        "data": config_to_dict(cfg.data),
        "step": step,
        "val_miou": None if math.isnan(metrics.miou) else metrics.miou,
        "teacher": None if cfg.teacher is None else config_to_dict(cfg.teacher),
        "losses": [loss.name for loss in cfg.losses],
        "quantization": quantization,
    }


cli = command(main)


if __name__ == "__main__":
    sys.exit(cli())
