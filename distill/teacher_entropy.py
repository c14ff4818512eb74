"""How soft are a teacher's targets? The histogram of the Shannon entropy of its per-pixel class
distributions softmax(z / tau) at several temperatures (Niemann et al., Figure 1).

    python distill/teacher_entropy.py --teacher runs/demo/teacher/final [--data camvid:../shared/data/camvid] \
        [--split val] [--taus 1 2 4 8 16] [--max-images 100] [--output DIR]

Entropies are taken where pixel KD reads them: at the resolution of the teacher's logits (stride 8), over
every pixel of every image, in nats; ln K is the maximum (a uniform distribution over K classes). Writes
``entropy.png`` and ``entropy.json`` (histogram counts, mean entropy, share of near-one-hot pixels,
i.e. entropy below 10% of ln K) into the output folder (default: TEACHER/entropy_SPLIT).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from segdistill.atomic_files import atomic_write, atomic_write_text  # noqa: E402
from segdistill.checkpoint import load_model  # noqa: E402
from segdistill.data import build_dataset  # noqa: E402
from segdistill.data.loader import eval_loader  # noqa: E402
from segdistill.errors import ConfigError, command
from segdistill.evaluate import data_config  # noqa: E402

BINS = 50
NEAR_ONE_HOT = 0.1  # entropy below this fraction of ln K


def pixel_entropy(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits / tau) over the class axis 1: (B, K, H, W) -> (B, H, W)."""
    log_p = torch.log_softmax(logits.float() / tau, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


@torch.no_grad()
def entropy_histograms(model: torch.nn.Module, loader, taus: list[float], num_classes: int, max_images: int, device: torch.device) -> dict:
    edges = np.linspace(0.0, math.log(num_classes), BINS + 1)
    counts = {tau: np.zeros(BINS, dtype=np.int64) for tau in taus}
    sums = dict.fromkeys(taus, 0.0)
    near = dict.fromkeys(taus, 0)
    pixels = images = 0
    for batch, _, _ in loader:
        batch = batch[: max_images - images].to(device)
        logits = model(batch).logits
        for tau in taus:
            entropy = pixel_entropy(logits, tau).flatten().cpu().double().numpy()
            counts[tau] += np.histogram(np.clip(entropy, 0, edges[-1]), bins=edges)[0]
            sums[tau] += float(entropy.sum())
            near[tau] += int((entropy < NEAR_ONE_HOT * edges[-1]).sum())
        pixels += logits.shape[0] * logits.shape[2] * logits.shape[3]
        images += batch.shape[0]
        if images >= max_images:
            break
    return {
        "num_classes": num_classes,
        "max_entropy": edges[-1],
        "images": images,
        "pixels": pixels,
        "bin_edges": edges.tolist(),
        "taus": {
            str(tau): {"counts": counts[tau].tolist(), "mean_entropy": sums[tau] / pixels, "near_one_hot": near[tau] / pixels}
            for tau in taus
        },
    }


def plot(result: dict, title: str, path: Path) -> None:
    edges = np.array(result["bin_edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(7, 4))
    for tau, stats in result["taus"].items():
        share = 100 * np.array(stats["counts"]) / result["pixels"]
        ax.step(centres, share, where="mid", label=f"τ = {float(tau):g} (mean {stats['mean_entropy']:.2f})")
    ax.axvline(result["max_entropy"], color="grey", linestyle=":", label=f"ln K = {result['max_entropy']:.2f}")
    ax.set_xlabel("entropy of the teacher's per-pixel class distribution (nats)")
    ax.set_ylabel("pixels (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="teacher checkpoint folder (model.safetensors + model.json)")
    parser.add_argument("--data", help="NAME or NAME:ROOT (default: the dataset the teacher was trained on)")
    parser.add_argument("--split", default=None, help="split (default: the teacher's val split)")
    parser.add_argument("--resize", type=float, default=None, help="rescale images (default: as in training)")
    parser.add_argument("--taus", type=float, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--max-images", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", help="output folder (default TEACHER/entropy_SPLIT)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if min(args.taus) <= 0 or args.max_images < 1:
        raise ConfigError("--taus must be positive and --max-images at least 1")
    model, meta = load_model(args.teacher)
    device = torch.device(args.device)
    model.to(device).eval()
    data_cfg = data_config(meta, args)
    split = args.split or data_cfg.val_split
    dataset = build_dataset(data_cfg, split)
    if dataset.info.num_classes != meta["num_classes"]:
        raise ConfigError(f"teacher {args.teacher!r} predicts {meta['num_classes']} classes but {dataset.info.name!r} has {dataset.info.num_classes}")
    result = entropy_histograms(model, eval_loader(dataset, data_cfg), args.taus, meta["num_classes"], args.max_images, device)
    result.update(teacher=str(args.teacher), dataset=dataset.info.name, split=split)
    out = Path(args.output) if args.output else Path(args.teacher) / f"entropy_{split}"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "entropy.json", json.dumps(result, indent=2))
    plot(result, f"{Path(args.teacher)} on {dataset.info.name} {split} ({result['images']} images)", out / "entropy.png")
    for tau, stats in result["taus"].items():
        print(f"tau {float(tau):>5g}: mean entropy {stats['mean_entropy']:.3f} of ln K = {result['max_entropy']:.3f}, "
              f"near one-hot {100 * stats['near_one_hot']:.1f}% of pixels")  # fmt: skip
    print(f"results in {out}")
    return result


cli = command(main)


if __name__ == "__main__":
    sys.exit(cli())
