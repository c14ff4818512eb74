"""The parity gate that every export runs: the artifact against PyTorch on the same uint8 images.

Inputs are images at every shape checked (the export shape, and for a dynamic graph one more with other
values of each dynamic dimension plus every corner of the shape range the artifact vouches for, which
its sidecar states): the first images of a dataset resized to that shape when one is given (quantized
graphs are calibrated for real images, not noise), random ones otherwise; plus all the dataset's images
at their own size.
Reported: the largest absolute difference of the logits (for graphs that output logits), the share of
pixels with equal labels, and on a dataset the mIoU of both. An artifact passes when the labels agree on
at least ``min_label_agreement`` of the pixels and the mIoU is within ``max_miou_delta`` points.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from segdistill.deploy.accuracy import check_classes, image_batches, open_dataset
from segdistill.deploy.artifact import ArtifactInfo, write_artifact_info
from segdistill.deploy.backends import load_predictor
from segdistill.deploy.backends.torch_modules import eager_predictor
from segdistill.deploy.predictor import Predictor
from segdistill.deploy.shapes import ImageShape, ShapeRange, accepts, default_range, parse_range, parse_shape
from segdistill.errors import ConfigError
from segdistill.labels import resize_labels
from segdistill.metrics import ConfusionMatrix


@dataclass(frozen=True)
class Thresholds:
    min_label_agreement: float  # share of pixels with the same label as PyTorch
    max_miou_delta: float  # mIoU points (0-100) between the artifact and PyTorch on a dataset
    # at the shapes checked, on images resized (squeezed) to them, where the model itself is unsure; None: as above
    min_resized_agreement: float | None = None

    def agreement_for(self, check: ParityCheck) -> float:
        resized = check.inputs.endswith("resized") and self.min_resized_agreement is not None
        return self.min_resized_agreement if resized else self.min_label_agreement


SHAPE_IMAGES = 8  # images per shape checked (whole batches): the labels of one image are too few to judge by

# FP32: the gate README.md and docs/deployment.md promise; lower precisions are compared with the FP32 PyTorch model.
THRESHOLDS = {
    "fp32": Thresholds(0.999, 0.1),
    "fp16": Thresholds(0.995, 0.3),
    "bf16": Thresholds(0.99, 0.5),
    # INT8 flips near-ties; at the deployment size, on the dataset, it must still agree on 95% (measured:
    # 96-97% on the CamVid student), on images resized to the range's corners on 90% (measured: 94-97%)
    "int8": Thresholds(0.95, 1.0, 0.90),
    # INT8 from quantization-aware training, against its own fake-quantized PyTorch model (same scales; only
    # the rounding of float sums differs). A quantized network amplifies that rounding: one activation a step
    # off moves the next layers' steps. Measured on the CamVid MobileNetV2 student: the fake-quantized model
    # agrees with itself on 97.7% of the labels when its input moves by 1e-6 (the FP32 model: 99.9994%), and
    # the QDQ graph agrees with it on 97.6-98.9% (ONNX Runtime, graph optimisations on or off). 99.5% would be
    # below the model's own noise; the mIoU must still agree within 0.3.
    "int8-qat": Thresholds(0.97, 0.3),
}


@dataclass
class ParityCheck:
    inputs: str  # "random", "DATASET/SPLIT" (its images at their size) or "... resized"
    shape: str
    images: int
    label_agreement: float
    max_abs_error: float | None = None  # None where the graph outputs labels
    miou_reference: float | None = None  # percent
    miou_artifact: float | None = None
    error: str | None = None  # the artifact failed to run at this shape


@dataclass
class ParityReport:
    reference: str
    artifact: str
    thresholds: Thresholds
    checks: list[ParityCheck] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reference": self.reference,
            "thresholds": dataclasses.asdict(self.thresholds),
            "checks": [dataclasses.asdict(c) for c in self.checks],
            "failures": self.failures,
        }

    def table(self) -> str:
        lines = [
            f"parity: {self.artifact} vs {self.reference}",
            f"{'inputs':<24} {'shape':<16} {'images':>6} {'max |dlogit|':>12} {'labels equal':>12} {'mIoU ref':>8} {'mIoU art':>8}",
        ]
        for c in self.checks:
            err = "n/a" if c.max_abs_error is None else f"{c.max_abs_error:.2e}"
            ref = "" if c.miou_reference is None else f"{c.miou_reference:.2f}"
            art = "" if c.miou_artifact is None else f"{c.miou_artifact:.2f}"
            agree = "error" if c.error else f"{100 * c.label_agreement:.3f}%"
            lines.append(f"{c.inputs:<24} {c.shape:<16} {c.images:>6} {err:>12} {agree:>12} {ref:>8} {art:>8}")
        t = self.thresholds
        resized = "" if t.min_resized_agreement is None else f" ({100 * t.min_resized_agreement:g}% on resized images)"
        lines.append(f"thresholds: labels equal >= {100 * t.min_label_agreement:g}%{resized}, |mIoU difference| <= {t.max_miou_delta:g}")
        lines.append("PASSED" if self.passed else "FAILED:\n  " + "\n  ".join(self.failures))
        return "\n".join(lines)


def parity_shapes(
    export: ImageShape, dynamic: set[str], extra: list[ImageShape] = (), shape_range: ShapeRange | None = None
) -> list[ImageShape]:
    """The export shape; for a dynamic graph another one inside ``shape_range`` that changes every
    dynamic dimension (to sizes that are not multiples of the usual strides), and the range's corners."""
    shape_range = shape_range or default_range(export, dynamic)
    shapes = [export]
    if dynamic:
        low, high = shape_range.min, shape_range.max
        shapes.append(
            ImageShape(
                min(export.batch + 1, high.batch) if "batch" in dynamic else export.batch,
                max(low.height, export.height * 3 // 4 + 5) if "height" in dynamic else export.height,
                min(high.width, export.width * 5 // 4 + 3) if "width" in dynamic else export.width,
            )
        )
    shapes += shape_range.corners()
    return list(dict.fromkeys(shapes + list(extra)))


def raw_outputs(predictor: Predictor, images: np.ndarray) -> np.ndarray:
    return predictor.to_numpy(predictor.forward(predictor.prepare(images)))


def compare(reference: np.ndarray, artifact: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Labels of both (int32 N, H, W) and the largest logit difference (None for label outputs)."""
    if kind == "labels":
        return reference.astype(np.int32), artifact.astype(np.int32), None
    error = float(np.abs(reference.astype(np.float64) - artifact.astype(np.float64)).max())
    return reference.argmax(1).astype(np.int32), artifact.argmax(1).astype(np.int32), error


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def shape_images(shape: ImageShape, rng: np.random.Generator, dataset: Dataset | None, first: int = 0) -> np.ndarray:
    """uint8 (N, H, W, 3): the dataset's images from ``first`` on resized to H x W, or random ones."""
    if dataset is None:
        return rng.integers(0, 256, size=(shape.batch, shape.height, shape.width, 3), dtype=np.uint8)
    size = [shape.height, shape.width]
    images = [TF.resize(dataset[(first + i) % len(dataset)][0], size, antialias=True) for i in range(shape.batch)]
    return torch.stack(images).permute(0, 2, 3, 1).numpy()


def run_parity(
    reference: Predictor,
    artifact: Predictor,
    shapes: list[ImageShape],
    thresholds: Thresholds,
    dataset: Dataset | None = None,
    max_images: int | None = None,
    dataset_label: str = "dataset",
    seed: int = 0,
) -> ParityReport:
    report = ParityReport(reference.name, artifact.name, thresholds)
    rng = np.random.default_rng(seed)
    source = "random" if dataset is None else f"{dataset_label} resized"
    for shape in shapes:
        count = -(-SHAPE_IMAGES // shape.batch) * shape.batch
        equal, errors = [], []
        for first in range(0, count, shape.batch):
            images = shape_images(shape, rng, dataset, first)
            expected = raw_outputs(reference, images)
            try:
                got = raw_outputs(artifact, images)
            except Exception as err:  # whatever the artifact raises at a shape fails the gate, with its message
                report.checks.append(ParityCheck(source, str(shape), shape.batch, 0.0, error=first_line(err)))
                report.failures.append(f"{artifact.name} failed at shape {shape}: {first_line(err)}")
                break
            ref, art, error = compare(expected, got, reference.info.output_kind)
            equal.append((ref == art).mean())
            errors += [] if error is None else [error]
        else:
            report.checks.append(ParityCheck(source, str(shape), count, float(np.mean(equal)), max(errors) if errors else None))
    if dataset is not None:
        try:
            report.checks.append(dataset_check(reference, artifact, dataset, max_images, dataset_label))
        except ConfigError:  # the user's data (a missing file, other classes): their error, not the artifact's
            raise
        except Exception as err:  # the artifact failed on a real image
            report.checks.append(ParityCheck(dataset_label, "-", 0, 0.0, error=first_line(err)))
            report.failures.append(f"{artifact.name} failed on {dataset_label}: {first_line(err)}")
    for check in report.checks:
        if check.error is None and check.label_agreement < thresholds.agreement_for(check):
            report.failures.append(
                f"labels equal on {100 * check.label_agreement:.3f}% of the pixels of {check.inputs} {check.shape} "
                f"(at least {100 * thresholds.agreement_for(check):g}% required)"
            )
        if check.miou_reference is not None and abs(check.miou_artifact - check.miou_reference) > thresholds.max_miou_delta:
            report.failures.append(
                f"mIoU {check.miou_artifact:.2f} on {check.inputs} vs PyTorch {check.miou_reference:.2f} "
                f"(at most {thresholds.max_miou_delta:g} apart allowed)"
            )
    return report


def dataset_check(
    reference: Predictor, artifact: Predictor, dataset: Dataset, max_images: int | None, label: str
) -> ParityCheck:
    info = dataset.info
    check_classes(dataset, artifact.info, artifact.name)
    matrices = [ConfusionMatrix(info.num_classes, info.ignore_index) for _ in range(2)]
    equal = total = images = 0
    errors: list[float] = []
    shapes: set[str] = set()
    for batch, labels in image_batches(dataset, artifact.info, max_images):
        ref, art, error = compare(raw_outputs(reference, batch), raw_outputs(artifact, batch), reference.info.output_kind)
        equal, total, images = equal + int((ref == art).sum()), total + ref.size, images + len(batch)
        errors += [] if error is None else [error]
        shapes.add(str(ImageShape(*batch.shape[:3])))
        for matrix, pred in zip(matrices, (ref, art), strict=True):
            matrix.update(resize_labels(torch.from_numpy(pred), labels.shape[-2:]), labels)
    ref_m, art_m = (m.result().miou * 100 for m in matrices)
    return ParityCheck(
        label, ",".join(sorted(shapes)) or "-", images, equal / max(total, 1), max(errors) if errors else None, ref_m, art_m
    )


def add_parity_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("parity gate")
    group.add_argument("--data", help="check on this dataset too: NAME or NAME:ROOT (e.g. camvid:../shared/data/camvid)")
    group.add_argument("--split", help="dataset split (default: the training run's validation split)")
    group.add_argument("--parity-images", type=int, default=None, help="use the first N images of the split (default: all)")
    group.add_argument("--parity-shapes", default="", help="more shapes to check, comma-separated (N x 3 x H x W)")
    group.add_argument(
        "--shape-range",
        help="MIN/MAX (N x 3 x H x W each) the artifact vouches for, its corners gated (default for a dynamic graph: "
        "the parent's range, else batch 1 to 2x and height / width 3/4 to 4/3 of the export shape)",
    )
    group.add_argument("--min-label-agreement", type=float, help="override the precision's threshold (a share, 0-1)")
    group.add_argument("--max-miou-delta", type=float, help="override the precision's threshold (mIoU points)")


def thresholds_from(args: argparse.Namespace, precision: str) -> Thresholds:
    base = THRESHOLDS[precision]
    if args.min_label_agreement is not None:  # the user's threshold holds everywhere
        base = Thresholds(args.min_label_agreement, base.max_miou_delta)
    return Thresholds(base.min_label_agreement, base.max_miou_delta if args.max_miou_delta is None else args.max_miou_delta, base.min_resized_agreement)


def extra_shapes(args: argparse.Namespace) -> list[ImageShape]:
    return [parse_shape(s.strip(), "--parity-shapes") for s in args.parity_shapes.split(",") if s.strip()]


def vouched_range(info: ArtifactInfo, shape: ImageShape, args: argparse.Namespace, shapes: list[ImageShape] | None) -> ShapeRange:
    """The box of shapes to vouch for: around an engine's profile (``shapes``), else ``--shape-range``,
    else the range of the artifact this one derives from, else the default for its dynamic dimensions."""
    if shapes:
        dims = list(zip(*(dataclasses.astuple(s) for s in shapes), strict=True))
        found = ShapeRange(ImageShape(*map(min, dims)), shape, ImageShape(*map(max, dims)))
    elif args.shape_range:
        found = parse_range(args.shape_range, shape)
    elif info.shape_range:
        found = ShapeRange(*(parse_shape(info.shape_range[k], f"sidecar shape_range.{k}") for k in ("min", "opt", "max")))
    else:
        found = default_range(shape, set(info.dynamic_axes().values()))
    for bound in (found.min, found.max):
        if not accepts(info.input.shape, info.input.layout, bound):
            raise ConfigError(f"--shape-range: {bound} does not fit the input {info.input.shape} ({info.input.layout}) of {info.file or 'the artifact'}")
    return found


def gate_artifact(
    artifact: Path,
    info: ArtifactInfo,
    shape: ImageShape,
    args: argparse.Namespace,
    backend: str | None = None,
    device: str = "cpu",
    shapes: list[ImageShape] | None = None,
) -> ParityReport:
    """Write the sidecar, run the gate (the artifact through ``backend`` vs the FP32 PyTorch model of
    its source checkpoint, fed the same way), record the figures and the shape range it vouches for in
    the sidecar and print them. ``shapes`` (an engine's profile) sets that range to the box around them."""
    shape_range = vouched_range(info, shape, args, shapes)
    info.shape_range = shape_range.to_dict()
    write_artifact_info(artifact, info)
    candidate = load_predictor(artifact, backend, device, allow_failed_parity=True)
    reference = eager_predictor(info.source["checkpoint"], device, info.output_kind, info.normalization_in_graph)
    shapes = parity_shapes(shape, set(info.dynamic_axes().values()), extra_shapes(args), shape_range)
    dataset = open_dataset(args.data, info.data, args.split) if args.data else None
    label = f"{dataset.info.name}/{args.split or info.data.get('val_split', 'val')}" if dataset is not None else ""
    precision = "int8-qat" if info.extra.get("quantization", {}).get("qat") else info.precision
    report = run_parity(reference, candidate, shapes, thresholds_from(args, precision), dataset, args.parity_images, label)
    info.parity = report.to_dict()
    write_artifact_info(artifact, info)
    print(report.table())
    print(f"shape range vouched for (sidecar shape_range): {shape_range.min} to {shape_range.max}, export shape {shape_range.opt}")
    return report
