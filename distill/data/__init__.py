"""Datasets by name. Every builder takes (data config, split) and returns a dataset whose items are
(uint8 image (3, H, W), int64 label (H, W)) and whose ``info`` is a :class:`DatasetInfo`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from segdistill.data.ade20k import ade20k
from segdistill.data.base import DatasetError, DatasetInfo
from segdistill.data.camvid import camvid
from segdistill.data.cityscapes import cityscapes
from segdistill.data.cocostuff import cocostuff
from segdistill.data.folder import image_folder
from segdistill.data.synthetic import SyntheticScenes
from segdistill.data.voc import voc
from segdistill.errors import ConfigError, unknown_choice
from segdistill.registry import Registry

if TYPE_CHECKING:  # annotations only: segdistill.config imports this package to check data.name
    from segdistill.config import DataConfig

DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")


def _needs_root(data_cfg) -> str:
    if not data_cfg.root:
        raise ConfigError(f"config key 'data.root': dataset {data_cfg.name!r} needs the path of its folder")
    return data_cfg.root


@DATASETS.register("synthetic")
def _synthetic(data_cfg, split: str) -> Dataset:
    syn = data_cfg.synthetic
    length = syn.num_train if split == data_cfg.train_split else syn.num_val
    return SyntheticScenes(split, length, syn.size, syn.seed, syn.label_noise)


def _on_disk(builder: Callable[..., Dataset]) -> Callable[..., Dataset]:
    def build(data_cfg, split: str) -> Dataset:
        return builder(_needs_root(data_cfg), split, data_cfg.resize)

    return build


for _name, _builder in (("camvid", camvid), ("cityscapes", cityscapes), ("voc", voc), ("ade20k", ade20k), ("cocostuff", cocostuff)):
    DATASETS.register(_name)(_on_disk(_builder))


@DATASETS.register("folder")
def _folder(data_cfg, split: str) -> Dataset:
    return image_folder(_needs_root(data_cfg), split, data_cfg.classes, data_cfg.ignore_index, data_cfg.resize)


def build_dataset(data_cfg, split: str) -> Dataset:
    return DATASETS.get(data_cfg.name, "data.name")(data_cfg, split)


def data_option(value: str, trained_on: DataConfig) -> DataConfig:
    """The data settings that a command's ``--data NAME`` or ``--data NAME:ROOT`` names: those the model was
    trained with (``trained_on``) when NAME is its dataset, else NAME's defaults with its mean, std and resize;
    ROOT, when given, replaces the folder."""
    name, colon, root = value.partition(":")
    if not name or (colon and not root):
        raise ConfigError(f"--data {value!r}: expected NAME or NAME:ROOT, e.g. --data camvid:../shared/data/camvid")
    if name not in DATASETS:
        raise unknown_choice("dataset", name, DATASETS.names(), "--data")
    if name != trained_on.name:
        trained_on = type(trained_on)(name=name, mean=trained_on.mean, std=trained_on.std, resize=trained_on.resize)
    return dataclasses.replace(trained_on, root=root or trained_on.root)


__all__ = ["DATASETS", "DatasetError", "DatasetInfo", "build_dataset", "data_option"]
