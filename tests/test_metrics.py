"""Confusion matrix and segmentation metrics against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from segdistill.metrics import ConfusionMatrix, SegMetrics

IGNORE = 255

# A 2x3 example with 3 classes:
#   labels       predictions
#   0 0 1        0 1 1
#   1 2 2        1 2 0
# class 0: gt {(0,0),(0,1)}, pred {(0,0),(1,2)}        -> TP 1, union 2+2-1 = 3 -> IoU 1/3, acc 1/2
# class 1: gt {(0,2),(1,0)}, pred {(0,1),(0,2),(1,0)}  -> TP 2, union 2+3-2 = 3 -> IoU 2/3, acc 2/2
# class 2: gt {(1,1),(1,2)}, pred {(1,1)}              -> TP 1, union 2+1-1 = 2 -> IoU 1/2, acc 1/2
LABELS = torch.tensor([[0, 0, 1], [1, 2, 2]])
PREDS = torch.tensor([[0, 1, 1], [1, 2, 0]])


def metrics_of(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> SegMetrics:
    cm = ConfusionMatrix(num_classes, IGNORE)
    cm.update(preds, labels)
    return cm.result()


def test_hand_computed_example() -> None:
    cm = ConfusionMatrix(3, IGNORE)
    cm.update(PREDS, LABELS)
    # rows: ground truth, columns: prediction
    assert cm.counts.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    m = cm.result()
    assert m.iou == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert m.miou == pytest.approx(0.5)
    assert m.accuracy == pytest.approx([1 / 2, 1.0, 1 / 2])
    assert m.mean_accuracy == pytest.approx(2 / 3)
    assert m.pixel_accuracy == pytest.approx(4 / 6)


def test_batched_input_is_the_same_as_per_image() -> None:
    batch = ConfusionMatrix(3, IGNORE)
    batch.update(torch.stack([PREDS, PREDS.flip(-1)]), torch.stack([LABELS, LABELS]))
    single = ConfusionMatrix(3, IGNORE)
    single.update(PREDS, LABELS)
    single.update(PREDS.flip(-1), LABELS)
    assert torch.equal(batch.counts, single.counts)
    assert int(batch.counts.sum()) == 12


def test_ignore_index_excluded() -> None:
    # mark the wrong prediction at (1,2) (label 2, predicted 0) as ignored
    labels = LABELS.clone()
    labels[1, 2] = IGNORE
    m = metrics_of(PREDS, labels, 3)
    # class 0: gt {(0,0),(0,1)}, pred {(0,0)} -> 1/2;  class 1 unchanged 2/3;  class 2: gt {(1,1)}, pred {(1,1)} -> 1
    assert m.iou == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert m.pixel_accuracy == pytest.approx(4 / 5)
    assert m.miou == pytest.approx((1 / 2 + 2 / 3 + 1.0) / 3)


def test_all_pixels_ignored_counts_nothing() -> None:
    cm = ConfusionMatrix(3, IGNORE)
    cm.update(PREDS, torch.full_like(LABELS, IGNORE))
    assert int(cm.counts.sum()) == 0
    assert all(math.isnan(v) for v in cm.result().iou)


def test_absent_class_is_nan_and_excluded() -> None:
    m = metrics_of(PREDS, LABELS, 4)  # class 3 in neither labels nor predictions
    assert math.isnan(m.iou[3])
    assert math.isnan(m.accuracy[3])
    assert m.iou[:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert m.miou == pytest.approx(0.5)  # not 1.5 / 4
    assert m.mean_accuracy == pytest.approx(2 / 3)


def test_class_only_predicted_has_zero_iou() -> None:
    # class 3 is predicted at one pixel but never in the labels: IoU 0 (counted), recall undefined
    preds = PREDS.clone()
    preds[0, 0] = 3
    m = metrics_of(preds, LABELS, 4)
    assert m.iou[3] == 0.0
    assert math.isnan(m.accuracy[3])
    # class 0 loses its only true positive: TP 0 -> IoU 0
    assert m.iou[0] == 0.0
    assert m.miou == pytest.approx((0 + 2 / 3 + 1 / 2 + 0) / 4)


def test_miou_is_set_level_not_mean_of_images() -> None:
    # image A: labels all 0, predicted all 0           -> per-image mIoU 1 (class 1 absent)
    # image B: labels [[0,1],[1,1]], predicted all 1   -> class 0: 0/1, class 1: 3/4 -> per-image mIoU 0.375
    # mean of per-image values: 0.6875
    # over the set: class 0: TP 4, gt 5, pred 4 -> 4/5; class 1: TP 3, gt 3, pred 4 -> 3/4 -> mIoU 0.775
    labels_a, preds_a = torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long)
    labels_b, preds_b = torch.tensor([[0, 1], [1, 1]]), torch.ones(2, 2, dtype=torch.long)
    assert metrics_of(preds_a, labels_a, 2).miou == pytest.approx(1.0)
    assert metrics_of(preds_b, labels_b, 2).miou == pytest.approx(0.375)
    cm = ConfusionMatrix(2, IGNORE)
    cm.update(preds_a, labels_a)
    cm.update(preds_b, labels_b)
    m = cm.result()
    assert m.iou == pytest.approx([0.8, 0.75])
    assert m.miou == pytest.approx(0.775)
    assert m.miou != pytest.approx(0.6875)


def test_sum_of_matrices_equals_matrix_of_concatenation() -> None:
    g = torch.Generator().manual_seed(0)
    k = 6
    labels = torch.randint(0, k, (2, 17, 23), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.1] = IGNORE
    preds = torch.randint(0, k, (2, 17, 23), generator=g)
    first, second, whole = ConfusionMatrix(k, IGNORE), ConfusionMatrix(k, IGNORE), ConfusionMatrix(k, IGNORE)
    first.update(preds[0], labels[0])
    second.update(preds[1], labels[1])
    whole.update(torch.cat([preds[0], preds[1]]), torch.cat([labels[0], labels[1]]))
    assert torch.equal(first.counts + second.counts, whole.counts)
    assert int(whole.counts.sum()) == int((labels != IGNORE).sum())
    # and the metrics of the summed counts are those of the whole
    summed = SegMetrics.from_counts(first.counts + second.counts)
    assert summed.iou == pytest.approx(whole.result().iou, nan_ok=True)
    assert summed.miou == pytest.approx(whole.result().miou)


def test_counts_against_a_loop() -> None:
    g = torch.Generator().manual_seed(1)
    k = 4
    labels = torch.randint(0, k + 1, (3, 9, 11), generator=g)
    labels[labels == k] = IGNORE
    preds = torch.randint(0, k, (3, 9, 11), generator=g)
    cm = ConfusionMatrix(k, IGNORE)
    cm.update(preds, labels)
    expected = [[0] * k for _ in range(k)]
    for gt, pr in zip(labels.flatten().tolist(), preds.flatten().tolist(), strict=True):
        if gt != IGNORE:
            expected[gt][pr] += 1
    assert cm.counts.tolist() == expected


def test_table_is_readable() -> None:
    table = metrics_of(PREDS, LABELS, 3).table(["road", "car", "sky"])
    assert "road" in table and "sky" in table
    assert "33.3" in table  # class 0 IoU in percent
    assert "50.0" in table  # the mean


def test_ids_outside_the_classes_are_refused() -> None:
    cm = ConfusionMatrix(3, IGNORE)
    labels = torch.tensor([[0, 1], [2, IGNORE]])
    with pytest.raises(ValueError, match=r"prediction ids span 0\.\.3; expected 0\.\.2"):
        cm.update(torch.tensor([[0, 3], [1, 0]]), labels)
    with pytest.raises(ValueError, match=r"label ids span -1\.\.2"):
        cm.update(torch.tensor([[0, 1], [1, 0]]), torch.tensor([[0, -1], [2, IGNORE]]))
    assert int(cm.counts.sum()) == 0  # a refused batch counts nothing
    cm.update(torch.tensor([[0, 1], [2, 7]]), labels)  # the prediction at an ignored pixel is not counted
    assert cm.counts.diag().tolist() == [1, 1, 1] and int(cm.counts.sum()) == 3
