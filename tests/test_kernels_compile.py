"""The Triton kernels compile for a GPU (sm_90, H100) without one, at the tiles the wrappers pick, and
keep every value in registers (no spills). The interpreter tests check what the kernels compute; only a
real compile catches code the GPU compiler rejects. Runs in a subprocess: the interpreter tests of this
session set TRITON_INTERPRET=1, under which kernels cannot be compiled."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_python

triton = pytest.importorskip("triton")
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not PTXAS.exists(), reason="this triton build ships no ptxas to compile CUDA kernels")
def test_every_kernel_compiles_for_sm90_without_spills(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # compile for real, not from a cache
    result = run_python(["-m", "segdistill.kernels.compile_check", "--arch", "90", "--fail-on-spill"], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for kernel in (
        "softmax_kl partial",
        "softmax_kl combine",
        "softmax_kl backward",
        "patch_contrast forward",
        "patch_contrast backward",
        "pairwise_mse forward",
        "cross_image_kl backward columns",
    ):
        assert kernel in result.stdout
    assert result.stdout.count("| sm_90 |") == 13
