"""Teacher entropy (Niemann et al., Figure 1): the per-pixel entropy against a float64 loop, and the
command on a tiny trained teacher."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from segdistill.data.synthetic import CLASSES
from segdistill.teacher_entropy import main, pixel_entropy


def test_pixel_entropy_matches_a_loop_over_pixels():
    logits = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(0)) * 3
    for tau in (1.0, 4.0):
        got = pixel_entropy(logits, tau)
        z = logits.double().numpy() / tau
        for b, y, x in np.ndindex(2, 3, 4):
            p = np.exp(z[b, :, y, x] - z[b, :, y, x].max())
            p /= p.sum()
            assert math.isclose(got[b, y, x].item(), -sum(q * math.log(q) for q in p), rel_tol=1e-5)
    uniform = pixel_entropy(torch.zeros(1, 7, 2, 2), 1.0)
    torch.testing.assert_close(uniform, torch.full((1, 2, 2), math.log(7)))
    one_hot = pixel_entropy(torch.tensor([100.0, 0, 0]).view(1, 3, 1, 1), 1.0)
    assert one_hot.item() < 1e-6


def test_entropy_command_on_a_tiny_teacher(tiny_teacher, tmp_path):
    result = main(["--teacher", str(tiny_teacher), "--taus", "1", "4", "16", "--max-images", "3", "--workers", "0", "--output", str(tmp_path)])
    saved = json.loads((tmp_path / "entropy.json").read_text())
    assert (tmp_path / "entropy.png").stat().st_size > 0
    assert saved["images"] == 3 and saved["max_entropy"] == math.log(len(CLASSES))
    assert all(sum(stats["counts"]) == saved["pixels"] for stats in saved["taus"].values())
    means = [saved["taus"][t]["mean_entropy"] for t in ("1.0", "4.0", "16.0")]
    assert means == sorted(means) and means[-1] <= math.log(len(CLASSES))  # softer targets as tau grows
    assert result["taus"]["16.0"]["near_one_hot"] <= result["taus"]["1.0"]["near_one_hot"]
