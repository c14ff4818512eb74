"""Helpers the tests import: the repository root, the tiny training setup, and running ``python`` in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def kill_training_after(args: list[str], run_dir: Path, state: str = "checkpoints/step_0000003") -> None:
    """Start ``python -m segdistill.train ARGS output_dir=RUN_DIR`` and kill it with SIGKILL as soon as ``state``
    exists in the run folder; it must not have finished by then."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "segdistill.train", *args, f"output_dir={run_dir}"],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while not (run_dir / state).is_dir() and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "final").exists()
