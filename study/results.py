"""A study's trials read back as plain records, grouped into points (one point = one setting of the
parameters, trained once per seed) with the mean and the standard deviation over seeds."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from segdistill.config import load_config
from segdistill.study.space import override
from segdistill.study.storage import STUDY_FILE, load_study
from segdistill.study.worker import SEED


@dataclass
class TrialRecord:
    number: int
    state: str  # COMPLETE, FAIL, RUNNING, WAITING
    params: dict[str, Any]  # without the seed
    seed: int | None
    value: float | None
    metrics: dict[str, Any]
    energy: dict[str, Any] | None
    error: str | None
    run_dir: str | None


@dataclass
class Point:
    params: dict[str, Any]
    seeds: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    failed: int = 0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else float("nan")

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (n - 1); 0 for a single seed."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


@dataclass
class StudyResult:
    name: str
    folder: Path
    setup: dict[str, Any]
    records: list[TrialRecord]
    points: list[Point]
    dataset: str
    student: str
    method: str
    teacher_checkpoint: str | None

    def best(self) -> Point | None:
        scored = [p for p in self.points if p.values]
        return max(scored, key=lambda p: p.mean) if scored else None

    def tuned(self) -> dict[str, Any]:
        """Every tuned value behind the best point: those of the studies it started from (followed through
        their folders where they exist, else as recorded) and its own."""
        tuned: dict[str, Any] = {}
        for source in self.setup.get("base_from", []):
            folder = Path(source["study"])
            tuned.update(read_study(folder).tuned() if (folder / STUDY_FILE).is_file() else source["params"])
        best = self.best()
        return {**tuned, **(best.params if best else {})}

    def best_overrides(self) -> list[str]:
        """The study's own overrides plus its best point: the base of the next stage (``--base-from``)."""
        best = self.best()
        if best is None:
            raise ValueError(f"study {self.name!r} has no completed trial yet")
        return [*self.setup["overrides"], *(override(k, v) for k, v in best.params.items())]


def _record(trial) -> TrialRecord:
    params = {k: v for k, v in trial.params.items() if k != SEED}
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        params=params,
        seed=trial.params.get(SEED),
        value=trial.value if trial.state == TrialState.COMPLETE else None,
        metrics=trial.user_attrs.get("metrics", {}),
        energy=trial.user_attrs.get("energy"),
        error=trial.user_attrs.get("error"),
        run_dir=trial.user_attrs.get("run_dir"),
    )


def group_points(records: list[TrialRecord], order: dict[str, list]) -> list[Point]:
    """Points in grid order (``order``: the values of each key); a (point, seed) pair that completed twice
    (two workers raced for it) counts once. Trials killed and retried count by their retry."""
    points: dict[tuple, Point] = {}
    for record in records:
        key = tuple(sorted((k, repr(v)) for k, v in record.params.items()))
        point = points.setdefault(key, Point(record.params))
        if record.state == "COMPLETE" and record.seed not in point.seeds:
            point.seeds.append(record.seed)
            point.values.append(record.value)
        elif record.state == "FAIL" and record.error is not None:
            point.failed += 1

    def position(point: Point) -> tuple:
        return tuple(order[k].index(v) if v in order.get(k, []) else 0 for k, v in point.params.items())

    return sorted(points.values(), key=position)


def describe(setup: dict[str, Any]) -> tuple[str, str, str, str | None]:
    """(dataset, student, method, teacher checkpoint) of a study's runs, from its resolved base config."""
    cfg = load_config(setup["config"], setup["overrides"])
    model = cfg.model
    student = model.torchvision_model or f"{model.backbone} + {model.head}"
    method = " + ".join(loss.name for loss in cfg.losses) or "student alone"
    teacher = cfg.teacher.checkpoint if cfg.teacher is not None else None
    return cfg.data.name, student, method, teacher


def read_study(folder: str | Path) -> StudyResult:
    folder = Path(folder)
    study, info = load_study(folder)
    setup = info["setup"]
    records = [_record(t) for t in study.get_trials(deepcopy=False)]
    space = setup["space"]
    order = space["params"] if space["sampler"] == "grid" else {}
    dataset, student, method, teacher = describe(setup)
    return StudyResult(info["name"], folder, setup, records, group_points(records, order), dataset, student, method, teacher)
