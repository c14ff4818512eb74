"""The trainer on the Triton kernels (``train.kernels=triton``, CPU tensors under the interpreter) against
the same runs on the references (``train.kernels=reference``): every kernel-backed loss, inside the real
loop (autograd, gradient accumulation, bf16 autocast, resume).

Tolerance: 1e-3 relative on every logged loss and, per weight tensor, 1e-3 of its largest magnitude or
1e-5, whichever is larger (a tensor still near zero after two steps, such as an auxiliary head's BatchNorm
bias at 7e-4, differs by float32 summation noise of 1e-6 once the thread count changes the order).
Both backends compute in float32 and differ in summation order only: measured on the 2-core machine,
the curves agree to 3e-5 and the weights to 3e-5 after two steps (bf16 runs often bit for bit, as the
bf16 backward rounds the differences away). The tiny model amplifies a difference about 20x per step
(a third step reaches 1e-2 on some BatchNorm biases), hence two steps. Making one KD term 1 % larger in
the reference instead moves the losses by 1e-2 and the weights by 0.1-0.4, far outside the tolerance.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

import segdistill.kernels.affinity_triton
import segdistill.kernels.contrast_triton
import segdistill.kernels.softmax_kl_triton
from segdistill import kernels
from segdistill.errors import ConfigError
from segdistill.tensorboard_scalars import logged_scalars
from segdistill.train import main
from tests.helpers import TINY

STEPS = 2
TOLERANCE = 1e-3
WEIGHT_FLOOR = 1e-5

# loss list, extra overrides (accumulation, autocast), the Triton entry point the loss must reach
CASES = {
    "pixel_kd": ("[{name: pixel_kd, weight: 1.0, params: {tau: 2.0}}]", ["train.grad_accum=2"], segdistill.kernels.softmax_kl_triton, "softmax_kl_rows_triton"),
    "cwd": ("[{name: cwd, weight: 3.0}]", [], segdistill.kernels.softmax_kl_triton, "softmax_kl_rows_triton"),
    "hwd": ("[{name: hwd, weight: 3.0}]", ["train.mixed_precision=bf16"], segdistill.kernels.softmax_kl_triton, "softmax_kl_rows_triton"),
    "afdcd": (
        "[{name: afdcd, student: head, teacher: head, params: {pool: 1, patch: 4, groups: 4, lambda_contrast: 1.0}}]",
        ["train.mixed_precision=bf16", "train.grad_accum=2"], segdistill.kernels.contrast_triton, "patch_contrast_triton",
    ),
    "skd_pairwise": ("[{name: skd_pairwise, weight: 0.5}]", ["train.grad_accum=2"], segdistill.kernels.affinity_triton, "pairwise_affinity_mse_triton"),
    "cirkd_minibatch": ("[{name: cirkd_minibatch, weight: 1.0}]", ["train.mixed_precision=bf16"], segdistill.kernels.affinity_triton, "cross_image_affinity_kl_triton"),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _kernel_switch_back_to_auto():
    """main() sets the process-wide kernel switch; later tests in this process expect ``auto``."""
    with kernels.use_backend("auto"):
        yield


@pytest.fixture
def triton_calls(monkeypatch) -> Counter:
    """Counts calls of the Triton entry points, which still run: proof that the kernels, not the
    references, computed the losses."""
    calls: Counter = Counter()
    for _, _, module, name in CASES.values():
        real = getattr(module, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return calls


def train(run: Path, teacher: Path, case: str, backend: str, *extra: str) -> dict[str, torch.Tensor]:
    losses, overrides, _, _ = CASES[case]
    # Accelerate keeps one mixed-precision setting per process: start each run afresh, leave none behind.
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        main([
            *TINY, f"output_dir={run}", f"teacher.checkpoint={teacher}", f"losses={losses}", *overrides,
            f"train.iterations={STEPS}", "train.eval_interval=100", "train.optimizer.lr=0.01", f"train.kernels={backend}", *extra,
        ])  # fmt: skip
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return load_file(run / "final/model.safetensors")


@pytest.mark.parametrize("case", list(CASES))
def test_kernels_train_like_the_references(case: str, tiny_teacher: Path, tmp_path: Path, triton_calls: Counter) -> None:
    entry = CASES[case][3]
    reference = train(tmp_path / "reference", tiny_teacher, case, "reference")
    assert triton_calls[entry] == 0
    triton = train(tmp_path / "triton", tiny_teacher, case, "triton")
    assert triton_calls[entry] > 0, f"{entry} never ran"

    curves = [logged_scalars(tmp_path / name) for name in ("reference", "triton")]
    loss_tags = sorted(tag for tag in curves[0] if tag.startswith("loss/"))
    assert loss_tags == sorted(tag for tag in curves[1] if tag.startswith("loss/")) and "loss/total" in loss_tags
    for tag in loss_tags:
        assert len(curves[0][tag]) == STEPS
        torch.testing.assert_close(torch.tensor(curves[1][tag]), torch.tensor(curves[0][tag]), rtol=TOLERANCE, atol=0, msg=tag)
    assert reference.keys() == triton.keys()
    for name, weight in reference.items():
        if weight.is_floating_point():
            scale = weight.abs().max().item()
            assert (triton[name] - weight).abs().max().item() <= max(TOLERANCE * scale, WEIGHT_FLOOR), name


def test_resumed_kernel_run_ends_with_the_uninterrupted_weights(tiny_teacher: Path, tmp_path: Path, triton_calls: Counter) -> None:
    """A Triton run resumed from its step-2 checkpoint ends with the weights of the uninterrupted run,
    bit for bit (the interpreter is deterministic)."""
    whole = train(tmp_path / "whole", tiny_teacher, "cwd", "triton", "train.checkpoint_interval=2", "train.iterations=4")
    resumed_run = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole/checkpoints/step_0000002", resumed_run / "checkpoints/step_0000002")
    calls_before = triton_calls["softmax_kl_rows_triton"]
    resumed = train(resumed_run, tiny_teacher, "cwd", "triton", "train.checkpoint_interval=2", "train.iterations=4", "--resume")
    assert triton_calls["softmax_kl_rows_triton"] > calls_before
    different = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_triton_without_cuda_or_interpreter_is_a_config_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ConfigError, match=r"'train.kernels': 'triton' cannot run on device cpu: .*TRITON_INTERPRET=1"):
        main([*TINY, f"output_dir={tmp_path}", "train.kernels=triton"])
    assert not (tmp_path / "checkpoints").exists()
