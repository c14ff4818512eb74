"""Shared settings for the tests: tiny models on tiny synthetic scenes, CPU only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Without CUDA the Triton kernels run under the interpreter, which triton reads when it is first
# imported: set here, before any test module (or torch) can import triton. Subprocesses inherit it.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

ROOT = Path(__file__).resolve().parent.parent

# A tiny but real training setup: LCNet-0.5 + FCN head on 32x32 synthetic scenes.
TINY = [
    "data.synthetic.size=[32,32]",
    "data.crop_size=[32,32]",
    "data.synthetic.num_train=16",
    "data.synthetic.num_val=5",
    "data.batch_size=4",
    "data.val_batch_size=2",
    "data.num_workers=0",
    "model.backbone=lcnet_050",
    "model.head=fcn",
    "model.head_channels=16",
    "train.iterations=4",
    "train.eval_interval=2",
    "train.checkpoint_interval=2",
    "train.log_interval=1",
]


def subprocess_env() -> dict[str, str]:
    """One thread per process: CPU results are bit-reproducible only at a fixed thread count."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run_python(args: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` from the repository root, capturing output."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=timeout, **kwargs
    )


@pytest.fixture(autouse=True)
def _one_thread():
    """Test tensors are tiny: one thread avoids OpenMP oversubscription on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A model trained for a few steps, saved as a checkpoint folder, to serve as a teacher."""
    from distill.train import main

    run = tmp_path_factory.mktemp("teacher")
    main([*TINY, f"output_dir={run}"])
    return run / "final"
