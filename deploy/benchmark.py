"""Latency and accuracy of deployed artifacts, measured where they run.

    python deploy/benchmark.py --artifact RUN/final --artifact RUN/final/export/model.onnx [--backend eager ...] \
        [--data camvid:../shared/data/camvid] [--shape 1x3x180x240] [--iterations 200] [--warmup 20] \
        [--threads 2] [--device cpu|cuda] [--output DIR]

For each artifact (a checkpoint folder runs in PyTorch eager; an exported file in the backend given,
paired with ``--artifact`` by position, or the natural one for its kind): latency at one fixed shape
(the export shape, else batch 1 at the training resolution; ``--shape``) after a warm-up, at least 200
timed iterations in ``--rounds`` rounds that alternate between the artifacts (so that a change of load
on the machine does not favour one of them), as mean, p50, p90, p99, coefficient of variation and
throughput, separately for

* compute only: the artifact on inputs already on its device (CUDA events on a GPU), and
* end to end: uint8 images on the host -> preprocessing, copies, the artifact, argmax -> labels on the host;

and with ``--data`` the mIoU and per-class IoU of what the artifact predicts on the split, and the share of
its labels equal to the first artifact's (of an INT8 graph against its FP32 model, say). Writes
``results.json`` (with the environment), ``results.md`` (speed-ups against the first artifact, measured
in this run) and ``latency_vs_miou.png`` to ``--output``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segdistill.atomic_files import writing
from segdistill.deploy.accuracy import default_shape, evaluate, open_dataset
from segdistill.deploy.backends import BACKEND_NAMES, load_predictor
from segdistill.deploy.backends.ort_session import fused_nodes
from segdistill.deploy.environment import environment
from segdistill.deploy.latency import LatencyStats, time_calls
from segdistill.deploy.predictor import Predictor
from segdistill.deploy.report import write_report
from segdistill.deploy.shapes import ImageShape, parse_shape
from segdistill.errors import command

MIN_ITERATIONS = 200
REWARM = 3  # untimed calls at the start of each later round, after the other artifacts ran


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", action="append", required=True, help="checkpoint folder or exported file (repeatable)")
    parser.add_argument("--backend", action="append", default=[], help=f"one of {', '.join(BACKEND_NAMES)} (one, or one per artifact)")
    parser.add_argument("--data", help="measure mIoU on this dataset: NAME or NAME:ROOT")
    parser.add_argument("--split", help="dataset split (default: the training run's validation split)")
    parser.add_argument("--images", type=int, help="only the first N images of the split")
    parser.add_argument("--shape", help="N x 3 x H x W to time (default: the export shape, else batch 1 at the training resolution)")
    parser.add_argument("--iterations", type=int, default=MIN_ITERATIONS, help=f"timed iterations (at least {MIN_ITERATIONS})")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls before the first round")
    parser.add_argument("--rounds", type=int, default=10, help="the iterations are split into rounds that alternate between artifacts")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for every backend (default: all cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for the PyTorch backends")
    parser.add_argument("--output", default="runs/deploy_benchmark", help="folder for results.json / .md / .png")
    parser.add_argument("--allow-failed-parity", action="store_true", help="also run artifacts whose parity gate failed")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    if args.iterations < MIN_ITERATIONS:
        parser.error(f"--iterations {args.iterations}: at least {MIN_ITERATIONS}, or the tail percentiles mean little")
    if len(args.backend) not in (0, 1, len(args.artifact)):
        parser.error("--backend: give one for all artifacts, or one per --artifact, in the same order")
    return args


def check_output(folder: Path) -> None:
    """Before measuring: results that cannot be written would be lost with the time spent on them."""
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()


def timed_shape(args: argparse.Namespace, predictor: Predictor) -> ImageShape:
    if args.shape:
        return parse_shape(args.shape)
    traced = predictor.info.extra.get("traced_at")
    return parse_shape(traced, "sidecar extra.traced_at") if traced else default_shape(predictor.info.data)


class Timer:
    """The two timed paths of one predictor at one shape, accumulating samples over rounds."""

    def __init__(self, predictor: Predictor, shape: ImageShape) -> None:
        predictor.check_shape(shape)
        self.predictor, self.shape = predictor, shape
        self.images = np.random.default_rng(0).integers(0, 256, size=(shape.batch, shape.height, shape.width, 3), dtype=np.uint8)
        self.prepared = predictor.prepare(self.images)
        self.compute: list[float] = []
        self.end_to_end: list[float] = []

    def run_end_to_end(self) -> None:
        self.predictor.predict(self.images)
        self.predictor.synchronize()

    def round(self, iterations: int, warmup: int) -> None:
        gpu = self.predictor.device.type == "cuda"
        self.compute += time_calls(lambda: self.predictor.forward(self.prepared), iterations, warmup, cuda_events=gpu)
        self.end_to_end += time_calls(self.run_end_to_end, iterations, warmup)

    def stats(self) -> dict[str, Any]:
        return {
            "compute": dataclasses.asdict(LatencyStats.from_samples(self.compute, self.shape.batch)),
            "end_to_end": dataclasses.asdict(LatencyStats.from_samples(self.end_to_end, self.shape.batch)),
        }


def row_names(artifacts: list[str]) -> list[str]:
    """Each artifact's file name, or as many of its last path parts as tell it from the others
    (``fcn/model.onnx`` and ``lraspp/model.onnx``, not ``model.onnx`` twice)."""
    parts = [Path(a).resolve().parts for a in artifacts]
    for k in range(1, max(map(len, parts)) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(a) for a in artifacts]  # the same path given twice


def accuracy(predictor: Predictor, args: argparse.Namespace, reference: list[torch.Tensor] | None) -> tuple[dict[str, Any] | None, list[torch.Tensor]]:
    """mIoU, per-class IoU and the share of labels equal to ``reference`` (the first artifact's labels; None:
    this is the first), with this artifact's labels."""
    if not args.data:
        return None, []
    split = args.split or predictor.info.data.get("val_split", "val")
    dataset = open_dataset(args.data, predictor.info.data, split)
    labels: list[torch.Tensor] = []
    metrics = evaluate(predictor, dataset, args.images, keep=labels)
    reference = labels if reference is None else reference
    equal = sum(int((a == b).sum()) for a, b in zip(labels, reference, strict=True))
    images = len(dataset) if args.images is None else min(args.images, len(dataset))
    return {
        "dataset": dataset.info.name,
        "split": split,
        "images": images,
        "miou": metrics.miou,
        "pixel_accuracy": metrics.pixel_accuracy,
        "labels_equal_to_first": equal / sum(r.numel() for r in reference),
        "iou": dict(zip(dataset.info.classes, metrics.iou, strict=True)),
    }, labels


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    check_output(Path(args.output))
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = args.backend * len(args.artifact) if len(args.backend) == 1 else args.backend or [None] * len(args.artifact)
    predictors = [
        load_predictor(artifact, backend, args.device, args.threads or torch.get_num_threads(), args.allow_failed_parity)
        for artifact, backend in zip(args.artifact, backends, strict=True)
    ]
    timers = [Timer(p, timed_shape(args, p)) for p in predictors]
    # Interleaved rounds: a change of machine load during the run touches every artifact alike.
    per_round = -(-args.iterations // args.rounds)
    for r in range(args.rounds):
        for timer in timers:
            timer.round(per_round, args.warmup if r == 0 else REWARM)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{t.predictor.name} {t.end_to_end[-1]:.2f} ms" for t in timers))
    results, first_labels = [], None
    for artifact, name, timer in zip(args.artifact, row_names(args.artifact), timers, strict=True):
        predictor = timer.predictor
        measured, labels = accuracy(predictor, args, first_labels)
        first_labels = labels if first_labels is None else first_labels
        entry = {
            "name": name,
            "artifact": str(artifact),
            "backend": predictor.backend,
            "precision": predictor.info.precision,
            "device": str(predictor.device),
            "shape": str(timer.shape),
            "fused_nodes": fused_nodes(predictor.artifact) if predictor.backend == "ort-cpu" else None,
            **timer.stats(),
            "accuracy": measured,
        }
        results.append(entry)
        e = entry["end_to_end"]
        print(f"{predictor.name} at {timer.shape}: end to end p50 {e['p50_ms']:.2f} ms, compute p50 {entry['compute']['p50_ms']:.2f} ms")
    command = "python deploy/benchmark.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(write_report(results, environment(), command, Path(args.output)))
    print(f"results in {args.output}")
    return results


cli = command(main)


if __name__ == "__main__":
    sys.exit(cli())
