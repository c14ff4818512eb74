"""Joint transforms, the resumable sharded sample order, per-sample seeding and the synthetic scenes."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from segdistill.config import DataConfig
from segdistill.data import transforms as T
from segdistill.data.loader import (
    DataPosition,
    ShardedEpochSampler,
    TransformedDataset,
    eval_loader,
    train_loader,
)
from segdistill.data.synthetic import SyntheticScenes

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IGNORE = 255


def coordinate_image(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose red / green channels are the column / row and a label that encodes both."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = torch.stack([xx, yy, torch.full_like(xx, 7)]).to(torch.uint8)
    return image, (yy * w + xx).long()


def denormalise(image: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    return ((image * std + mean) * 255).round().long()


@pytest.mark.parametrize("crop", [(16, 24), (40, 8)])
def test_train_transform_yields_crop_size(crop: tuple[int, int]) -> None:
    transform = T.train_transform(crop, (0.5, 2.0), True, MEAN, STD, IGNORE)
    image, label = torch.randint(0, 256, (3, 30, 20), dtype=torch.uint8), torch.randint(0, 5, (30, 20))
    for seed in range(6):
        torch.manual_seed(seed)
        out_image, out_label = T.apply(transform, image, label)
        assert out_image.shape == (3, *crop) and out_image.dtype == torch.float32
        assert out_label.shape == crop and out_label.dtype == torch.int64
        assert set(out_label.unique().tolist()) <= {0, 1, 2, 3, 4, IGNORE}


def test_padding_uses_ignore_index() -> None:
    transform = T.train_transform((16, 20), (1.0, 1.0), False, MEAN, STD, IGNORE)
    image, label = torch.full((3, 10, 12), 200, dtype=torch.uint8), torch.ones(10, 12, dtype=torch.long)
    for seed in range(4):
        torch.manual_seed(seed)
        out_image, out_label = T.apply(transform, image, label)
        inside = out_label == 1
        rows, cols = inside.any(1).nonzero().flatten(), inside.any(0).nonzero().flatten()
        assert inside.sum() == 10 * 12 and len(rows) == 10 and len(cols) == 12  # the whole image, one block
        assert (out_label[~inside] == IGNORE).all()
        pixels = denormalise(out_image)
        assert (pixels[:, inside] == 200).all() and (pixels[:, ~inside] == 0).all()  # image padded with 0


def test_flip_and_crop_keep_image_and_label_together() -> None:
    image, label = coordinate_image(20, 30)
    transform = T.train_transform((12, 18), (1.0, 1.0), True, MEAN, STD, IGNORE)
    flipped = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out_label = T.apply(transform, image, label)
        pixels = denormalise(out_image)
        assert torch.equal(pixels[1] * 30 + pixels[0], out_label)  # every pixel still carries its own label
        flipped.add(bool(pixels[0, 0, 0] > pixels[0, 0, -1]))
    assert flipped == {True, False}


def test_scaled_crop_keeps_image_and_label_together() -> None:
    image, _ = coordinate_image(24, 32)
    yy, xx = torch.meshgrid(torch.arange(24), torch.arange(32), indexing="ij")
    label = (yy // 6 * 5 + xx // 8) % 7  # 6 x 8 blocks, no two neighbours alike
    image[2] = (label * 30).to(torch.uint8)  # blue encodes the class
    transform = T.train_transform((16, 16), (1.5, 2.0), True, MEAN, STD, IGNORE)
    for seed in range(4):
        torch.manual_seed(seed)
        out_image, out_label = T.apply(transform, image, label)
        blue = denormalise(out_image)[2]
        agree = (blue - out_label * 30).abs() <= 2
        assert agree.float().mean() > 0.6  # bilinear image vs nearest label: edges may differ


def test_eval_transform_normalises() -> None:
    image, label = torch.randint(0, 256, (3, 9, 11), dtype=torch.uint8), torch.randint(0, 4, (9, 11))
    out_image, out_label = T.apply(T.eval_transform(MEAN, STD), image, label)
    expected = (image.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    torch.testing.assert_close(out_image, expected)
    assert torch.equal(out_label, label)


# ---- sample order


def test_sampler_shards_each_epoch_exactly_once() -> None:
    size, batch, world = 24, 3, 2
    per_rank = [ShardedEpochSampler(size, batch, rank, world, 5, DataPosition()) for rank in range(world)]
    for epoch in range(3):
        parts = [sampler.epoch_indices(epoch) for sampler in per_rank]
        assert all(len(part) == size // world for part in parts)
        assert set(parts[0]).isdisjoint(parts[1])
        assert sorted(parts[0] + parts[1]) == list(range(size))
    assert per_rank[0].epoch_indices(0) != per_rank[0].epoch_indices(1)  # reshuffled every epoch


def test_sampler_drops_the_incomplete_global_batch() -> None:
    sampler = ShardedEpochSampler(25, 3, 0, 2, 0, DataPosition())
    assert sampler.steps_per_epoch == 4 and len(sampler.epoch_indices(0)) == 12
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShardedEpochSampler(5, 3, 0, 2, 0, DataPosition())


@pytest.mark.parametrize("rank", [0, 1])
def test_sampler_resumes_mid_epoch(rank: int) -> None:
    size, batch, world, seed = 24, 3, 2, 11
    whole = ShardedEpochSampler(size, batch, rank, world, seed, DataPosition())
    steps_per_epoch = whole.steps_per_epoch
    uninterrupted = list(itertools.islice(iter(whole), 3 * steps_per_epoch * batch))
    resumed = ShardedEpochSampler(size, batch, rank, world, seed, DataPosition(epoch=1, step=2))
    skipped = (steps_per_epoch + 2) * batch
    assert list(itertools.islice(iter(resumed), len(uninterrupted) - skipped)) == uninterrupted[skipped:]


def test_data_position_advances_across_epochs() -> None:
    position = DataPosition()
    for _ in range(7):
        position.advance(steps_per_epoch=3)
    assert (position.epoch, position.step) == (2, 1)


# ---- per-sample seeding and loaders


def small_synthetic() -> SyntheticScenes:
    return SyntheticScenes("train", 16, (24, 28), seed=3)


def test_transformed_dataset_ignores_global_rng_state() -> None:
    transform = T.train_transform((16, 16), (0.5, 2.0), True, MEAN, STD, IGNORE)
    dataset = TransformedDataset(small_synthetic(), transform)
    torch.manual_seed(0)
    first = dataset[(5, 1234)]
    torch.manual_seed(99)
    torch.rand(1000)
    state = torch.get_rng_state()
    second = dataset[(5, 1234)]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]) and first[2] == second[2] == 5
    other = dataset[(5, 4321)]
    assert not torch.equal(first[0], other[0])  # another seed, another augmentation


def loader_config(num_workers: int) -> DataConfig:
    return DataConfig(
        crop_size=(16, 16), scale_range=(0.5, 2.0), batch_size=4, val_batch_size=2, num_workers=num_workers
    )


def take(loader, count: int) -> list:
    return list(itertools.islice(iter(loader), count))


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (image_a, label_a, index_a), (image_b, label_b, index_b) in zip(a, b, strict=True):
        assert torch.equal(image_a, image_b) and torch.equal(label_a, label_b) and torch.equal(index_a, index_b)


def test_train_loader_same_batches_for_any_worker_count_and_on_resume() -> None:
    dataset = small_synthetic()
    serial, sampler = train_loader(dataset, loader_config(0), 0, 1, 7, DataPosition())
    batches = take(serial, 6)
    assert batches[0][0].shape == (4, 3, 16, 16) and batches[0][1].shape == (4, 16, 16)
    parallel, _ = train_loader(dataset, loader_config(2), 0, 1, 7, DataPosition())
    assert_same_batches(batches, take(parallel, 6))
    resumed, _ = train_loader(dataset, loader_config(0), 0, 1, 7, DataPosition(epoch=1, step=1))
    skipped = sampler.steps_per_epoch + 1
    assert_same_batches(batches[skipped:], take(resumed, 6 - skipped))


def test_eval_loader_shards_without_padding() -> None:
    dataset = SyntheticScenes("val", 5, (12, 12), seed=0)
    seen = []
    for rank in range(2):
        for image, label, index in eval_loader(dataset, loader_config(0), rank, 2):
            assert image.dtype == torch.float32 and label.shape[-2:] == (12, 12)
            seen += index.tolist()
    assert sorted(seen) == list(range(5))


# ---- synthetic scenes


def test_synthetic_is_deterministic_and_splits_differ() -> None:
    a, b = small_synthetic(), small_synthetic()
    for index in (0, 7):
        image_a, label_a = a[index]
        image_b, label_b = b[index]
        assert torch.equal(image_a, image_b) and torch.equal(label_a, label_b)
        assert image_a.dtype == torch.uint8 and image_a.shape == (3, 24, 28)
        assert label_a.dtype == torch.int64 and 0 <= label_a.min() and label_a.max() < a.info.num_classes
    val = SyntheticScenes("val", 16, (24, 28), seed=3)
    assert not torch.equal(a[0][0], val[0][0])
    assert not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(a[0][0], SyntheticScenes("train", 16, (24, 28), seed=4)[0][0])
    with pytest.raises(IndexError):
        a[16]


def test_synthetic_through_registry_uses_split_lengths() -> None:
    from segdistill.data import build_dataset

    cfg = DataConfig()
    cfg = dataclasses.replace(cfg, synthetic=dataclasses.replace(cfg.synthetic, num_train=10, num_val=4, size=(8, 8)))
    assert len(build_dataset(cfg, "train")) == 10 and len(build_dataset(cfg, "val")) == 4
