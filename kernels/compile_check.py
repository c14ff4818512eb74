"""Compile every Triton kernel for a CUDA architecture without a GPU and report its resource usage.

The CPU interpreter (TRITON_INTERPRET=1) checks what the kernels compute, not whether they compile:
it accepts code the GPU compiler rejects (globals that are not constexpr, unsupported tile shapes) and
says nothing about registers. This builds each kernel, with the tile sizes the wrappers pick for the
benchmark shapes, down to a cubin with Triton's bundled ptxas, and reads registers, spills and shared
memory with cuobjdump, computes the occupancy those give (``occupancy``), and names the tensor-core input
type of the kernel's matrix products from its PTX. No GPU or CUDA driver is needed.

    python -m segdistill.kernels.compile_check --arch 90 --arch 87     # H100 / Jetson Orin
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from segdistill.kernels import affinity_triton, contrast_triton, softmax_kl_triton

DTYPES = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}
MIN_OCCUPANCY = 0.25  # --fail-below-occupancy: the floor of docs/kernels.md


@dataclass(frozen=True)
class SMLimits:
    """Per-SM limits of the CUDA Programming Guide's table of compute capabilities (and its occupancy
    calculator's allocation units: registers per warp in units of 256, shared memory in units of 128
    bytes plus 1 KiB reserved per block), with the largest shared-memory carveout."""

    max_warps: int
    max_blocks: int
    shared_bytes: int
    registers: int = 65536


LIMITS = {
    80: SMLimits(max_warps=64, max_blocks=32, shared_bytes=164 * 1024),  # A100
    87: SMLimits(max_warps=48, max_blocks=16, shared_bytes=164 * 1024),  # Jetson Orin
    90: SMLimits(max_warps=64, max_blocks=32, shared_bytes=228 * 1024),  # H100 / H200
}


def occupancy(arch: int, warps: int, registers: int, shared: int) -> tuple[int, float]:
    """(resident blocks per SM, resident warps / the SM's maximum) for a kernel's resource usage."""
    limits = LIMITS[arch]
    registers_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_registers = limits.registers // registers_per_warp // warps
    by_shared = limits.shared_bytes // (-(-shared // 128) * 128 + 1024)
    blocks = min(limits.max_blocks, limits.max_warps // warps, by_registers, by_shared)
    return blocks, blocks * warps / limits.max_warps


def tensor_core_inputs(ptx: str) -> str:
    """The operand types of the PTX's mma / wgmma instructions ("-" when the kernel has none)."""
    types = sorted(set(re.findall(r"\bw?g?mma[\w.]*?\.(tf32|bf16|f16)\.", ptx)))
    return "/".join(types) or "-"


@dataclass
class Build:
    name: str
    kernel: triton.runtime.JITFunction
    constexprs: dict[str, object]
    inputs: tuple[str, ...]  # pointer arguments in the input dtype; the others are float32
    floats: tuple[str, ...] = ("inv_tau",)
    options: dict[str, object] = field(default_factory=dict)


def builds() -> list[Build]:
    """Each kernel with the tiles its wrapper picks at the benchmark shapes (docs/kernels.md)."""
    out = []
    skl = softmax_kl_triton
    for label, (block_r, block_i) in {
        "spatial 19x8192": skl._blocks(8192, 19, reduced_contiguous=True),
        "class 19 x 8192": skl._blocks(19, 8192, reduced_contiguous=False),
    }.items():
        tiles, warps = dict(BLOCK_R=block_r, BLOCK_I=block_i), dict(num_warps=skl.NUM_WARPS)
        out.append(Build(f"softmax_kl partial ({label})", skl._softmax_kl_partial_kernel, tiles, ("s_ptr", "t_ptr"),
                         options=warps))  # fmt: skip
        out.append(Build(f"softmax_kl backward ({label})", skl._softmax_kl_backward_kernel, tiles,
                         ("s_ptr", "t_ptr", "grad_ptr"), options=warps))  # fmt: skip
        out.append(
            Build(f"softmax_kl combine ({label})", skl._softmax_kl_combine_kernel, dict(BLOCK_I=block_i), ())
        )
    block_k, block_l, block_d = contrast_triton._blocks(tokens=256, channels=128)
    for backward in (False, True):
        tiles = dict(PATCH=4, GROUPS=16, BLOCK_K=block_k, BLOCK_L=block_l, BLOCK_D=block_d, BACKWARD=backward)
        out.append(Build(f"patch_contrast {'backward' if backward else 'forward'} (T 256, D 128)",
                         contrast_triton._patch_contrast_kernel, tiles, ("g_ptr", "t_ptr", "grad_ptr"),
                         options=dict(num_warps=contrast_triton.NUM_WARPS)))  # fmt: skip
    block_p, block_q, block_c, block_out = affinity_triton._blocks_for(channels=128)
    for kl in (False, True):
        tiles = dict(KL=kl, BLOCK_P=block_p, BLOCK_Q=block_q, BLOCK_C=block_c, PRECISION="tf32x3", NATIVE_HALF=True)
        label = "cross_image_kl" if kl else "pairwise_mse"
        warps = dict(num_warps=affinity_triton.NUM_WARPS, maxnreg=affinity_triton.MAX_REGISTERS)
        out.append(Build(f"{label} forward", affinity_triton._affinity_forward_kernel, tiles, ("x_ptr", "y_ptr"),
                         options=warps))  # fmt: skip
        for columns in (False, True) if kl else (False,):
            out.append(Build(f"{label} backward {'columns' if columns else 'rows'} (C_s 128)",
                             affinity_triton._affinity_backward_kernel,
                             dict(tiles, COLUMNS=columns, BLOCK_OUT=block_out), ("x_ptr", "y_ptr"),
                             options=warps))  # fmt: skip
    return out


def compile_build(build: Build, arch: int, dtype: str) -> triton.compiler.CompiledKernel:
    names = build.kernel.arg_names
    signature = {}
    for name in names:
        if name in build.constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = DTYPES[dtype] if name in build.inputs else "*fp32"
        else:
            signature[name] = "fp32" if name in build.floats else "i32"
    constexprs = {(names.index(name),): value for name, value in build.constexprs.items()}
    source = ASTSource(fn=build.kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=build.options or None)


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED, LOCAL, ... of a cubin, as printed by cuobjdump -res-usage."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        text = subprocess.run(
            [str(tool), "-res-usage", file.name], capture_output=True, text=True, check=True
        ).stdout
    return {key: int(value) for key, value in re.findall(r"([A-Z]+):(\d+)", text)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", choices=sorted(LIMITS), help="compute capability x 10 (default: 90)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="input dtype (default fp32)")
    parser.add_argument("--fail-on-spill", action="store_true", help="exit 1 if any kernel spills registers")
    parser.add_argument("--fail-below-occupancy", action="store_true",
                        help=f"exit 1 if any kernel's occupancy is below {MIN_OCCUPANCY:.0%}")  # fmt: skip
    args = parser.parse_args(argv)
    rows = []
    for arch in args.arch or [90]:
        for build in builds():
            compiled = compile_build(build, arch, args.dtype)
            usage = resource_usage(compiled.asm["cubin"])
            warps, registers, shared = compiled.metadata.num_warps, usage.get("REG", 0), compiled.metadata.shared
            blocks, fraction = occupancy(arch, warps, registers, shared)
            rows.append((build.name, f"sm_{arch}", warps, registers, usage.get("LOCAL", 0), shared, blocks,
                         f"{fraction:.1%}", tensor_core_inputs(compiled.asm["ptx"])))  # fmt: skip
    header = ("kernel", "arch", "warps", "registers", "spill (local bytes)", "shared bytes", "blocks / SM",
              "occupancy", "tensor-core inputs")  # fmt: skip
    widths = [max(len(str(row[col])) for row in [header, *rows]) for col in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    spilled = [f"{row[0]} ({row[1]})" for row in rows if row[4]]
    if args.fail_on_spill and spilled:
        raise SystemExit(f"register spills in: {', '.join(spilled)}")
    low = [f"{row[0]} ({row[1]}, {row[7]})" for row in rows if float(row[7].rstrip("%")) < 100 * MIN_OCCUPANCY]
    if args.fail_below_occupancy and low:
        raise SystemExit(f"occupancy below {MIN_OCCUPANCY:.0%} in: {', '.join(low)}")


if __name__ == "__main__":
    main()
