"""The DataModule: train/val ShardDatasets, optional augmentation, loaders with workers.

Under DDP, Lightning wraps the loaders' samplers in a DistributedSampler, so each rank sees a
disjoint part of the data every epoch, reshuffled by epoch (``set_epoch``), no global state.
"""

from __future__ import annotations

import os

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from hpc_bliss.config import TrainConfig
from hpc_bliss.io.reader import ShardDataset
from hpc_bliss.train.augment import augment


class Augmented(Dataset):
    """A dataset whose items pass through :func:`augment` (a fresh symmetry per read)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict:
        return augment(self.base[i])


def default_workers(devices_per_node: int) -> int:
    """Two loader workers per training process where the cores allow, else none."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 2 if (cores or 1) >= 2 * max(devices_per_node, 1) + 1 else 0


class ShardDataModule(pl.LightningDataModule):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_set: Dataset | None = None
        self.val_set: ShardDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            train = ShardDataset(self.cfg.data_dir, "train")
            self.train_set = Augmented(train) if self.cfg.augment else train
            self.val_set = ShardDataset(self.cfg.data_dir, "val")
            self.tile_slen = train.tile_slen
            self.n_bands = len(train.bands)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        workers = self.cfg.num_workers
        if workers < 0:
            workers = default_workers(self.cfg.devices)
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return self._loader(self.val_set, shuffle=False)
