"""The parity gate of an exported artifact through another backend than the one its export gated it on
(e.g. an ONNX file in ONNX Runtime's CUDA provider), printed as one JSON line; the sidecar is left as is.

    python scripts/gpu_check_parity.py --artifact RUN/final/export/model.onnx --backend ort-cuda --device cuda

The artifact runs against the FP32 PyTorch model of its checkpoint at its export shape, with the
thresholds of its precision (docs/deployment.md); exit status 1 when the gate fails. Used by
scripts/gpu_check.py.
"""

from __future__ import annotations

import argparse
import json
import sys

from segdistill.deploy.accuracy import default_shape
from segdistill.deploy.backends import load_predictor
from segdistill.deploy.backends.torch_modules import eager_predictor
from segdistill.deploy.shapes import parse_shape
from segdistill.errors import command
from segdistill.export.parity import THRESHOLDS, run_parity


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", required=True, help="exported file with its sidecar")
    parser.add_argument("--backend", required=True, help="ort-cpu, ort-cuda, ort-tensorrt or tensorrt")
    parser.add_argument("--device", default="cpu", help="where the PyTorch reference runs")
    args = parser.parse_args(argv)
    artifact = load_predictor(args.artifact, args.backend, args.device)
    info = artifact.info
    reference = eager_predictor(info.source["checkpoint"], args.device, info.output_kind, info.normalization_in_graph)
    traced = info.extra.get("traced_at")
    shape = parse_shape(traced, "sidecar extra.traced_at") if traced else default_shape(info.data)
    report = run_parity(reference, artifact, [shape], THRESHOLDS[info.precision])
    print(report.table(), file=sys.stderr)
    print(json.dumps(report.to_dict()))
    return report.passed


if __name__ == "__main__":  # 2: an artifact without its sidecar, a backend that cannot run here
    sys.exit(command(main, lambda passed: 0 if passed else 1)())
