"""Turn one or more studies into the paper-style report: Markdown + CSV tables and plots.

    python study/report.py STUDY [STUDY ...] [--output DIR]

* the final comparison: each study's method at its own best point, mean ± std over seeds, the best in
  bold and those within one standard deviation of it underlined, per dataset and student
  (``comparison.csv``, ``comparison_<dataset>_<student>.png``);
* the grid of each study as a heat-map table (``grid_<study>.csv``, ``heatmap_<study>.png``);
* the energy table (Niemann et al., Table 8): training cost of the student, the student with KD and the
  teacher, inference cost per 10,000 images (``energy.csv``);
* every trial with its state and error (``trials.csv``).

Everything goes to ``report.md`` in the output folder (default: STUDY/report for one study, else
runs/report).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path

from segdistill.atomic_files import atomic_write_text
from segdistill.errors import command
from segdistill.study.figures import comparison_bars, grid_heatmap
from segdistill.study.results import StudyResult, read_study
from segdistill.study.space import describe_params
from segdistill.study.tables import (
    comparison_markdown,
    comparison_rows,
    energy_markdown,
    energy_rows,
    grid_table,
    markdown_table,
)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def trials_section(results: list[StudyResult], out: Path) -> str:
    header = ["study", "trial", "state", "params", "seed", "value", "best_miou", "kwh", "error", "run_dir"]
    rows, failed = [], []
    for result in results:
        for r in result.records:
            kwh = r.energy["train"]["kwh"] if r.energy and r.energy.get("train") else ""
            row = [result.name, r.number, r.state, describe_params(r.params), r.seed, r.value, r.metrics.get("best_miou"), kwh]
            rows.append([*row, r.error or "", r.run_dir])
            if r.state == "FAIL" and r.error:
                failed.append(f"| {result.name} | {r.number} | {describe_params(r.params)} | {r.seed} | {r.error.splitlines()[0][:160]} |")
    write_csv(out / "trials.csv", header, rows)
    if not failed:
        return "No trial failed."
    return "\n".join(["| study | trial | parameters | seed | error |", "|---|---:|---|---:|---|", *failed])


def write_report(results: list[StudyResult], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    sections = ["# Study report", "", f"Studies: {', '.join(f'`{r.folder}`' for r in results)}.", ""]

    rows = comparison_rows(results)
    keys = ["dataset", "student", "method", "study", "tuned", "seeds", "mean", "std", "best", "within_one_std", "teacher", "vs_student", "gap_closed"]
    write_csv(out / "comparison.csv", keys, [[r[k] for k in keys] for r in rows])
    sections += ["## Final comparison (mIoU %, each method with its own tuned hyper-parameters)", "", comparison_markdown(rows), ""]
    for dataset, student in sorted({(r["dataset"], r["student"]) for r in rows}):
        group = [r for r in rows if (r["dataset"], r["student"]) == (dataset, student)]
        name = f"comparison_{slug(dataset)}_{slug(student)}.png"
        comparison_bars(group, f"{dataset} · {student}: mIoU, mean ± std over seeds", out / name)
        sections += [f"![{dataset} {student}]({name})", ""]

    sections += ["## Grids (mIoU %, mean ± std over seeds per point)", ""]
    for result in results:
        header, table = grid_table(result)
        write_csv(out / f"grid_{slug(result.name)}.csv", header, table)
        sections += [f"### {result.name}: {result.method} · {result.dataset} · {result.student}", ""]
        base = result.setup.get("base_from") or []
        if base:
            sections += ["On top of " + "; ".join(f"`{b['study']}` best ({describe_params(b['params'])})" for b in base) + ".", ""]
        sections += [markdown_table(header, table), ""]
        if result.setup["space"]["sampler"] == "grid" and result.setup["space"]["params"]:
            name = f"heatmap_{slug(result.name)}.png"
            grid_heatmap(result, out / name)
            sections += [f"![{result.name}]({name})", ""]

    energy = energy_rows(results)
    keys = list(energy[0])
    write_csv(out / "energy.csv", keys, [[r[k] for k in keys] for r in energy])
    sections += ["## Energy and CO2 (training per run; inference per 10,000 images)", "", energy_markdown(energy), ""]
    sections += ["## Failed trials", "", trials_section(results, out), ""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(sections))
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", help="study folders (made by study/sweep.py)")
    parser.add_argument("--output", help="report folder (default STUDY/report, or runs/report for several)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    results = [read_study(folder) for folder in args.studies]
    out = Path(args.output) if args.output else Path(args.studies[0]) / "report" if len(results) == 1 else Path("runs/report")
    report = write_report(results, out)
    print(report.read_text())
    print(f"\nreport: {report}")
    return report


cli = command(main)


if __name__ == "__main__":
    sys.exit(cli())
