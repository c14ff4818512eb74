"""Every dataset builder on a tiny tree in its real on-disk layout: sizes, train ids, and the errors a user
can cause (missing root or split, corrupt image, mismatched or colour label, label values out of range)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdistill.config import DataConfig
from segdistill.data import DATASETS, DatasetError, build_dataset
from segdistill.errors import ConfigError

H, W = 12, 16


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (H, W)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_label(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)
    return path


def named(path: Path) -> str:
    """A pattern for a file as error messages quote it."""
    return re.escape(repr(str(path)))


def label_with(stored: dict[tuple[int, int], int], fill: int) -> np.ndarray:
    """A label image filled with ``fill`` and the given stored values at the given (y, x) pixels."""
    label = np.full((H, W), fill, dtype=np.uint8)
    for (y, x), value in stored.items():
        label[y, x] = value
    return label


@dataclass
class Tree:
    """A tiny dataset written under tmp_path, and what loading it must give."""

    cfg: DataConfig
    split: str
    length: int
    num_classes: int
    ignore_index: int
    images: list[Path]
    labels: list[Path]
    # stored value -> expected train id, written at known pixels of the first label
    expected: dict[int, int] = field(default_factory=dict)
    invalid_value: int | None = None  # a stored value that must be reported as outside the classes
    missing_split: str = "val"  # a split name whose list / folder the tree lacks
    name: str = ""

    def build(self, split: str | None = None, **overrides) -> torch.utils.data.Dataset:
        return build_dataset(dataclasses.replace(self.cfg, **overrides), split or self.split)


def pixels_for(values: list[int]) -> dict[tuple[int, int], int]:
    return {(1 + i // W, i % W): v for i, v in enumerate(values)}


def make_camvid(root: Path) -> Tree:
    expected = {0: 0, 3: 3, 10: 10, 11: 11}
    names = [f"0001TP_{i:06d}.png" for i in range(3)]
    images = [write_image(root / "train" / name, seed=i) for i, name in enumerate(names)]
    labels = [write_label(root / "trainannot" / name, label_with(pixels_for(list(expected)), 1)) for name in names]
    (root / "train.txt").write_text("".join(f"train/{name} trainannot/{name}\n" for name in names))
    return Tree(DataConfig(name="camvid", root=str(root)), "train", 3, 11, 11, images, labels, expected, 12)


def make_cityscapes(root: Path) -> Tree:
    # labelId -> trainId (cityscapesScripts): road, sidewalk, car, bicycle; void, parking, license plate
    expected = {7: 0, 8: 1, 26: 13, 33: 18, 24: 11, 0: 255, 9: 255, 1: 255, 29: 255, 255: 255}
    images, labels = [], []
    for i, city in enumerate(("aachen", "aachen", "bochum")):
        name = f"{city}_000000_{i:06d}"
        images.append(write_image(root / "leftImg8bit" / "train" / city / f"{name}_leftImg8bit.png", seed=i))
        labels.append(
            write_label(
                root / "gtFine" / "train" / city / f"{name}_gtFine_labelIds.png",
                label_with(pixels_for(list(expected)), 7),
            )
        )
    return Tree(DataConfig(name="cityscapes", root=str(root)), "train", 3, 19, 255, images, labels, expected)


def make_voc(root: Path) -> Tree:
    expected = {0: 0, 1: 1, 15: 15, 20: 20, 255: 255}
    ids = ["2007_000032", "2007_000039", "2008_000123"]
    images = [write_image(root / "JPEGImages" / f"{image_id}.jpg", seed=i) for i, image_id in enumerate(ids)]
    labels = [
        write_label(root / "SegmentationClassAug" / f"{image_id}.png", label_with(pixels_for(list(expected)), 0))
        for image_id in ids
    ]
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(ids) + "\n\n")
    return Tree(DataConfig(name="voc", root=str(root)), "train_aug", 3, 21, 255, images, labels, expected, 21)


def make_ade20k(root: Path) -> Tree:
    expected = {0: 255, 1: 0, 2: 1, 13: 12, 150: 149}
    base = root / "ADEChallengeData2016"
    images, labels = [], []
    for i in range(2):
        images.append(write_image(base / "images" / "training" / f"ADE_train_{i:08d}.jpg", seed=i))
        labels.append(
            write_label(
                base / "annotations" / "training" / f"ADE_train_{i:08d}.png", label_with(pixels_for(list(expected)), 1)
            )
        )
    return Tree(DataConfig(name="ade20k", root=str(root)), "train", 2, 150, 255, images, labels, expected, 151)


def make_cocostuff(root: Path) -> Tree:
    # raw stuffthingmaps values (COCO id - 1) around the removed ids 11, 25, 28, 29, 44, 90
    expected = {
        0: 0, 10: 10, 11: 255, 12: 11, 24: 23, 25: 255, 26: 24, 27: 25, 28: 255, 29: 255, 30: 26,
        43: 39, 44: 255, 45: 40, 89: 79, 90: 255, 91: 80, 181: 170, 255: 255,
    }  # fmt: skip
    images, labels = [], []
    for i in range(2):
        images.append(write_image(root / "images" / "train2017" / f"{i:012d}.jpg", seed=i))
        labels.append(
            write_label(root / "annotations" / "train2017" / f"{i:012d}.png", label_with(pixels_for(list(expected)), 0))
        )
    return Tree(DataConfig(name="cocostuff", root=str(root)), "train", 2, 171, 255, images, labels, expected, 200)


def make_folder(root: Path) -> Tree:
    expected = {0: 0, 1: 1, 2: 2, 255: 255}
    images, labels = [], []
    for i, suffix in enumerate((".jpg", ".png", ".bmp")):
        images.append(write_image(root / "images" / "train" / f"scene{i}{suffix}", seed=i))
        labels.append(write_label(root / "masks" / "train" / f"scene{i}.png", label_with(pixels_for(list(expected)), 2)))
    cfg = DataConfig(name="folder", root=str(root), classes=["road", "grass", "tree"], ignore_index=255)
    return Tree(cfg, "train", 3, 3, 255, images, labels, expected, 3)


MAKERS: dict[str, Callable[[Path], Tree]] = {
    "camvid": make_camvid,
    "cityscapes": make_cityscapes,
    "voc": make_voc,
    "ade20k": make_ade20k,
    "cocostuff": make_cocostuff,
    "folder": make_folder,
}


@pytest.fixture(params=list(MAKERS))
def tree(request, tmp_path: Path) -> Tree:
    made = MAKERS[request.param](tmp_path / request.param)
    made.name = request.param
    return made


def test_all_datasets_are_registered() -> None:
    assert set(MAKERS) <= set(DATASETS.names())


def test_loads_images_and_train_ids(tree: Tree) -> None:
    ds = tree.build()
    assert len(ds) == tree.length
    assert ds.info.num_classes == tree.num_classes == len(ds.info.palette)
    assert ds.info.ignore_index == tree.ignore_index
    for index in range(len(ds)):
        image, label = ds[index]
        assert image.dtype == torch.uint8 and image.shape == (3, H, W)
        assert label.dtype == torch.int64 and label.shape == (H, W)
    _, label = ds[0]
    for (y, x), stored in pixels_for(list(tree.expected)).items():
        assert int(label[y, x]) == tree.expected[stored], f"stored {stored} at ({y}, {x})"


def test_resize_halves_image_and_label(tree: Tree) -> None:
    image, label = tree.build(resize=0.5)[0]
    assert image.shape == (3, H // 2, W // 2) and label.shape == (H // 2, W // 2)
    full = tree.build()[0][1]
    assert set(label.unique().tolist()) <= set(full.unique().tolist())


@pytest.mark.parametrize("resize", [1.0, 0.5])
def test_label_reader_matches_the_items_without_reading_images(tree: Tree, resize: float) -> None:
    ds = tree.build(resize=resize)
    labels = [ds[index][1] for index in range(len(ds))]
    for image in tree.images:
        image.write_bytes(b"\x00 not an image at all " * 8)
    for index, label in enumerate(labels):
        assert torch.equal(ds.label(index), label)
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        ds[0]


def test_missing_root_shows_layout(tree: Tree, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=r"(?s)does not exist.*Expected layout:\n.*ROOT/"):
        tree.build(root=str(missing))


def test_missing_split(tree: Tree) -> None:
    with pytest.raises(DatasetError, match=r"(?s)does not exist\. Expected layout"):
        tree.build(split=tree.missing_split)


def test_corrupt_image_names_file(tree: Tree) -> None:
    tree.images[1].write_bytes(b"\x00 not an image at all " * 8)
    ds = tree.build()
    with pytest.raises(DatasetError, match=named(tree.images[1]) + ".*corrupt or truncated"):
        ds[1]


def test_truncated_label_names_file(tree: Tree) -> None:
    data = tree.labels[0].read_bytes()
    tree.labels[0].write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=named(tree.labels[0]) + ".*corrupt or truncated"):
        tree.build()[0]


def test_label_size_mismatch_names_file(tree: Tree) -> None:
    write_label(tree.labels[0], np.zeros((H - 2, W), np.uint8))
    with pytest.raises(DatasetError, match=named(tree.labels[0]) + r" is 16x10 .* is 16x12"):
        tree.build()[0]


def test_rgb_label_is_refused(tree: Tree) -> None:
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tree.labels[0])
    with pytest.raises(DatasetError, match=named(tree.labels[0]) + ".*mode 'RGB'.*single-channel") as err:
        tree.build()[0]
    assert "corrupt" not in str(err.value)


def test_label_values_outside_classes(tree: Tree) -> None:
    if tree.invalid_value is None:
        pytest.skip(f"{tree.name}: every stored value has a train id (unknown ones are ignored)")
    write_label(tree.labels[0], label_with({(0, 0): tree.invalid_value}, 0))
    pattern = named(tree.labels[0]) + rf".*values \[{tree.invalid_value}\] outside the {tree.num_classes}"
    with pytest.raises(DatasetError, match=pattern):
        tree.build()[0]


def test_truncated_png_image(tmp_path: Path) -> None:
    tree = make_cityscapes(tmp_path)
    data = tree.images[0].read_bytes()
    tree.images[0].write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=named(tree.images[0]) + ".*truncated"):
        tree.build()[0]


def test_needs_root(tree: Tree) -> None:
    with pytest.raises(ConfigError, match="data.root"):
        tree.build(root=None)


# ---- dataset-specific layouts and conventions


def test_cityscapes_image_without_label(tmp_path: Path) -> None:
    tree = make_cityscapes(tmp_path)
    tree.labels[2].unlink()
    with pytest.raises(DatasetError, match=named(tree.images[2]) + ".*has no label file"):
        tree.build()


def test_voc_missing_file_and_deeplab_list(tmp_path: Path) -> None:
    tree = make_voc(tmp_path)
    lists = tmp_path / "ImageSets" / "Segmentation"
    (lists / "deeplab.txt").write_text(
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
        "/JPEGImages/2008_000123.jpg /SegmentationClassAug/2008_000123.png\n"
    )
    assert len(tree.build(split="deeplab")) == 2
    tree.images[1].unlink()
    with pytest.raises(DatasetError, match="lists '2007_000039' but .*2007_000039.jpg' does not exist"):
        tree.build()


def test_voc_falls_back_to_segmentation_class(tmp_path: Path) -> None:
    tree = make_voc(tmp_path)
    (tmp_path / "SegmentationClassAug").rename(tmp_path / "SegmentationClass")
    assert len(tree.build()) == 3


@pytest.mark.parametrize("split", ["train", "training"])
def test_ade20k_root_and_split_names(tmp_path: Path, split: str) -> None:
    tree = make_ade20k(tmp_path)
    inner = tree.build(split=split, root=str(tmp_path / "ADEChallengeData2016"))
    assert len(inner) == len(tree.build(split=split)) == 2
    with pytest.raises(DatasetError, match="split 'test' unknown"):
        tree.build(split="test")


def test_cocostuff_prefers_converted_train_ids(tmp_path: Path) -> None:
    tree = make_cocostuff(tmp_path)
    for i in range(2):
        label = label_with({(0, 0): 11, (0, 1): 170, (0, 2): 255}, 5)
        write_label(tmp_path / "annotations" / "train2017" / f"{i:012d}_labelTrainIds.png", label)
    ds = tree.build(split="train2017")
    assert len(ds) == 2
    assert ds[0][1][0, :4].tolist() == [11, 170, 255, 5]  # already train ids: unchanged


def test_folder_unpaired_files(tmp_path: Path) -> None:
    tree = make_folder(tmp_path)
    orphan = write_label(tmp_path / "masks" / "train" / "lonely.png", np.zeros((H, W), np.uint8))
    with pytest.raises(DatasetError, match=named(orphan) + " has no image"):
        tree.build()
    orphan.unlink()
    tree.labels[0].unlink()
    with pytest.raises(DatasetError, match=named(tree.images[0]) + " has no mask"):
        tree.build()


def test_folder_config_errors(tmp_path: Path) -> None:
    tree = make_folder(tmp_path)
    with pytest.raises(ConfigError, match="data.classes"):
        tree.build(classes=None)
    with pytest.raises(ConfigError, match="data.ignore_index"):
        tree.build(ignore_index=1)
    ds = tree.build(ignore_index=7)
    assert ds.info.ignore_index == 7
    with pytest.raises(DatasetError, match=r"values \[255\]"):
        ds[0]
