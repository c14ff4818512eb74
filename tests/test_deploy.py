"""Deployment: predictors over the PyTorch backends, TorchScript / torch.export exports, the accuracy
path against the training side's evaluation, latency statistics and the benchmark's report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segdistill import evaluate as evaluate_command
from segdistill.checkpoint import load_model
from segdistill.config import DataConfig, EvalConfig
from segdistill.data.loader import eval_loader
from segdistill.deploy import benchmark
from segdistill.deploy.accuracy import evaluate, open_dataset
from segdistill.deploy.artifact import ArtifactError, read_artifact_info
from segdistill.deploy.backends import load_predictor
from segdistill.deploy.backends.torch_modules import eager_predictor
from segdistill.deploy.latency import LatencyStats
from segdistill.evaluation import confusion_matrix
from segdistill.export import to_torchscript
from segdistill.parsing import parse_dataclass
from tests.helpers import run_python
from tests.test_export import PARITY, SIZE, save_student


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return save_student(tmp_path_factory.mktemp("student"), "fcn", seed=4)


@pytest.fixture(scope="module")
def torch_artifacts(student) -> tuple[Path, Path]:
    """Traced TorchScript and a torch.export program, dynamic in height and width."""
    traced = student / "export" / "model.ts"
    reports = to_torchscript.main(["--checkpoint", str(student), "--dynamic", "height,width", "--formats", "trace,export", *PARITY])
    assert [r.passed for r in reports] == [True, True], "\n".join(r.table() for r in reports)
    # the export shape, an odd size and the four corners of the height x width range
    assert all(len({c.shape for c in r.checks if c.inputs.endswith("resized")}) == 6 for r in reports)
    return traced, traced.with_suffix(".pt2")


def test_latency_statistics_by_hand() -> None:
    stats = LatencyStats.from_samples([float(v) for v in range(1, 101)], batch=2)
    assert (stats.mean_ms, stats.p50_ms, stats.min_ms, stats.max_ms) == (50.5, 50.5, 1.0, 100.0)
    assert stats.p90_ms == pytest.approx(90.1) and stats.p99_ms == pytest.approx(99.01)
    std = (sum((v - 50.5) ** 2 for v in range(1, 101)) / 99) ** 0.5
    assert stats.cv == pytest.approx(std / 50.5) and stats.throughput == pytest.approx(2000 / 50.5)


def test_deployed_accuracy_equals_the_training_side_evaluation(student) -> None:
    """uint8 images through the predictor's own preprocessing give the mIoU that distill's evaluation
    (torchvision transforms, DataLoader, upsampled logits) gives for the same checkpoint."""
    model, meta = load_model(student)
    data_cfg = parse_dataclass(DataConfig, meta["data"], "data")
    dataset = open_dataset(None, meta["data"])
    expected = confusion_matrix(model, eval_loader(dataset, data_cfg), dataset.info.num_classes, 255, EvalConfig(), torch.device("cpu")).result()
    got = evaluate(eager_predictor(student), dataset, progress=False)
    assert got.miou == pytest.approx(expected.miou, abs=1e-3)
    assert np.allclose(got.iou, expected.iou, atol=2e-3, equal_nan=True)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (":../shared/data/camvid", "--data ':../shared/data/camvid': expected NAME or NAME:ROOT, e.g. --data camvid:"),
        ("camvid:", "--data 'camvid:': expected NAME or NAME:ROOT, e.g. --data camvid:"),
        ("camvd:../shared/data/camvid", "unknown dataset 'camvd' (at --data). Did you mean 'camvid'?"),
    ],
    ids=["no-name", "no-root", "unknown-name"],
)
def test_a_malformed_data_option_is_one_message_in_every_command(student, tmp_path, capsys, value: str, message: str) -> None:
    """evaluate (and teacher_entropy, through its data_config) and the deploy side (benchmark, parity, to_int8,
    through open_dataset) read ``--data`` with segdistill.data's one parser."""
    commands = {
        "evaluate": lambda: evaluate_command.cli(["--checkpoint", str(student), "--data", value, "--output", str(tmp_path / "e")]),
        "benchmark": lambda: benchmark.cli(["--artifact", str(student), "--data", value, "--output", str(tmp_path / "b")]),
    }
    for name, command in commands.items():
        assert command() == 2, name
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(f"error: {message}"), (name, errors)


def test_every_torch_backend_predicts_the_same_labels(student, torch_artifacts) -> None:
    traced, program = torch_artifacts
    images = np.random.default_rng(0).integers(0, 256, size=(1, 33, 61, 3), dtype=np.uint8)
    expected = eager_predictor(student).predict(images)
    assert expected.shape == (1, 33, 61) and expected.dtype == np.int32
    for path in (traced, program):
        assert np.array_equal(load_predictor(path).predict(images), expected)
    info = read_artifact_info(traced)
    assert info.input.shape == [1, 3, "height", "width"] and info.extra["method"] == "trace"


def test_backend_and_artifact_must_fit(student, torch_artifacts, tmp_path) -> None:
    traced, _ = torch_artifacts
    with pytest.raises(ArtifactError, match="opens onnx artifacts"):
        load_predictor(traced, "ort-cpu")
    with pytest.raises(ArtifactError, match="only the 'eager' backend"):
        load_predictor(student, "torchscript")
    with pytest.raises(ArtifactError, match="does not fit"):
        load_predictor(traced).predict(np.zeros((2, *SIZE, 3), np.uint8))  # batch fixed at 1
    copy = tmp_path / "copy.ts"
    copy.write_bytes(traced.read_bytes())
    with pytest.raises(ArtifactError, match="no sidecar"):
        load_predictor(copy)


def test_benchmark_reports_latency_and_accuracy(student, torch_artifacts, tmp_path) -> None:
    traced, _ = torch_artifacts
    other = save_student(tmp_path / "other", "fcn", seed=5)
    out = tmp_path / "bench"
    artifacts = [a for path in (student, traced, other) for a in ("--artifact", str(path))]
    results = benchmark.main([*artifacts, "--data", "synthetic", "--images", "3", "--threads", "1", "--output", str(out)])
    assert [r["backend"] for r in results] == ["eager", "torchscript", "eager"]
    # the share of labels equal to the first artifact's, against the predictors' own labels on the same images
    dataset = open_dataset("synthetic", read_artifact_info(traced).data)
    first, second = eager_predictor(student), eager_predictor(other)
    images = np.stack([dataset[i][0].permute(1, 2, 0).numpy() for i in range(3)])
    expected = float((first.predict(images) == second.predict(images)).mean())
    assert [r["accuracy"]["labels_equal_to_first"] for r in results] == pytest.approx([1.0, 1.0, expected]) and expected < 1
    for r in results:
        assert r["shape"] == f"1x3x{SIZE[0]}x{SIZE[1]}" and r["compute"]["iterations"] == 200
        assert r["end_to_end"]["p50_ms"] <= r["end_to_end"]["p99_ms"] and r["compute"]["cv"] >= 0
    assert results[0]["accuracy"]["miou"] == pytest.approx(results[1]["accuracy"]["miou"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["environment"]["cpu"]["logical_cores"] and len(saved["results"]) == 3
    markdown = (out / "results.md").read_text()
    assert "| model.ts | torchscript | fp32 |" in markdown and "1.00x / 1.00x" in markdown and "| 100.00 |" in markdown
    assert (out / "latency_vs_miou.png").stat().st_size > 1000


def test_benchmark_rows_are_named_by_as_much_of_the_path_as_tells_them_apart() -> None:
    assert benchmark.row_names(["/r/fcn/model.onnx", "/r/fcn/model_int8.onnx"]) == ["model.onnx", "model_int8.onnx"]
    assert benchmark.row_names(["/r/a/fcn/model.onnx", "/r/b/lraspp/model.onnx", "/r/c/lraspp/int8.onnx"]) == [
        "fcn/model.onnx",
        "lraspp/model.onnx",
        "lraspp/int8.onnx",
    ]
    assert benchmark.row_names(["/x/run/final", "/y/run/final"]) == ["x/run/final", "y/run/final"]


def test_benchmark_runs_as_a_file_and_refuses_too_few_iterations(student) -> None:
    result = run_python(["deploy/benchmark.py", "--artifact", str(student), "--iterations", "20"], timeout=300)
    assert result.returncode == 2 and "at least 200" in result.stderr
