"""Build a TensorRT engine from an ONNX export (TensorRT Python API, versions 10.3 to 11.x), on the GPU
where it will run, then gate it against PyTorch on that GPU.

    python export/to_trt.py --onnx RUN/final/export/model.onnx [--precision fp32|fp16|bf16|int8]
        [--shapes 1x3x256x512/1x3x512x1024/4x3x1024x2048 | --max-batch 8] [--workspace 4] [--timing-cache FILE]
        [--opt-level 3] [--out model.plan] [--reuse] [--data camvid:ROOT --parity-images N]

Precision comes from the ONNX: the network is strongly typed, so an FP16 / BF16 graph
(``to_onnx.py --precision fp16``) gives an FP16 / BF16 engine and a QDQ graph (``to_int8.py``) an INT8
one. Asking for FP16 or BF16 from an FP32 graph uses the builder's FP16 / BF16 flag on a weakly typed
network, which only TensorRT 10 still has (TensorRT 11 removed those flags and the INT8 calibrators).
Dynamic dimensions get one optimisation profile: ``--shapes MIN/OPT/MAX`` (N x 3 x H x W each), or by
default the shape range the ONNX's parity gate vouched for (its sidecar's ``shape_range``; the export
size for an older sidecar) with a dynamic batch from 1 to ``--max-batch`` (8); the profile used is printed. The
timing cache (``--timing-cache``) is read before and written after the build, so rebuilds are fast.

Writes the plan and its sidecar (TensorRT and CUDA versions, GPU name and compute capability, shapes,
precision, source ONNX hash). ``--reuse`` keeps an existing plan whose sidecar matches all of these
(the container's first-start build uses it). Without TensorRT or a GPU it exits (status 2) saying
what to install or where to run it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx
import torch

from segdistill.atomic_files import atomic_write_bytes
from segdistill.checkpoint import resolve_model_path, sha256_of
from segdistill.deploy.artifact import ArtifactError, ArtifactInfo, read_artifact_info, sidecar_path
from segdistill.deploy.backends.trt_engine import gpu_description, require_cuda, tensorrt_module
from segdistill.deploy.shapes import ImageShape, accepts, parse_shape
from segdistill.errors import ConfigError, command
from segdistill.export.onnx_graph import graph_precision
from segdistill.export.parity import ParityReport, add_parity_arguments, gate_artifact

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
BUILDER_FLAGS = {"fp16": "FP16", "bf16": "BF16"}
DEFAULT_MAX_BATCH = 8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", required=True, help="ONNX from export/to_onnx.py or to_int8.py (with its sidecar)")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: the ONNX graph's own")
    parser.add_argument(
        "--shapes", help="MIN/OPT/MAX input shapes (N x 3 x H x W) for the dynamic dimensions (default: the export size, batch 1 to --max-batch)"
    )
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="largest batch of the default profile of a dynamic batch")
    parser.add_argument("--workspace", type=float, default=4.0, help="builder workspace limit in GiB")
    parser.add_argument("--timing-cache", help="timing cache file, read if it exists and written after the build")
    parser.add_argument("--opt-level", type=int, default=3, choices=range(6), help="builder optimisation level (0-5)")
    parser.add_argument("--out", help="plan file (default: beside the ONNX, NAME_PRECISION.plan)")
    parser.add_argument("--reuse", action="store_true", help="keep an existing plan built from the same ONNX here")
    parser.add_argument("--checkpoint", help="the source checkpoint, if not where the sidecar says (e.g. mounted in a container)")
    add_parity_arguments(parser)
    return parser.parse_args(argv)


def sidecar_profile(info: ArtifactInfo, traced: ImageShape, max_batch: int) -> tuple[ImageShape, ImageShape, ImageShape]:
    """(min, opt, max) from the sidecar alone: the shape range its parity gate vouched for (``shape_range``),
    else the export shape; a dynamic batch goes from the range's smallest up to ``max_batch``."""
    if max_batch < 1:
        raise ConfigError(f"--max-batch {max_batch}: expected 1 or more")
    if info.shape_range:
        low, opt, high = (parse_shape(info.shape_range[k], f"{info.file} sidecar: shape_range.{k}") for k in ("min", "opt", "max"))
    else:
        low = opt = high = traced
    if "batch" not in info.dynamic_axes().values():
        return low, opt, high
    return ImageShape(1, low.height, low.width), opt, ImageShape(max(high.batch, max_batch), high.height, high.width)


def profile_shapes(args: argparse.Namespace, info: ArtifactInfo, traced: ImageShape) -> tuple[ImageShape, ImageShape, ImageShape]:
    """(min, opt, max): ``--shapes``, else :func:`sidecar_profile`; all the traced shape for a static graph."""
    if not args.shapes:
        return sidecar_profile(info, traced, args.max_batch)
    parts = args.shapes.split("/")
    if len(parts) != 3:
        raise ConfigError(f"--shapes {args.shapes!r}: expected MIN/OPT/MAX, e.g. 1x3x256x512/1x3x512x1024/4x3x1024x2048")
    low, opt, high = (parse_shape(p, "--shapes") for p in parts)
    for shape in (low, opt, high):
        if not accepts(info.input.shape, info.input.layout, shape):
            raise ConfigError(f"--shapes: {shape} does not fit the ONNX input {info.input.shape} ({info.input.layout})")
    dims = [(s.batch, s.height, s.width) for s in (low, opt, high)]
    if not all(a <= b <= c for a, b, c in zip(*dims, strict=True)):
        raise ConfigError(f"--shapes {args.shapes!r}: each dimension must satisfy MIN <= OPT <= MAX")
    return low, opt, high


def network_flags(trt: ModuleType, strongly_typed: bool) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if strongly_typed and flag is not None else 0


def build_plan(
    trt: ModuleType,
    onnx_path: Path,
    precision: str,
    graph: str,
    shapes: tuple[ImageShape, ImageShape, ImageShape],
    layout: str,
    workspace_gib: float,
    opt_level: int,
    timing_cache: Path | None,
) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = precision == graph
    network = builder.create_network(network_flags(trt, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT's ONNX parser rejected {str(onnx_path)!r}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    config.builder_optimization_level = opt_level
    if not strongly_typed:
        flag = getattr(trt.BuilderFlag, BUILDER_FLAGS[precision], None)
        if flag is None:
            raise ConfigError(
                f"TensorRT {trt.__version__} has no {precision.upper()} builder flag (networks are strongly typed): export an "
                f"{precision.upper()} graph instead, python export/to_onnx.py --precision {precision} ..."
            )
        config.set_flag(flag)
    tensor = network.get_input(0)
    if -1 in tuple(tensor.shape):
        profile = builder.create_optimization_profile()
        profile.set_shape(tensor.name, *(s.tensor_shape(layout) for s in shapes))
        if config.add_optimization_profile(profile) < 0:  # the index of the profile, -1 when it is invalid
            raise ArtifactError(f"TensorRT rejected the optimisation profile {[str(s) for s in shapes]} for input {tensor.name!r}")
    attach_timing_cache(config, timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ArtifactError(
            f"TensorRT could not build an engine from {str(onnx_path)!r} (build_serialized_network returned nothing). "
            "Its log above says why; common causes: --workspace too small, a layer without an implementation at "
            "this precision, or --shapes the graph cannot take"
        )
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def attach_timing_cache(config: Any, path: Path | None) -> None:
    """Give the build the timing cache read from ``path``, or an empty one. ``set_timing_cache`` returns
    False for a cache that another TensorRT version or GPU wrote: then warn and start an empty one, which
    replaces the file after the build."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    for blob in (data, b"") if data else (b"",):
        cache = config.create_timing_cache(blob)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return
        if blob:
            reason = "does not fit this TensorRT / GPU (set_timing_cache returned False)"
            print(f"warning: timing cache {path} {reason}: building with an empty one, which replaces it", file=sys.stderr)
    raise ArtifactError("TensorRT could not attach an empty timing cache (set_timing_cache returned False); see its log above")


def build_facts(trt: ModuleType, args: argparse.Namespace, onnx_path: Path, precision: str, shapes: tuple[ImageShape, ...]) -> dict[str, Any]:
    """What makes an engine valid: the same facts mean the same engine (``--reuse``)."""
    return {
        "version": trt.__version__,
        "onnx": str(onnx_path),
        "onnx_sha256": sha256_of(onnx_path),
        "gpu": gpu_description(torch.device("cuda")),
        "precision": precision,
        "profile": {"min": str(shapes[0]), "opt": str(shapes[1]), "max": str(shapes[2])},
        "builder_optimization_level": args.opt_level,
        "workspace_gib": args.workspace,
    }


def reusable(plan: Path, facts: dict[str, Any]) -> bool:
    if not plan.is_file() or not sidecar_path(plan).is_file():
        return False
    try:
        built = read_artifact_info(plan).extra.get("tensorrt", {})
    except ArtifactError:
        return False
    return all(built.get(k) == v for k, v in facts.items())


def locate_checkpoint(info: ArtifactInfo, override: str | None) -> None:
    """The parity gate's reference is the source checkpoint: find it before a long build, and accept a
    copy elsewhere only if its weights are the ones the ONNX was exported from."""
    path = Path(override or info.source["checkpoint"])
    if not (path / "model.json").is_file():
        raise ArtifactError(
            f"the source checkpoint {str(path)!r} (the parity gate's reference) is not here: pass --checkpoint FOLDER"
        )
    weights = sha256_of(resolve_model_path(path)[0])
    if weights != info.source["weights_sha256"]:
        raise ArtifactError(f"checkpoint {str(path)!r} has other weights (SHA-256 {weights}) than the ONNX was exported from")
    info.source["checkpoint"] = str(path.resolve())


def main(argv: list[str] | None = None) -> ParityReport | None:
    args = parse_args(argv)
    onnx_path = Path(args.onnx)
    info = read_artifact_info(onnx_path)
    if info.kind != "onnx":
        raise ArtifactError(f"--onnx {str(onnx_path)!r} is a {info.kind} artifact; TensorRT builds from ONNX")
    graph = graph_precision(onnx.load(str(onnx_path), load_external_data=False))
    precision = args.precision or graph
    if precision != graph and not (graph == "fp32" and precision in BUILDER_FLAGS):
        raise ConfigError(
            f"--precision {precision}: the ONNX is an {graph} graph and precision comes from the graph. "
            + ("For INT8 quantize it first: python export/to_int8.py --onnx ..." if precision == "int8" else f"Use --precision {graph}.")
        )
    locate_checkpoint(info, args.checkpoint)
    traced = parse_shape(info.extra["traced_at"], f"{onnx_path} sidecar: extra.traced_at")
    shapes = profile_shapes(args, info, traced)
    origin = "--shapes" if args.shapes else "the export size in the sidecar, a dynamic batch up to --max-batch; --shapes widens it"
    print(f"optimisation profile ({origin}): min {shapes[0]}, opt {shapes[1]}, max {shapes[2]}")
    trt = tensorrt_module()
    require_cuda("building a TensorRT engine")
    plan = Path(args.out) if args.out else onnx_path.with_name(f"{onnx_path.stem}_{precision}.plan")
    facts = build_facts(trt, args, onnx_path, precision, shapes)
    if args.reuse and reusable(plan, facts):
        print(f"{plan} was built from the same ONNX with TensorRT {trt.__version__} on this GPU: reused")
        return None
    print(f"building {plan} ({precision}, TensorRT {trt.__version__}, {facts['gpu']['name']}, profile {facts['profile']})")
    started = time.perf_counter()
    data = build_plan(trt, onnx_path, precision, graph, shapes, info.input.layout, args.workspace, args.opt_level, Path(args.timing_cache) if args.timing_cache else None)
    seconds = time.perf_counter() - started
    atomic_write_bytes(plan, data)
    info.kind, info.precision, info.parity = "tensorrt", precision, None
    info.source = {**info.source, "artifact": str(onnx_path.resolve()), "artifact_sha256": facts["onnx_sha256"]}
    info.versions.update(tensorrt=trt.__version__, cuda=str(torch.version.cuda))
    info.extra["tensorrt"] = {**facts, "strongly_typed": precision == graph, "timing_cache": args.timing_cache, "build_seconds": round(seconds, 1)}
    print(f"built in {seconds:.1f} s")
    dynamic_shapes = [shapes[0], shapes[2]] if info.dynamic_axes() else []
    return gate_artifact(plan, info, shapes[1], args, backend="tensorrt", device="cuda", shapes=[shapes[1], *dynamic_shapes])


# exit status: 0 written and its parity gate passed, 1 the gate failed, 2 a user's mistake (one line on stderr).
cli = command(main, lambda report: 0 if report is None or report.passed else 1)


if __name__ == "__main__":
    sys.exit(cli())
