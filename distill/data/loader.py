"""Resumable, sharded data order and the data loaders built on it.

The order of training samples is a pure function of (seed, epoch): every process computes the same
permutation and takes its own slice of each global batch, so each sample is seen once per epoch over all
processes. Each sample's augmentation is seeded from (seed, epoch, index), so a run resumed from a
checkpoint (which stores the position: epoch and step within the epoch) sees exactly the batches an
uninterrupted run would have seen, whatever the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from segdistill.data import transforms as T


@dataclass
class DataPosition:
    epoch: int = 0
    step: int = 0  # batches consumed in this epoch (per process)

    def advance(self, steps_per_epoch: int) -> None:
        self.step += 1
        if self.step == steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ShardedEpochSampler(Sampler):
    """Endless ``(index, augmentation seed)`` keys for one process, starting at a :class:`DataPosition`."""

    def __init__(
        self, size: int, batch_size: int, rank: int, world_size: int, seed: int, start: DataPosition
    ) -> None:
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size
        self.seed = seed
        self.start = DataPosition(start.epoch, start.step)
        self.steps_per_epoch = size // (batch_size * world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training set has {size} samples, fewer than one global batch "
                f"({batch_size} per process x {world_size} processes)"
            )

    def epoch_indices(self, epoch: int) -> list[int]:
        """This process's indices for one epoch, in the order they are consumed."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        mine = []
        global_batch = self.batch_size * self.world_size
        for step in range(self.steps_per_epoch):
            first = step * global_batch + self.rank * self.batch_size
            mine += order[first : first + self.batch_size]
        return mine

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.start.epoch, self.start.step * self.batch_size
        while True:
            for index in self.epoch_indices(epoch)[skip:]:
                yield index, sample_seed(self.seed, epoch, index)
            epoch, skip = epoch + 1, 0


class TransformedDataset(Dataset):
    """Applies a joint transform under a per-sample seed; items are (image, label, index)."""

    def __init__(self, dataset: Dataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        image, label = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would also reseed CUDA
            image, label = T.apply(self.transform, image, label)
        return image, label, index


def train_loader(
    dataset: Dataset, data_cfg, rank: int, world_size: int, seed: int, start: DataPosition
) -> tuple[DataLoader, ShardedEpochSampler]:
    info = dataset.info
    transform = T.train_transform(
        data_cfg.crop_size, data_cfg.scale_range, data_cfg.hflip, data_cfg.mean, data_cfg.std, info.ignore_index
    )
    sampler = ShardedEpochSampler(len(dataset), data_cfg.batch_size, rank, world_size, seed, start)
    loader = DataLoader(
        TransformedDataset(dataset, transform),
        batch_size=data_cfg.batch_size,
        sampler=sampler,
        num_workers=data_cfg.num_workers,
        persistent_workers=False,
        generator=torch.Generator(),  # keeps loader start-up from drawing on the global RNG
    )
    return loader, sampler


def eval_loader(dataset: Dataset, data_cfg, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Each process gets every ``world_size``-th sample, no padding: per-process sums add up exactly."""
    transform = T.eval_transform(data_cfg.mean, data_cfg.std)
    indices = list(range(rank, len(dataset), world_size))
    return DataLoader(
        torch.utils.data.Subset(TransformedDataset(dataset, transform), indices),
        batch_size=data_cfg.val_batch_size,
        shuffle=False,
        num_workers=data_cfg.num_workers,
        generator=torch.Generator(),
    )
