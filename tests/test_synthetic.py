"""The built-in synthetic scenes: label noise touches only object labels of the training split."""

from __future__ import annotations

import torch

from segdistill.data.synthetic import CLASSES, FIRST_OBJECT, SyntheticScenes


def test_label_noise_relabels_objects_and_nothing_else() -> None:
    clean = SyntheticScenes("train", 6, (48, 48), seed=3, label_noise=0.0)
    noisy = SyntheticScenes("train", 6, (48, 48), seed=3, label_noise=1.0)
    for i in range(len(clean)):
        (image_c, label_c), (image_n, label_n) = clean[i], noisy[i]
        assert torch.equal(image_c, image_n), "label noise must not change the image"
        objects = label_c >= FIRST_OBJECT
        assert objects.any()
        assert torch.equal(label_c[~objects], label_n[~objects]), "sky / ground labels must stay"
        assert (label_n[objects] != label_c[objects]).all(), "with noise 1 every object is relabelled"
        assert ((label_n[objects] >= FIRST_OBJECT) & (label_n[objects] < len(CLASSES))).all()


def test_validation_labels_are_always_clean() -> None:
    val_noisy = SyntheticScenes("val", 4, (48, 48), label_noise=1.0)
    val_clean = SyntheticScenes("val", 4, (48, 48), label_noise=0.0)
    assert all(torch.equal(val_noisy[i][1], val_clean[i][1]) for i in range(4))


def test_noise_rate_is_about_as_configured() -> None:
    clean = SyntheticScenes("train", 200, (32, 32), label_noise=0.0)
    noisy = SyntheticScenes("train", 200, (32, 32), label_noise=0.25)
    changed = total = 0
    for i in range(len(clean)):
        c, n = clean[i][1], noisy[i][1]
        for value in c.unique().tolist():
            if value >= FIRST_OBJECT:  # one visible object class region: relabelled as a whole or not at all
                region = c == value
                total += 1
                changed += int((n[region] != value).any())
    assert 0.15 < changed / total < 0.35
