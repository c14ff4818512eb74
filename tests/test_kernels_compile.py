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


def compile_check(tmp_path, monkeypatch, *args: str) -> str:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # compile for real, not from a cache
    result = run_python(["-m", "segdistill.kernels.compile_check", *args], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def affinity_rows(table: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.split("|")] for line in table.splitlines()]
    return [row for row in rows if row[0].startswith(("pairwise_mse", "cross_image_kl"))]


@pytest.mark.skipif(not PTXAS.exists(), reason="this triton build ships no ptxas to compile CUDA kernels")
def test_every_kernel_compiles_for_sm90_without_spills_at_25_percent_occupancy(tmp_path, monkeypatch):
    table = compile_check(tmp_path, monkeypatch, "--arch", "90", "--fail-on-spill", "--fail-below-occupancy")
    for kernel in (
        "softmax_kl partial",
        "softmax_kl combine",
        "softmax_kl backward",
        "patch_contrast forward",
        "patch_contrast backward",
        "pairwise_mse forward",
        "cross_image_kl backward columns",
    ):
        assert kernel in table
    assert table.count("| sm_90 |") == 13
    # float32 inputs multiply as 3xTF32 on tensor cores.
    assert {row[-1] for row in affinity_rows(table)} == {"tf32"}


@pytest.mark.skipif(not PTXAS.exists(), reason="this triton build ships no ptxas to compile CUDA kernels")
def test_half_inputs_multiply_natively_on_sm87_at_25_percent_occupancy(tmp_path, monkeypatch):
    table = compile_check(
        tmp_path, monkeypatch, "--arch", "87", "--dtype", "bf16", "--fail-on-spill", "--fail-below-occupancy"
    )
    rows = affinity_rows(table)
    assert len(rows) == 5
    assert {row[-1] for row in rows} == {"bf16"}  # no upcast to float32, no 3xTF32
