"""Latency of a call: warm-up, then timed iterations at a fixed shape, summarised as a person reads it.

On a GPU the compute-only figure comes from CUDA events around the enqueued work; the end-to-end one
(which ends in a copy to the host, so it waits for the GPU anyway) from the host clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class LatencyStats:
    iterations: int
    batch: int
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    cv: float  # coefficient of variation: std / mean
    throughput: float  # images per second at the mean latency

    @classmethod
    def from_samples(cls, samples_ms: list[float], batch: int) -> LatencyStats:
        t = np.asarray(samples_ms, dtype=np.float64)
        mean, std = float(t.mean()), float(t.std(ddof=1)) if len(t) > 1 else 0.0
        p50, p90, p99 = (float(v) for v in np.percentile(t, [50, 90, 99]))
        return cls(len(t), batch, mean, std, p50, p90, p99, float(t.min()), float(t.max()), std / mean, 1000.0 * batch / mean)


def time_calls(fn: Callable[[], Any], iterations: int, warmup: int, cuda_events: bool = False) -> list[float]:
    """Milliseconds of each of ``iterations`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    if cuda_events:
        torch.cuda.synchronize()
        for _ in range(iterations):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        return samples
    for _ in range(iterations):
        started = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - started) / 1e6)
    return samples
