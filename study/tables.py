"""The tables of a study report, as rows (for CSV) and as Markdown, in the style of Niemann et al.:
grid tables of mean +- std per point, the final comparison of each method at its own best point with
the best in bold and those within one standard deviation of it underlined, and the energy table."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from segdistill.study.results import Point, StudyResult
from segdistill.study.space import describe_params, short, shown


def pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def mean_std(point: Point | None) -> str:
    """``48.30 ± 0.52`` (mIoU in %, sample std over seeds); ``failed`` or ``-`` without results."""
    if point is None or not point.values:
        return "failed" if point is not None and point.failed else "-"
    return f"{pct(point.mean)} ± {pct(point.std)}"


# ---- final comparison ----------------------------------------------------------------------------


def comparison_rows(results: list[StudyResult]) -> list[dict[str, Any]]:
    """One row per study (its best point), grouped by (dataset, student); within a group the best mean is
    marked ``best`` and every other mean at least (best mean - best std) ``within_one_std``. Where the
    group has a ``student alone`` row, each distilled row also gets its difference to it (``vs_student``)
    and, when its teacher's run recorded an mIoU, the share of the teacher-student gap it closes."""
    rows = []
    for result in results:
        best = result.best()
        rows.append({
            "dataset": result.dataset,
            "student": result.student,
            "method": result.method,
            "study": result.name,
            "tuned": describe_params(result.tuned()) if best else "-",
            "seeds": len(best.values) if best else 0,
            "mean": best.mean if best else float("nan"),
            "std": best.std if best else float("nan"),
            "best": False,
            "within_one_std": False,
            "teacher": _teacher_metrics(result.teacher_checkpoint).get("miou", float("nan")),
            "vs_student": float("nan"),
            "gap_closed": float("nan"),
        })  # fmt: skip
    for group in {(r["dataset"], r["student"]) for r in rows}:
        members = [r for r in rows if (r["dataset"], r["student"]) == group and not math.isnan(r["mean"])]
        if not members:
            continue
        top = max(members, key=lambda r: r["mean"])
        top["best"] = True
        for row in members:
            row["within_one_std"] = row is not top and row["mean"] >= top["mean"] - top["std"]
        alone = [r for r in members if r["method"] == "student alone"]
        if not alone:
            continue
        baseline = max(alone, key=lambda r: r["mean"])["mean"]  # the tuned student alone
        for row in members:
            if row["method"] != "student alone":
                row["vs_student"] = row["mean"] - baseline
                if row["teacher"] > baseline:
                    row["gap_closed"] = row["vs_student"] / (row["teacher"] - baseline)
    return rows


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    def signed(value: float) -> str:
        return "-" if math.isnan(value) else f"{100 * value:+.2f}"

    lines = []
    for dataset, student in sorted({(r["dataset"], r["student"]) for r in rows}):
        group = [r for r in rows if (r["dataset"], r["student"]) == (dataset, student)]
        teachers = sorted({pct(r["teacher"]) for r in group if not math.isnan(r["teacher"])})
        lines += [
            f"### {dataset} · {student}" + (f" (teacher: {', '.join(teachers)} mIoU)" if teachers else ""),
            "",
            "| method | study | tuned hyper-parameters | seeds | mIoU (%) | vs student alone | gap closed |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for row in group:
            cell = f"{pct(row['mean'])} ± {pct(row['std'])}" if not math.isnan(row["mean"]) else "no result"
            if row["best"]:
                cell = f"**{cell}**"
            elif row["within_one_std"]:
                cell = f"<u>{cell}</u>"
            closed = "-" if math.isnan(row["gap_closed"]) else f"{100 * row['gap_closed']:.0f}%"
            lines.append(
                f"| {row['method']} | {row['study']} | {row['tuned']} | {row['seeds']} | {cell} "
                f"| {signed(row['vs_student'])} | {closed} |"
            )
        lines.append("")
    lines.append("Mean ± sample standard deviation over seeds, each method at its own best point; **bold**: best; "
                 "<u>underlined</u>: within one standard deviation of the best. vs student alone: mIoU points "
                 "against the best student-alone row; gap closed: that difference over the teacher's lead on it "
                 "(the teacher's final mIoU from its run's metrics.json).")  # fmt: skip
    return "\n".join(lines)


# ---- grid tables ---------------------------------------------------------------------------------


def grid_table(result: StudyResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the heat-map table: the last parameter across, the others down (mean ± std)."""
    keys = list(result.setup["space"]["params"])
    if not keys:  # seeds only: the base config
        return ["", "mIoU (%)"], [["base config", mean_std(result.points[0] if result.points else None)]]
    if result.setup["space"]["sampler"] != "grid":
        header = [*(short(k) for k in keys), "seeds", "mIoU (%)"]
        ranked = sorted(result.points, key=lambda p: p.mean if p.values else -math.inf, reverse=True)
        return header, [[*(shown(p.params.get(k)) for k in keys), str(len(p.values)), mean_std(p)] for p in ranked]
    grid = result.setup["space"]["params"]
    across = keys[-1]
    down = keys[:-1]
    lookup = {tuple(repr(p.params.get(k)) for k in keys): p for p in result.points}
    header = [" / ".join(short(k) for k in down) or "", *(f"{short(across)}={v}" for v in grid[across])]
    combos: list[tuple] = [()]
    for key in down:
        combos = [(*c, v) for c in combos for v in grid[key]]
    rows = []
    for combo in combos:
        label = ", ".join(str(v) for v in combo) or "mIoU (%)"
        cells = [mean_std(lookup.get(tuple(repr(v) for v in (*combo, value)))) for value in grid[across]]
        rows.append([label, *cells])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---- energy (Niemann et al., Table 8) ------------------------------------------------------------


def _teacher_metrics(checkpoint: str | None) -> dict[str, Any]:
    """metrics.json of the run that trained the teacher (RUN/final -> RUN/metrics.json); {} if unknown."""
    if checkpoint is None:
        return {}
    metrics = Path(checkpoint).parent / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.is_file() else {}


def _cost_row(model: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    # A run resumed at its end (0 steps: e.g. a copied teacher evaluated again) has no training figure.
    train = [r["train"] for r in records if r and r.get("train") and r["train"].get("steps", 1) > 0]
    evals = [r["eval"] for r in records if r and r.get("eval") and r["eval"].get("images")]

    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else float("nan")

    return {
        "model": model,
        "training_runs": len(train),
        "train_kwh": mean([t["kwh"] for t in train]),
        "train_kg_co2": mean([t["kg_co2"] for t in train]),
        "train_hours": mean([t["duration_s"] / 3600 for t in train]),
        "infer_kwh_per_10k": mean([1e4 * e["kwh"] / e["images"] for e in evals]),
        "infer_kg_co2_per_10k": mean([1e4 * e["kg_co2"] / e["images"] for e in evals]),
        "estimate": any(t.get("estimate") for t in [*train, *evals]),
        "country": ", ".join(sorted({t["country_iso_code"] for t in [*train, *evals]})) or "-",
    }


def energy_rows(results: list[StudyResult]) -> list[dict[str, Any]]:
    """Training cost per run of the student alone, of the student with KD and of the teacher(s); inference
    cost per 10,000 images (from the final evaluation of each run)."""
    student, distilled, teachers = [], [], {}
    for result in results:
        energies = [r.energy for r in result.records if r.state == "COMPLETE" and r.energy]
        (distilled if result.teacher_checkpoint else student).extend(energies)
        if result.teacher_checkpoint:
            teachers[result.teacher_checkpoint] = _teacher_metrics(result.teacher_checkpoint).get("energy")
    rows = [_cost_row("student", student), _cost_row("student + KD", distilled)]
    rows.append(_cost_row("teacher", [e for e in teachers.values() if e]))
    return rows


def energy_markdown(rows: list[dict[str, Any]]) -> str:
    def number(value: float, digits: int = 3) -> str:
        return "n/a" if math.isnan(value) else f"{value:.{digits}g}"

    lines = [
        "| model | training runs | kWh per training run | kg CO2 per training run | hours per run "
        "| kWh per 10,000 images | kg CO2 per 10,000 images |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        mark = " (est.)" if row["estimate"] else ""
        lines.append(
            f"| {row['model']}{mark} | {row['training_runs']} | {number(row['train_kwh'])} | {number(row['train_kg_co2'])} "
            f"| {number(row['train_hours'])} | {number(row['infer_kwh_per_10k'])} | {number(row['infer_kg_co2_per_10k'])} |"
        )
    countries = sorted({r["country"] for r in rows if r["country"] != "-"})
    lines += [
        "",
        f"codecarbon, offline, electricity mix of {', '.join(countries) or 'n/a'}. (est.): the CPU's power was not read "
        "from counters (no RAPL) but estimated from its load and TDP, and RAM power is always codecarbon's "
        "per-GB estimate; treat those figures as estimates. Inference: the final whole-image evaluation of each "
        "run, divided by its images. A resumed run counts only its last attempt; one resumed at its end (0 "
        "training steps, such as a copied teacher) counts in the inference columns only.",
    ]
    return "\n".join(lines)
