"""``train.class_weight``: median frequency balancing checked on labels counted by hand, the list form's
checks, and the trainer computing, printing and refusing them."""

from __future__ import annotations

import re

import pytest
import torch

from segdistill.class_weight import class_weight, median_frequency
from segdistill.config import load_config
from segdistill.data import DatasetInfo, build_dataset
from segdistill.errors import ConfigError
from segdistill.train import main
from tests.helpers import TINY

IGNORE = 255


def info(classes: int) -> DatasetInfo:
    return DatasetInfo("toy", tuple(f"c{i}" for i in range(classes)), tuple((i, i, i) for i in range(classes)), IGNORE)


def toy_labels(*labels: list[list[int]]) -> list[torch.Tensor]:
    return [torch.tensor(label) for label in labels]


def test_median_frequency_by_hand() -> None:
    # class 0: 3 pixels, only in the first label (4 labelled pixels): f = 3/4
    # class 1: 1 + 2 pixels, in both labels (4 + 3 labelled pixels): f = 3/7
    # class 2: 1 pixel, in the second label only (3 labelled pixels): f = 1/3
    # class 3: absent -> weight 1; median(3/4, 3/7, 1/3) = 3/7
    labels = toy_labels([[0, 0], [0, 1]], [[1, 1], [IGNORE, 2]])
    got = median_frequency(labels, info(4))
    assert got.tolist() == pytest.approx([(3 / 7) / (3 / 4), 1.0, (3 / 7) / (1 / 3), 1.0])


def test_median_frequency_counts_only_the_labels_that_hold_the_class() -> None:
    # class 1 covers 3 of 12 pixels overall but 3 of the 4 pixels of the one label that holds it, as class 0
    # covers 9 of 12: equal frequencies, equal weights (frequencies over all pixels would give 2/3 and 2)
    labels = toy_labels([[0, 0], [0, 0]], [[0, 0], [0, 0]], [[1, 1], [1, 0]])
    assert median_frequency(labels, info(2)).tolist() == pytest.approx([1.0, 1.0])


def test_list_and_bad_values() -> None:
    assert class_weight(None, [], info(3)) is None
    assert class_weight([1.0, 0.0, 2.5], [], info(3)).tolist() == [1.0, 0.0, 2.5]
    for bad in ([1.0, 2.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0]):
        with pytest.raises(ConfigError, match=r"'train.class_weight': expected 3 weights >= 0.*c0, c1, c2"):
            class_weight(bad, [], info(3))
    with pytest.raises(ConfigError, match="no labelled pixel"):
        median_frequency(toy_labels([[IGNORE, IGNORE], [IGNORE, IGNORE]]), info(2))


def test_trainer_prints_the_weights_it_computed(tmp_path, capsys) -> None:
    main([*TINY, f"output_dir={tmp_path}", "train.iterations=1", "train.class_weight=median_frequency"])
    printed = re.search(r"class weights of the cross-entropy: (.*)", capsys.readouterr().out)
    assert printed, "the trainer did not print the class weights"
    cfg = load_config(None, [*TINY, "train.class_weight=median_frequency"])
    train_set = build_dataset(cfg.data, cfg.data.train_split)
    expected = median_frequency((train_set[i][1] for i in range(len(train_set))), train_set.info)
    got = [float(part.rsplit(" ", 1)[1]) for part in printed.group(1).split(", ")]
    assert got == pytest.approx(expected.tolist(), abs=5e-4) and len(set(got)) > 1


def test_trainer_refuses_a_list_of_the_wrong_length(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"'train.class_weight': expected \d+ weights"):
        main([*TINY, f"output_dir={tmp_path}", "train.class_weight=[1.0, 2.0]"])
    assert not (tmp_path / "checkpoints").exists()
