"""Benchmark results as JSON, a Markdown table and a latency-vs-mIoU plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from segdistill.atomic_files import atomic_write, atomic_write_text  # noqa: E402


def ratio(baseline: float, value: float) -> str:
    return f"{baseline / value:.2f}x"


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per artifact; speed-ups are against the first row, measured in the same run."""
    base = results[0]
    lines = [
        "| artifact | backend | precision | shape | nodes after fusion | compute mean / p50 (ms) "
        "| end-to-end mean / p50 / p90 / p99 (ms) | CV | images/s | speed-up compute / e2e | mIoU (%) | labels = first row (%) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        c, e = r["compute"], r["end_to_end"]
        a = r["accuracy"]
        miou, equal = ("", "") if a is None else (f"{100 * a['miou']:.2f}", f"{100 * a['labels_equal_to_first']:.2f}")
        speed = f"{ratio(base['compute']['p50_ms'], c['p50_ms'])} / {ratio(base['end_to_end']['p50_ms'], e['p50_ms'])}"
        lines.append(
            f"| {r['name']} | {r['backend']} | {r['precision']} | {r['shape']} | {'' if r['fused_nodes'] is None else r['fused_nodes']} | {c['mean_ms']:.2f} / {c['p50_ms']:.2f} "
            f"| {e['mean_ms']:.2f} / {e['p50_ms']:.2f} / {e['p90_ms']:.2f} / {e['p99_ms']:.2f} | {e['cv']:.3f} "
            f"| {e['throughput']:.1f} | {speed} | {miou} | {equal} |"
        )
    return "\n".join(lines)


def per_class_table(results: list[dict[str, Any]]) -> str:
    measured = [r for r in results if r["accuracy"] is not None]
    if not measured:
        return ""
    classes = list(measured[0]["accuracy"]["iou"])
    lines = ["| class | " + " | ".join(r["name"] for r in measured) + " |", "|---|" + "---:|" * len(measured)]
    for name in classes:
        cells = [r["accuracy"]["iou"][name] for r in measured]
        lines.append(f"| {name} | " + " | ".join("" if v != v else f"{100 * v:.1f}" for v in cells) + " |")
    return "\n".join(lines)


def latency_vs_miou_plot(results: list[dict[str, Any]], path: Path, title: str) -> bool:
    """End-to-end p50 latency against mIoU, one labelled point per artifact; False if nothing to plot."""
    points = [r for r in results if r["accuracy"] is not None]
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(10, 4.5))
    markers = "osD^vP*Xh<>"
    for i, r in enumerate(points):
        x, y = r["end_to_end"]["p50_ms"], 100 * r["accuracy"]["miou"]
        ax.scatter([x], [y], s=50, marker=markers[i % len(markers)], label=f"{r['name']} ({r['backend']}, {r['precision']})")
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")  # beside the axes: points often share an mIoU
    ax.set_xlabel("end-to-end latency, p50 (ms)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return True


def write_report(results: list[dict[str, Any]], env: dict[str, Any], command: str, out: Path) -> str:
    """results.json, results.md and latency_vs_miou.png in ``out``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps({"command": command, "environment": env, "results": results}, indent=2))
    gpu = env["gpu"]["name"] if env["gpu"] else "no GPU"
    load = "/".join(f"{v:g}" for v in env["cpu"]["load_average"])
    machine = f"{env['cpu']['model']} ({env['cpu']['logical_cores']} logical cores, load average {load} at the end), {gpu}"
    parts = [f"Measured on: {machine}; {', '.join(f'{k} {v}' for k, v in env['versions'].items())}", f"Command: `{command}`", markdown_table(results)]
    classes = per_class_table(results)
    if classes:
        parts += ["Per-class IoU (%):", classes]
    if latency_vs_miou_plot(results, out / "latency_vs_miou.png", "latency vs mIoU"):
        parts.append("![latency vs mIoU](latency_vs_miou.png)")
    markdown = "\n\n".join(parts) + "\n"
    atomic_write_text(out / "results.md", markdown)
    return markdown
