"""``to_int8.py --sensitivity`` (issue 14, item 3): a layer whose INT8 quantization was made destructive
(without changing the FP32 function) is ranked first, ``--keep-float-top 1`` keeps it in float, and an
unknown ``--keep-float`` layer is one message."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from safetensors.torch import load_file, save_file

from segdistill.checkpoint import FORMAT
from segdistill.deploy.backends.ort_session import fused_nodes
from segdistill.errors import ConfigError
from segdistill.export import to_int8, to_onnx
from segdistill.train import main as train
from tests.helpers import TINY


@pytest.fixture(scope="module")
def student_onnx(tmp_path_factory) -> Path:
    """The tiny student trained a little (its labels follow the scenes), then changed so that head.convs.1.0
    reads one channel of ~1e4 through zero weights: the FP32 function ignores it, but that layer's
    per-tensor INT8 input scale (min-max) becomes ~1e4 / 127, which rounds every other channel to zero."""
    run = tmp_path_factory.mktemp("sensitivity")
    train([*TINY, "train.iterations=40", "train.eval_interval=40", "train.checkpoint_interval=40", "model.aux_head=false", f"output_dir={run}"])
    checkpoint = run / "final"
    weights = load_file(checkpoint / "model.safetensors")
    weights["head.convs.0.1.bias"][0] = 1e4  # after the ReLU: a channel of ~1e4 ...
    weights["head.convs.1.0.weight"][:, 0] = 0  # ... that the next convolution ignores
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": FORMAT})
    out = checkpoint / "model.onnx"
    assert to_onnx.main(["--checkpoint", str(checkpoint), "--out", str(out)]).passed
    return out


def test_the_layer_made_destructive_is_ranked_first_and_kept_float(student_onnx: Path, tmp_path: Path) -> None:
    """The ~1e4 channel is the output of head.convs.0.0 and the input of head.convs.1.0: ONNX Runtime's QDQ
    quantizes a tensor between two layers for either of them, so both lose the same and rank first, far
    ahead of every other layer; keeping both in float gives back the labels."""
    argv = ["--onnx", str(student_onnx), "--data", "synthetic", "--calibration-images", "8", "--method", "minmax"]
    destructive = {"head.convs.0.0", "head.convs.1.0"}
    all_int8 = to_int8.main([*argv, "--out", str(tmp_path / "all.onnx")])
    kept = to_int8.main([*argv, "--sensitivity", "--keep-float-top", "2", "--out", str(tmp_path / "int8.onnx")])
    table = json.loads((tmp_path / "int8_sensitivity.json").read_text())
    rows = table["layers"]
    assert {row["layer"] for row in rows[:2]} == destructive, table
    assert min(row["drop"] for row in rows[:2]) > 5 > max(row["drop"] for row in rows[2:])
    assert (tmp_path / "int8_sensitivity.txt").read_text().splitlines()[2].split()[0] in destructive
    sidecar = json.loads((tmp_path / "int8.onnx.json").read_text())
    assert set(sidecar["extra"]["quantization"]["kept_float"]) == destructive
    agreement = [min(check.label_agreement for check in report.checks) for report in (all_int8, kept)]
    assert agreement[0] < 0.9 < agreement[1], agreement
    # the ranking calibrates once and reuses the ranges: the graph equals one calibrated afresh for the same layers
    to_int8.main([*argv, "--keep-float", *sorted(destructive), "--out", str(tmp_path / "named.onnx")])
    scales = [{t.name: t.SerializeToString() for t in onnx.load(str(tmp_path / name)).graph.initializer} for name in ("int8.onnx", "named.onnx")]
    assert scales[0] == scales[1] and any(name.endswith("_scale") for name in scales[0])
    # For ONNX Runtime's own target, Q / DQ around a convolution run as one int8 node: fewer nodes than the graph holds
    to_int8.main([*argv, "--target", "onnxruntime-cpu", "--keep-float", *sorted(destructive), "--out", str(tmp_path / "cpu.onnx")])
    assert fused_nodes(tmp_path / "cpu.onnx") < len(onnx.load(str(tmp_path / "cpu.onnx")).graph.node)


def test_an_unknown_keep_float_layer_is_one_message(student_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown layer 'head.convs.9'.*--keep-float.*head.convs.1.0"):
        to_int8.main(["--onnx", str(student_onnx), "--data", "synthetic", "--calibration-images", "4", "--keep-float", "head.convs.9", "--out", str(tmp_path / "x.onnx")])
