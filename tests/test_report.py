"""Report tables: mean ± std over seeds, best in bold, within one std of the best underlined, grid cells
in place, the energy table per 10,000 images; all files written. Studies are built by hand here (the
sweep test covers reading them from Optuna)."""

from __future__ import annotations

import csv
import json
import math

from segdistill.study.report import write_report
from segdistill.study.results import StudyResult, TrialRecord, group_points
from segdistill.study.space import parse_space
from segdistill.study.tables import comparison_markdown, comparison_rows, energy_rows, grid_table

GRID = {"train.optimizer.lr": [0.01, 0.02], "train.optimizer.weight_decay": [0.0001, 0.001]}


def energy(kwh: float, images: int = 100) -> dict:
    part = {"kwh": kwh, "kg_co2": kwh / 2, "duration_s": 3600.0, "estimate": True, "country_iso_code": "DEU"}
    return {"train": part, "eval": {**part, "kwh": kwh / 10, "kg_co2": kwh / 20, "images": images}}


def study(name: str, method: str, values: dict[tuple, list[float]], teacher: str | None = None, kwh: float = 1.0) -> StudyResult:
    records, number = [], 0
    for (lr, wd), seeds in values.items():
        for seed, value in enumerate(seeds):
            state = "COMPLETE" if value is not None else "FAIL"
            params = {"train.optimizer.lr": lr, "train.optimizer.weight_decay": wd}
            records.append(TrialRecord(number, state, params, seed, value, {}, energy(kwh) if value is not None else None,
                                       None if value is not None else "boom", f"runs/{number:04d}"))  # fmt: skip
            number += 1
    setup = {"space": {"sampler": "grid", "params": GRID}, "overrides": [], "seeds": [0, 1, 2]}
    return StudyResult(name, f"runs/{name}", setup, records, group_points(records, GRID), "camvid", "mobilenetv2_100 + fcn", method, teacher)


def test_comparison_marks_the_best_and_those_within_one_std():
    a = study("a", "student alone", {(0.01, 0.0001): [0.50, 0.52, 0.54], (0.02, 0.0001): [0.30, 0.31, 0.32]})
    b = study("b", "pixel_kd", {(0.01, 0.0001): [0.49, 0.51, 0.53]})
    c = study("c", "pixel_kd + cwd", {(0.02, 0.001): [0.40, 0.41, 0.42]})
    rows = comparison_rows([a, b, c])
    assert [(r["study"], r["best"], r["within_one_std"]) for r in rows] == [("a", True, False), ("b", False, True), ("c", False, False)]
    assert math.isclose(rows[0]["mean"], 0.52) and math.isclose(rows[0]["std"], 0.02)  # sample std (n - 1)
    assert rows[0]["tuned"] == "lr=0.01, weight_decay=0.0001" and rows[0]["seeds"] == 3
    text = comparison_markdown(rows)
    assert "| student alone | a | lr=0.01, weight_decay=0.0001 | 3 | **52.00 ± 2.00** |" in text
    assert "| pixel_kd | b | lr=0.01, weight_decay=0.0001 | 3 | <u>51.00 ± 2.00</u> |" in text
    assert "| pixel_kd + cwd | c | lr=0.02, weight_decay=0.001 | 3 | 41.00 ± 1.00 |" in text


def test_comparison_gives_the_gain_over_the_student_and_the_share_of_the_gap(tmp_path):
    teacher_run = tmp_path / "teacher"
    (teacher_run / "final").mkdir(parents=True)
    (teacher_run / "metrics.json").write_text(json.dumps({"miou": 0.60}))
    alone = study("alone", "student alone", {(0.01, 0.0001): [0.49, 0.50, 0.51], (0.02, 0.0001): [0.40, 0.40, 0.40]})
    kd = study("kd", "pixel_kd", {(0.01, 0.0001): [0.52, 0.53, 0.54]}, teacher=str(teacher_run / "final"))
    worse = study("worse", "cwd", {(0.01, 0.0001): [0.45, 0.45, 0.45]}, teacher=str(teacher_run / "final"))
    rows = {r["study"]: r for r in comparison_rows([alone, kd, worse])}
    assert math.isnan(rows["alone"]["vs_student"]) and math.isnan(rows["alone"]["gap_closed"])
    assert math.isclose(rows["kd"]["vs_student"], 0.03) and math.isclose(rows["kd"]["gap_closed"], 0.03 / 0.10)
    assert math.isclose(rows["worse"]["gap_closed"], -0.05 / 0.10)
    text = comparison_markdown(list(rows.values()))
    assert "(teacher: 60.00 mIoU)" in text
    assert "| pixel_kd | kd | lr=0.01, weight_decay=0.0001 | 3 | **53.00 ± 1.00** | +3.00 | 30% |" in text
    assert "| cwd | worse | lr=0.01, weight_decay=0.0001 | 3 | 45.00 ± 0.00 | -5.00 | -50% |" in text
    assert "| student alone | alone | lr=0.01, weight_decay=0.0001 | 3 | 50.00 ± 1.00 | - | - |" in text


def test_a_study_of_seeds_only_has_one_cell():
    space = parse_space({"params": {}}, "seeds.yaml")
    assert space.grid() == {}
    records = [TrialRecord(i, "COMPLETE", {}, i, v, {}, None, None, f"runs/{i:04d}") for i, v in enumerate([0.4, 0.5])]
    setup = {"space": space.as_dict(), "overrides": [], "seeds": [0, 1]}
    result = StudyResult("s", "runs/s", setup, records, group_points(records, {}), "camvid", "mnv2", "cwd", None)
    assert grid_table(result) == (["", "mIoU (%)"], [["base config", "45.00 ± 7.07"]])
    assert comparison_rows([result])[0]["seeds"] == 2


def test_grid_table_puts_each_point_in_its_cell():
    result = study("g", "student alone", {(0.01, 0.0001): [0.5, 0.6], (0.02, 0.001): [0.2, None], (0.01, 0.001): [None, None]})
    header, rows = grid_table(result)
    assert header == ["lr", "weight_decay=0.0001", "weight_decay=0.001"]
    assert rows == [["0.01", "55.00 ± 7.07", "failed"], ["0.02", "-", "20.00 ± 0.00"]]


def test_energy_table_and_report_files(tmp_path):
    teacher_run = tmp_path / "teacher"
    (teacher_run / "final").mkdir(parents=True)
    (teacher_run / "metrics.json").write_text(json.dumps({"energy": energy(8.0, images=50)}))
    alone = study("alone", "student alone", {(0.01, 0.0001): [0.5, 0.52, 0.51]}, kwh=1.0)
    kd = study("kd", "pixel_kd", {(0.01, 0.0001): [0.53, 0.54, 0.55]}, teacher=str(teacher_run / "final"), kwh=3.0)
    rows = {r["model"]: r for r in energy_rows([alone, kd])}
    assert rows["student"]["training_runs"] == 3 and math.isclose(rows["student"]["train_kwh"], 1.0)
    assert math.isclose(rows["student + KD"]["train_kwh"], 3.0) and math.isclose(rows["teacher"]["train_kwh"], 8.0)
    assert math.isclose(rows["student"]["infer_kwh_per_10k"], 1e4 * 0.1 / 100)  # eval: kwh / 10 over 100 images
    assert math.isclose(rows["teacher"]["infer_kwh_per_10k"], 1e4 * 0.8 / 50) and rows["teacher"]["estimate"]
    # A teacher run resumed at its end (copied, evaluated again: 0 steps) has an inference figure, no training one.
    copied = energy(0.001, images=50)
    copied["train"]["steps"] = 0
    (teacher_run / "metrics.json").write_text(json.dumps({"energy": copied}))
    row = {r["model"]: r for r in energy_rows([alone, kd])}["teacher"]
    assert row["training_runs"] == 0 and math.isnan(row["train_kwh"]) and math.isclose(row["infer_kwh_per_10k"], 1e4 * 1e-4 / 50)
    (teacher_run / "metrics.json").write_text(json.dumps({"energy": energy(8.0, images=50)}))

    report = write_report([alone, kd], tmp_path / "report")
    text = report.read_text()
    assert "| pixel_kd | kd | lr=0.01, weight_decay=0.0001 | 3 | **54.00 ± 1.00** |" in text
    assert "| teacher (est.) | 1 | 8 | 4 | 1 | 160 | 80 |" in text
    for name in ("comparison.csv", "energy.csv", "trials.csv", "grid_alone.csv", "heatmap_kd.png", "comparison_camvid_mobilenetv2_100_fcn.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    with open(tmp_path / "report" / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["study"], r["best"]) for r in table] == [("alone", "False"), ("kd", "True")]
