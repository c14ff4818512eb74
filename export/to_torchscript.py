"""Export a student checkpoint to TorchScript (traced, and scripted where the model allows) and to a
``torch.export`` program (.pt2), each gated against PyTorch like the ONNX export.

    python export/to_torchscript.py --checkpoint RUN/final [--shape 1x3x360x480] [--dynamic batch,height,width]
        [--output logits|labels] [--fold-normalize] [--formats trace,script,export] [--data camvid:ROOT]

TorchScript is what LibTorch (C++) runtimes load; PyTorch has deprecated it in favour of torch.export,
whose programs (.pt2) are the forward-looking form, so both are written. ``--out`` names the traced
file (default CHECKPOINT/export/model.ts); the scripted one and the program sit beside it
(model.scripted.ts, model.pt2). The exit status is 1 when any written artifact fails its gate.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch.export import Dim

from segdistill.atomic_files import atomic_path
from segdistill.deploy.shapes import ImageShape
from segdistill.deploy.wrapper import INPUT_NAME, DeployModel, load_deploy_model
from segdistill.errors import ConfigError, command
from segdistill.export.options import (
    add_model_arguments,
    export_shape,
    model_name,
    parse_dynamic,
    traced_shape,
)
from segdistill.export.parity import ParityReport, add_parity_arguments, gate_artifact
from segdistill.export.shape_generic import shape_generic_padding
from segdistill.export.to_onnx import example_input, input_axes

FORMATS = ("trace", "script", "export")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"which of {', '.join(FORMATS)} to write")
    add_parity_arguments(parser)
    return parser.parse_args(argv)


def trace(model: DeployModel, shape: ImageShape, path: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.trace is deprecated": known, see the docstring
        traced = torch.jit.trace(model, (example_input(model, shape),))
        torch.jit.save(traced, str(tmp))


def script(model: DeployModel, path: Path) -> None:
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), str(tmp))


def export_program(model: DeployModel, shape: ImageShape, dynamic: set[str], path: Path, name: str) -> None:
    """Write ``model``'s torch.export program to ``path``; one message naming ``name`` if torch.export
    cannot (the file already at ``path`` is kept)."""
    axes = input_axes(model, dynamic)
    dynamic_shapes = {INPUT_NAME: dict.fromkeys(axes, Dim.DYNAMIC)} if axes else None
    try:
        # As torch.onnx does: reason about a dynamic size without specialising on the example's 0 / 1 sizes.
        with torch.fx.experimental._config.patch(backed_size_oblivious=True), shape_generic_padding():
            program = torch.export.export(model, (example_input(model, shape),), dynamic_shapes=dynamic_shapes)
        with atomic_path(path) as tmp:
            torch.export.save(program, str(tmp))
    except Exception as err:  # torch.export rejects some Python in models (tracing or serializing): say which model
        reason = " ".join(str(err).split())[:300]
        raise ConfigError(
            f"torch.export cannot write a {'dynamic (' + ', '.join(sorted(dynamic)) + ') ' if dynamic else ''}program "
            f"of {name}, so {str(path)!r} is left as it was: {reason}. The traced .ts and the ONNX export "
            "(export/to_onnx.py) do not depend on torch.export; tested with --dynamic batch,height,width: timm "
            "resnet / resnet10t, mobilenetv2, tf_efficientnet(_lite), lcnet, torchvision resnet"
        ) from None


def main(argv: list[str] | None = None) -> list[ParityReport]:
    args = parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or set(formats) - set(FORMATS):
        raise ConfigError(f"--formats {args.formats!r}: choose from {', '.join(FORMATS)}")
    dynamic = parse_dynamic(args.dynamic)
    model, meta = load_deploy_model(args.checkpoint, args.output, args.fold_normalize)
    shape = export_shape(args, meta)
    traced_path = Path(args.out) if args.out else Path(args.checkpoint) / "export" / "model.ts"
    traced_path.parent.mkdir(parents=True, exist_ok=True)
    paths = {
        "trace": traced_path,
        "script": traced_path.with_name(traced_path.stem + ".scripted.ts"),
        "export": traced_path.with_suffix(".pt2"),
    }
    reports = []
    for fmt in formats:
        path = paths[fmt]
        if fmt == "trace":
            trace(model, shape, path)
        elif fmt == "script":
            try:
                script(model, path)
            except Exception as err:  # TorchScript's compiler rejects much of modern Python: report and go on
                reason = " ".join(str(err).split())[:300]
                print(f"not scriptable, so no {path.name} (the traced {paths['trace'].name} serves): {reason}")
                continue
        else:
            export_program(model, shape, dynamic, path, model_name(meta))
        kind = "torch_export" if fmt == "export" else "torchscript"
        info = model.artifact_info(kind, meta, args.checkpoint, traced_shape(shape, dynamic))
        info.extra.update(method=fmt, traced_at=str(shape))
        print(f"wrote {path}")
        reports.append(gate_artifact(path, info, shape, args))
    return reports


# exit status: 0 written and every parity gate passed, 1 a gate failed, 2 a user's mistake (one line on stderr).
cli = command(main, lambda reports: 0 if all(report.passed for report in reports) else 1)


if __name__ == "__main__":
    sys.exit(cli())
