"""Checkpoints on disk. Every write is atomic (write beside, then rename), so a run killed at any moment
leaves either the old file or the new one, never a broken one.

* A *model checkpoint* is ``model.safetensors`` plus ``model.json`` (architecture, classes, palette,
  mean/std, provenance): everything needed to rebuild the model without the training code's config,
  e.g. for export. Loading builds the architecture from the JSON and loads the weights strictly.
* A *training state* is a folder ``checkpoints/step_NNNNNNN`` written by ``Accelerator.save_state``
  (model, optimiser(s), RNG states; loaded back with ``weights_only=True``) plus ``progress.json``
  (step, data position, best score, number of processes). A folder only gets its final name once complete.
  A state is checked before it is resumed (Accelerate skips RNG states it cannot read with a log line
  only, and the run would silently differ). Resuming an older state moves the later ones aside, into
  ``checkpoints/abandoned_<time>_from_step_N/``, so that they are never taken for the latest again.

Both trainers (``train.py``, ``pretrain.py``) follow one protocol, written here once: :func:`resume_target`
(what to resume from, or a refusal to overwrite a run), :func:`resume_state`, :func:`save_training_state`, and
:func:`stop_if_not_finite` (a diverged run stops naming the checkpoint to resume from). The folders' names
are ``state_folders.py``'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors.torch import save_file
from torch import nn

from segdistill.atomic_files import atomic_write, atomic_write_text, current_umask, writing
from segdistill.config import ModelConfig, config_to_dict
from segdistill.errors import ConfigError, UserError
from segdistill.models import build_model
from segdistill.parsing import parse_dataclass
from segdistill.quantization import restore_quantizers
from segdistill.safe_load import LOAD_ERRORS, UnreadableTensors, load_tensors, refusal_reason
from segdistill.state_folders import (
    PROGRESS_NAME,
    abandoned_dir,
    final_state_dir,
    pending_state_dir,
    state_dirs,
)

FORMAT = "segdistill-model/1"
WEIGHTS_NAME, META_NAME = "model.safetensors", "model.json"
RNG_NAME = "random_states_{}.pkl"  # Accelerate's file of each process's RNG states
RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")


class CheckpointError(ConfigError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(model: nn.Module, directory: str | Path, model_cfg: ModelConfig, info, extra: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` + ``model.json`` into ``directory``; returns the weights path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    meta = {
        "format": FORMAT,
        "model": config_to_dict(model_cfg),
        "num_classes": info.num_classes,
        "dataset": info.name,
        "classes": list(info.classes),
        "palette": [list(c) for c in info.palette],
        "ignore_index": info.ignore_index,
        "weights_sha256": sha256_of(weights),
        **extra,
    }
    atomic_write_text(directory / META_NAME, json.dumps(meta, indent=2))
    return weights


def resolve_model_path(path: str | Path) -> tuple[Path, Path]:
    """(weights, metadata) for a folder, a ``.safetensors`` or a ``.json`` path."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (a model checkpoint is a folder with {WEIGHTS_NAME} and {META_NAME})")
    directory = path if path.is_dir() else path.parent
    weights, meta = directory / WEIGHTS_NAME, directory / META_NAME
    if path.suffix == ".safetensors":
        weights = path
    for needed in (weights, meta):
        if not needed.is_file():
            raise CheckpointError(
                f"checkpoint {str(path)!r}: {str(needed)!r} does not exist (a model checkpoint is a folder "
                f"with {WEIGHTS_NAME} and {META_NAME})"
            )
    return weights, meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    _, meta_path = resolve_model_path(path)
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint metadata {str(meta_path)!r} is not valid JSON: {err}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint metadata {str(meta_path)!r} has format {meta.get('format')!r}; expected {FORMAT!r}")
    return meta


def read_weights(weights: str | Path) -> dict[str, Any]:
    """The tensors of a safetensors file (or a ``torch.save`` state dict, with ``weights_only=True``)."""
    weights = Path(weights)
    if not weights.is_file():
        raise CheckpointError(f"weights file {str(weights)!r} does not exist")
    try:
        return load_tensors(weights)
    except UnreadableTensors as err:
        raise CheckpointError(f"weights file {str(weights)!r} could not be read: {err}") from None


def load_weights(model: nn.Module, weights: str | Path, state: dict[str, Any] | None = None) -> None:
    """Load the tensors of ``weights`` (or ``state``, already read from it) strictly."""
    state = read_weights(weights) if state is None else state
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"weights file {str(weights)!r} does not match the model: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, "
            f"{len(wrong)} shape mismatches {wrong[:3]}"
        )
    model.load_state_dict(state)


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from its checkpoint folder (architecture from the JSON) and load its weights."""
    weights, _ = resolve_model_path(path)
    meta = read_metadata(path)
    model_cfg = parse_dataclass(ModelConfig, meta["model"], "model")
    model_cfg.pretrained = model_cfg.init_from = None  # the checkpoint holds every weight
    model = build_model(model_cfg, meta["num_classes"])
    state = read_weights(weights)
    if meta.get("quantization"):  # quantization-aware trained: the fake quantizers, with their trained scales
        restore_quantizers(model, meta["quantization"], state)
    load_weights(model, weights, state)
    return model, meta


def init_from_checkpoint(model: nn.Module, path: str | Path) -> None:
    """``model.init_from``: start from the weights of an FP32 model checkpoint of the same architecture."""
    weights, _ = resolve_model_path(path)
    if read_metadata(path).get("quantization"):
        raise CheckpointError(
            f"config key 'model.init_from': {str(path)!r} was trained with quantization (QAT); "
            "start from the FP32 checkpoint it was trained from"
        )
    load_weights(model, weights)


# ----------------------------------------------------------------------------------------------------
# Training state


def resume_target(run_dir: str | Path, resume: str | None, processes: int) -> Path | None:
    """The checked training state that ``--resume [PATH]`` names (see :func:`check_state`). Without ``--resume``
    (None) the run folder must hold no training state: a started or finished run is never overwritten."""
    found = state_dirs(run_dir)
    if resume is None:
        if found:
            raise ConfigError(
                f"run folder {str(run_dir)!r} already holds training checkpoints (last: step {found[-1][0]}); "
                "pass --resume to continue it, or choose another output_dir"
            )
        return None
    if resume != "latest":
        return check_state(Path(resume), processes)
    if not found:
        raise CheckpointError(
            f"--resume: run folder {str(run_dir)!r} holds no complete checkpoint (checkpoints/step_NNNNNNN with "
            f"{PROGRESS_NAME}) to continue; run without --resume to start it from step 0"
        )
    return check_state(found[-1][1], processes)


def check_state(state_dir: Path, processes: int) -> Path:
    """Refuse a folder that is not a training state, that other numbers of processes wrote (the data order
    depends on it), or whose processes' RNG states are missing or unreadable."""
    if not (state_dir / PROGRESS_NAME).is_file():
        kind = "does not exist" if not state_dir.exists() else "is not a training checkpoint"
        if (state_dir / META_NAME).is_file():
            kind = "is a model checkpoint (final/ or best/: weights only, no optimiser or data position)"
        raise CheckpointError(
            f"--resume {str(state_dir)!r}: the folder {kind}; give a training checkpoint "
            f"OUTPUT/checkpoints/step_NNNNNNN (with {PROGRESS_NAME}), or --resume alone for the latest"
        )
    written_by = read_progress(state_dir).get("processes", processes)
    if written_by != processes:
        raise CheckpointError(
            f"checkpoint {str(state_dir)!r} was written by {written_by} process(es), and this run has {processes}; "
            f"resume it with {written_by} (accelerate launch --num_processes {written_by}): the data order depends on it"
        )
    for rank in range(written_by):
        rng = state_dir / RNG_NAME.format(rank)
        if not rng.is_file():
            raise CheckpointError(f"checkpoint {str(state_dir)!r} lacks {rng.name}, process {rank}'s random-number "
                                  "states, without which the resumed run would differ; resume an earlier checkpoint")  # fmt: skip
        try:
            states = accelerate_load(rng, map_location="cpu")  # weights_only=True, numpy's states allowed
        except LOAD_ERRORS as err:
            raise CheckpointError(f"random-number states {str(rng)!r} could not be read: {refusal_reason(err)}") from None
        if not isinstance(states, dict) or not all(key in states for key in RNG_KEYS):
            raise CheckpointError(f"random-number states {str(rng)!r} are incomplete (expected {', '.join(RNG_KEYS)})")
    return state_dir


def resume_state(accelerator: Accelerator, run_dir: str | Path, state_dir: Path) -> dict[str, Any]:
    """Load a checked training state into the prepared objects and move the run's later states aside (an
    abandoned continuation); its progress."""
    try:
        accelerator.load_state(str(state_dir))
    except LOAD_ERRORS as err:
        raise CheckpointError(f"checkpoint {str(state_dir)!r} could not be loaded: {refusal_reason(err)}") from None
    progress = read_progress(state_dir)
    if accelerator.is_main_process:
        aside = retire_later_states(run_dir, progress["step"])
        print(f"resumed from {state_dir} at step {progress['step']}" + (f"; later checkpoints moved to {aside}" if aside else ""))
    return progress


def retire_later_states(run_dir: str | Path, step: int) -> Path | None:
    """Move the run's states after ``step`` aside; the folder that now holds them. Each moves by one rename,
    never half deleted."""
    later = [path for found, path in state_dirs(run_dir) if found > step]
    if not later:
        return None
    aside = abandoned_dir(run_dir, step)
    aside.mkdir(exist_ok=True)
    for path in later:
        os.replace(path, aside / path.name)
    return aside


def read_progress(state_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((state_dir / PROGRESS_NAME).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{str(state_dir / PROGRESS_NAME)!r} could not be read: {err}") from None


def save_training_state(accelerator: Accelerator, run_dir: str | Path, progress: dict[str, Any], keep: int) -> Path:
    """Every process calls this at step ``progress["step"]``: the state is written by ``Accelerator.save_state``
    into a pending folder, which gets its final name with ``progress.json`` (and the number of processes) once
    complete; the oldest states beyond ``keep`` (0: none) are then dropped. A failed write (full disk) removes
    the pending folder and keeps the earlier states."""
    tmp = pending_state_dir(run_dir, progress["step"])
    if accelerator.is_main_process:
        with writing(tmp):
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        with writing(tmp):
            accelerator.save_state(str(tmp))
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    final = final_state_dir(tmp)
    if accelerator.is_main_process:
        commit_state(tmp, final, {**progress, "processes": accelerator.num_processes}, keep)
    accelerator.wait_for_everyone()
    return final


def commit_state(tmp: Path, final: Path, progress: dict[str, Any], keep: int) -> None:
    atomic_write_text(tmp / PROGRESS_NAME, json.dumps(progress, indent=2))
    # Accelerate writes the model's safetensors with mode 0600 whatever the umask: give them the umask's.
    for file in tmp.rglob("*"):
        if file.is_file():
            file.chmod(0o666 & ~current_umask())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in state_dirs(final.parent.parent)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


class NonFiniteLoss(UserError, RuntimeError):
    """The run diverged: the message says at which step and which checkpoint to resume from."""


def stop_if_not_finite(accelerator: Accelerator, parts: dict[str, torch.Tensor], step: int, run_dir: str | Path, advice: str) -> None:
    """Raise :class:`NonFiniteLoss` (before any optimiser step uses them) if a loss part is not finite in any
    process. ``advice`` says which settings to change."""
    local = torch.stack(list(parts.values()))
    if bool(accelerator.reduce(torch.isfinite(local).all().float(), "min")):
        return
    values = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
    last = state_dirs(run_dir)
    kept = (
        f"the last good checkpoint is {last[-1][1]}, resume from it with --resume"
        if last else "no checkpoint was written yet, so start the run again without --resume"
    )  # fmt: skip
    raise NonFiniteLoss(f"the loss is not finite at step {step + 1} ({values}); stopping. {advice}; {kept}")
