"""Shared settings for the tests: tiny models on tiny synthetic scenes, CPU only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY

# Without CUDA the Triton kernels run under the interpreter, which triton reads when it is first
# imported: set here, before any test module (or torch) can import triton. Subprocesses inherit it.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


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
    from segdistill.train import main

    run = tmp_path_factory.mktemp("teacher")
    main([*TINY, f"output_dir={run}"])
    return run / "final"
