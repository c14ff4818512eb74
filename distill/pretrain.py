"""KDEP pre-training (docs/loss_math.md §6): a student backbone learns a teacher backbone's pooled features on
images without labels, and then initialises a student for segmentation.

    accelerate launch distill/pretrain.py --config configs/kdep/resnet50-resnet18_imagenet.yaml [key=value ...] [--resume]

1. SVD basis: the teacher's pooled pre-activation features of ``svd.views_per_image`` augmented views of
   (up to ``svd.images``) images are centred and decomposed once; the mean and the first D_s right singular
   vectors are saved (``svd.basis``, by default OUTPUT/svd_basis.safetensors). A basis that exists is reused.
2. Training: loss = w * MSE(f_s, PTS((f_t - mean) V)), SGD (``optimizer``), learning rate divided by 10
   at the fractions ``lr_steps`` of the run (1/3 and 2/3, as the paper). Checkpoints as the segmentation
   trainer's (Accelerate state + progress.json, written aside and renamed; the same protocol, distill/checkpoint.py,
   and the same stop on a non-finite loss); ``--resume`` continues the latest.
3. Output: OUTPUT/student_backbone.safetensors, the student's timm weights (no classifier), which a
   segmentation config loads with ``model.backbone: <student.name>`` and ``model.pretrained: <that file>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from segdistill.atomic_files import atomic_write, atomic_write_text
from segdistill.checkpoint import (
    resume_state,
    resume_target,
    save_training_state,
    sha256_of,
    stop_if_not_finite,
)
from segdistill.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OptimizerConfig,
    SyntheticConfig,
    read_values,
    save_config,
)
from segdistill.data.loader import DataPosition, ShardedEpochSampler
from segdistill.data.synthetic import SyntheticScenes
from segdistill.data.unlabelled import ImageFolder, SeededViews, SyntheticImages, view_transform
from segdistill.errors import ConfigError, command
from segdistill.kdep import PooledFeature, fit_basis, kdep_loss, kdep_target, load_basis, save_basis
from segdistill.optim import build_optimizer, set_learning_rate
from segdistill.parsing import parse_dataclass
from segdistill.processes import die_with_launcher
from segdistill.run_lock import run_folder_lock

WEIGHTS_NAME = "student_backbone.safetensors"
WEIGHTS_FORMAT = "segdistill-kdep-backbone/1"


@dataclass
class BackboneSpec:
    name: str = "resnet18"
    # None: random init; "hub": timm's ImageNet weights (downloads); else a local weights file.
    pretrained: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # for timm.create_model


@dataclass
class UnlabelledDataConfig:
    root: str | None = None  # a folder of images, searched recursively; None: the synthetic scenes' images
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    image_size: int = 224
    scale_range: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop
    hflip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    batch_size: int = 64
    num_workers: int = 4


@dataclass
class SVDConfig:
    basis: str | None = None  # None: OUTPUT/svd_basis.safetensors. Reused when it exists.
    images: int | None = None  # the first N images only; None: all
    views_per_image: int = 1  # augmented views of each image: the basis needs at least D_s features


@dataclass
class PTSConfig:
    temperature: float = 0.1
    power: float = 3.0


@dataclass
class PretrainConfig:
    output_dir: str = "runs/kdep"
    seed: int = 0
    data: UnlabelledDataConfig = field(default_factory=UnlabelledDataConfig)
    teacher: BackboneSpec = field(default_factory=lambda: BackboneSpec(name="resnet50", pretrained="hub"))
    student: BackboneSpec = field(default_factory=BackboneSpec)
    svd: SVDConfig = field(default_factory=SVDConfig)
    pts: PTSConfig = field(default_factory=PTSConfig)
    loss_weight: float = 1.0
    iterations: int = 1000
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=0.3, weight_decay=5e-4))
    lr_steps: list[float] = field(default_factory=lambda: [1 / 3, 2 / 3])  # fractions of the run
    lr_gamma: float = 0.1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2
    log_interval: int = 10


def load_pretrain_config(path: str | None, overrides: list[str] = ()) -> PretrainConfig:
    cfg = parse_dataclass(PretrainConfig, read_values(path, overrides), "")
    if cfg.iterations < 1 or cfg.data.batch_size < 1 or cfg.svd.views_per_image < 1:
        raise ConfigError("config keys 'iterations', 'data.batch_size' and 'svd.views_per_image' must be >= 1")
    return cfg


def step_learning_rate(step: int, total: int, cfg: PretrainConfig) -> float:
    """``optimizer.lr`` times ``lr_gamma`` for every fraction of ``lr_steps`` the run has passed."""
    return cfg.optimizer.lr * cfg.lr_gamma ** sum(step >= fraction * total for fraction in cfg.lr_steps)


def build_images(cfg: UnlabelledDataConfig):
    if cfg.root is not None:
        return ImageFolder(cfg.root)
    syn = cfg.synthetic
    return SyntheticImages(SyntheticScenes("train", syn.num_train, syn.size, syn.seed, 0.0))


@torch.no_grad()
def teacher_features(teacher: PooledFeature, images, cfg: PretrainConfig, device: torch.device) -> torch.Tensor:
    """Pooled teacher features of ``svd.views_per_image`` seeded views of each of the first ``svd.images`` images."""
    count = len(images) if cfg.svd.images is None else min(cfg.svd.images, len(images))
    views = SeededViews(images, view_transform(cfg.data.image_size, cfg.data.scale_range, cfg.data.hflip, cfg.data.mean, cfg.data.std))
    # seeds of their own (a fourth entropy word), apart from the training views' (seed, epoch, index)
    keys = [(i, int(np.random.SeedSequence([cfg.seed, v, i, 1]).generate_state(1)[0]))
            for i in range(count) for v in range(cfg.svd.views_per_image)]  # fmt: skip
    loader = DataLoader(views, batch_size=cfg.data.batch_size, sampler=keys, num_workers=cfg.data.num_workers)
    return torch.cat([teacher(batch.to(device)).float().cpu() for batch in tqdm(loader, desc="teacher features for the SVD")])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file (defaults apply without one)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of output_dir")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. iterations=100")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Pre-train; returns the path of the student backbone's weights."""
    die_with_launcher()
    with ExitStack() as held:  # the run folder's lock, released when pre-training ends, however it ends
        return pretrain(parse_args(argv), held)


def pretrain(args: argparse.Namespace, held: ExitStack) -> Path:
    cfg = load_pretrain_config(args.config, args.overrides)
    run_dir = Path(cfg.output_dir)
    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available(), mixed_precision=cfg.mixed_precision, log_with="tensorboard", project_dir=str(run_dir)
    )
    main_process, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    set_seed(cfg.seed)
    # First the lock: no process writes in the run folder, nor reads its checkpoints, while another run may
    # be writing them.
    if main_process:
        held.enter_context(run_folder_lock(run_dir))
    accelerator.wait_for_everyone()
    resume_dir = resume_target(run_dir, "latest" if args.resume else None, world)

    # ---- models, SVD basis ----------------------------------------------------------------------
    images = build_images(cfg.data)
    teacher = PooledFeature(cfg.teacher.name, cfg.teacher.pretrained, cfg.teacher.kwargs).to(accelerator.device).eval()
    teacher.requires_grad_(False)
    student = PooledFeature(cfg.student.name, cfg.student.pretrained, cfg.student.kwargs)
    basis_path = Path(cfg.svd.basis) if cfg.svd.basis is not None else run_dir / "svd_basis.safetensors"
    if main_process and not basis_path.is_file():
        features = teacher_features(teacher, images, cfg, accelerator.device)
        provenance = {"teacher": json.dumps(cfg.teacher.__dict__), "features": str(len(features))}
        save_basis(basis_path, *fit_basis(features, student.dim), provenance)
        print(f"SVD basis of {len(features)} teacher features saved to {basis_path}")
    elif main_process:
        print(f"reusing the SVD basis {basis_path}")
    accelerator.wait_for_everyone()
    mean, basis = (t.to(accelerator.device) for t in load_basis(basis_path, teacher.dim, student.dim))

    optimizer = build_optimizer(student, [], cfg.optimizer)
    student, optimizer = accelerator.prepare(student, optimizer)
    progress = {"step": 0, "epoch": 0, "epoch_step": 0}
    if resume_dir is not None:
        progress = resume_state(accelerator, run_dir, resume_dir)
    if main_process:  # only now: a failed attempt leaves the run's config.yaml as it was
        save_config(cfg, run_dir / "config.yaml")
    position = DataPosition(progress["epoch"], progress["epoch_step"])
    sampler = ShardedEpochSampler(len(images), cfg.data.batch_size, rank, world, cfg.seed, position)
    transform = view_transform(cfg.data.image_size, cfg.data.scale_range, cfg.data.hflip, cfg.data.mean, cfg.data.std)
    loader = DataLoader(SeededViews(images, transform), batch_size=cfg.data.batch_size, sampler=sampler,
                        num_workers=cfg.data.num_workers, generator=torch.Generator())  # fmt: skip

    # ---- the loop -------------------------------------------------------------------------------
    accelerator.init_trackers("tensorboard")
    step, total = progress["step"], cfg.iterations
    bar = tqdm(total=total, initial=step, disable=not main_process, desc="kdep", dynamic_ncols=True)
    data = iter(loader)
    try:
        while step < total:
            lr = step_learning_rate(step, total, cfg)
            set_learning_rate(optimizer, lr)
            batch = next(data).to(accelerator.device)
            position.advance(sampler.steps_per_epoch)
            with accelerator.autocast():
                with torch.no_grad():
                    target = kdep_target(teacher(batch).float(), mean, basis, cfg.pts.temperature, cfg.pts.power)
                loss = kdep_loss(student(batch), target, cfg.loss_weight)
            stop_if_not_finite(accelerator, {"kdep": loss.detach()}, step, run_dir, "Lower the learning rate (optimizer.lr)")
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % cfg.log_interval == 0 or step == total:
                value = float(accelerator.reduce(loss.detach(), "mean"))
                accelerator.log({"loss/kdep": value, "lr": lr}, step=step)
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
            if step % cfg.checkpoint_interval == 0 or step == total:
                progress.update(step=step, epoch=position.epoch, epoch_step=position.step)
                save_training_state(accelerator, run_dir, progress, cfg.keep_checkpoints)
    finally:
        bar.close()

    # ---- the backbone for segmentation ------------------------------------------------------------
    out = run_dir / WEIGHTS_NAME
    if main_process:
        model = accelerator.unwrap_model(student).model
        save_backbone(model, out, cfg, basis_path)
        print(f"\nstudent backbone: {out}\nuse it for segmentation with model.backbone={cfg.student.name} model.pretrained={out}")
    accelerator.end_training()
    return out


def save_backbone(model: torch.nn.Module, path: Path, cfg: PretrainConfig, basis_path: Path) -> None:
    """The timm state dict (no classifier), written aside and renamed."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": WEIGHTS_FORMAT,
        "timm_model": cfg.student.name,
        "timm_kwargs": json.dumps(cfg.student.kwargs),
        "teacher": json.dumps(cfg.teacher.__dict__),
        "svd_basis_sha256": sha256_of(basis_path),
        "iterations": str(cfg.iterations),
    }
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))


cli = command(main)


if __name__ == "__main__":
    sys.exit(cli())
