"""Plots of a study report: the heat map of a grid and the bar chart of the final comparison."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segdistill.atomic_files import atomic_write  # noqa: E402
from segdistill.study.results import StudyResult  # noqa: E402
from segdistill.study.space import short  # noqa: E402


def grid_heatmap(result: StudyResult, path: Path) -> None:
    """Mean mIoU over seeds per grid point: the last parameter across, the others down."""
    grid = result.setup["space"]["params"]
    keys = list(grid)
    across, down = keys[-1], keys[:-1]
    combos: list[tuple] = [()]
    for key in down:
        combos = [(*c, v) for c in combos for v in grid[key]]
    lookup = {tuple(repr(p.params.get(k)) for k in keys): p for p in result.points}
    means = np.full((len(combos), len(grid[across])), np.nan)
    stds = np.zeros_like(means)
    for i, combo in enumerate(combos):
        for j, value in enumerate(grid[across]):
            point = lookup.get(tuple(repr(v) for v in (*combo, value)))
            if point is not None and point.values:
                means[i, j], stds[i, j] = 100 * point.mean, 100 * point.std
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * means.shape[1], 1.2 + 0.6 * means.shape[0]))
    image = ax.imshow(np.ma.masked_invalid(means), cmap="viridis", aspect="auto")
    for (i, j), mean in np.ndenumerate(means):
        text = "failed" if math.isnan(mean) else f"{mean:.1f}\n±{stds[i, j]:.1f}"
        colour = "dimgray" if math.isnan(mean) else "white" if mean < np.nanmean(means) else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(grid[across])), [str(v) for v in grid[across]])
    ax.set_xlabel(short(across))
    ax.set_yticks(range(len(combos)), [", ".join(str(v) for v in c) for c in combos])
    ax.set_ylabel(" / ".join(short(k) for k in down))
    ax.set_title(f"{result.name}: {result.method}\n{result.dataset} · {result.student} (mIoU %, mean ± std)", fontsize=9)
    fig.colorbar(image, ax=ax, label="mIoU (%)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


def comparison_bars(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """Bars of mean mIoU with one-std error bars; the best bar dark, those within one std mid-tone."""
    rows = [r for r in rows if not math.isnan(r["mean"])]
    colours = ["#1f4e79" if r["best"] else "#5b9bd5" if r["within_one_std"] else "#b4c7e7" for r in rows]
    fig, ax = plt.subplots(figsize=(1.8 + 1.2 * len(rows), 3.6))
    ax.bar(range(len(rows)), [100 * r["mean"] for r in rows], yerr=[100 * r["std"] for r in rows], capsize=4, color=colours)
    ax.set_xticks(range(len(rows)), [f"{r['method']}\n({r['study']})" for r in rows], fontsize=8)
    low = min(100 * (r["mean"] - r["std"]) for r in rows) if rows else 0
    ax.set_ylim(max(0.0, low - 2), None)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
