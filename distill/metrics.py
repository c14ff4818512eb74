"""Segmentation metrics from a confusion matrix: mIoU is total intersection over total union over the
whole set (not a mean of per-image IoUs), as in mmsegmentation and the papers."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class ConfusionMatrix:
    """Counts (ground truth, prediction) pairs over the valid pixels; sums exactly across processes."""

    def __init__(self, num_classes: int, ignore_index: int, device: torch.device | str = "cpu") -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Count a batch. An id outside 0..num_classes-1 (a label other than ignore_index, or a prediction,
        e.g. from a deployed artifact with another head) would land in a wrong cell: ValueError instead."""
        valid = labels != self.ignore_index
        labels, predictions = labels[valid], predictions[valid]
        if labels.numel():
            spans = torch.stack([labels.min(), labels.max(), predictions.min(), predictions.max()]).tolist()  # one sync
            for name, (low, high) in (("label", spans[:2]), ("prediction", spans[2:])):
                if low < 0 or high >= self.num_classes:
                    raise ValueError(
                        f"{name} ids span {low}..{high}; expected 0..{self.num_classes - 1} "
                        f"(or {self.ignore_index} for ignored labels)"
                    )
        index = labels * self.num_classes + predictions
        self.counts += torch.bincount(index, minlength=self.num_classes**2).view(self.num_classes, self.num_classes)

    def result(self) -> SegMetrics:
        return SegMetrics.from_counts(self.counts.cpu())


@dataclass
class SegMetrics:
    iou: list[float]  # per class; nan where the class is in neither labels nor predictions
    accuracy: list[float]  # per class recall; nan where the class is absent from the labels
    miou: float
    pixel_accuracy: float
    mean_accuracy: float

    @classmethod
    def from_counts(cls, counts: torch.Tensor) -> SegMetrics:
        counts = counts.double()
        tp = counts.diag()
        gt, pred = counts.sum(1), counts.sum(0)
        union = gt + pred - tp
        iou = tp / union  # 0/0 -> nan
        acc = tp / gt
        return cls(
            iou=iou.tolist(),
            accuracy=acc.tolist(),
            miou=float(iou.nanmean()),
            pixel_accuracy=float(tp.sum() / counts.sum().clamp(min=1)),
            mean_accuracy=float(acc.nanmean()),
        )

    def table(self, classes: list[str] | tuple[str, ...]) -> str:
        """A per-class IoU table a person can read."""
        width = max(len(c) for c in classes)
        lines = [f"{'class':<{width}}  IoU    Acc", "-" * (width + 15)]
        for name, iou, acc in zip(classes, self.iou, self.accuracy, strict=True):
            lines.append(f"{name:<{width}}  {100 * iou:5.1f}  {100 * acc:5.1f}")
        lines += ["-" * (width + 15), f"{'mean':<{width}}  {100 * self.miou:5.1f}  {100 * self.mean_accuracy:5.1f}"]
        lines.append(f"pixel accuracy {100 * self.pixel_accuracy:.1f}")
        return "\n".join(lines)
