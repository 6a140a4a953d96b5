"""The DataModule: train/val ShardDatasets, optional augmentation, loaders with workers.

Under DDP, Lightning wraps the loaders' samplers in a DistributedSampler, so each rank sees a
disjoint part of the data every epoch, reshuffled by epoch (``set_epoch``), no global state.

Bad shards (``train.on_bad_shard``): every read checks each chunk's Fletcher-32 checksum, and
with ``fail`` the first damaged chunk read stops training with a one-line
:class:`~hpc_bliss.errors.ShardError` naming file, dataset and row. With ``skip`` every train
and val shard is validated before training (:func:`bad_shards`: each dataset read whole, so
each chunk's checksum, and the data's content_sha256), and the bad ones are left out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from hpc_bliss.config import TrainConfig
from hpc_bliss.io.integrity import CHECKSUM, file_unprotected
from hpc_bliss.io.manifest import read_manifest
from hpc_bliss.io.reader import ShardDataset
from hpc_bliss.io.shards import validate_shard
from hpc_bliss.train.augment import augment

SPLITS = ("train", "val")  #: the splits training reads


@dataclass(frozen=True)
class BadShard:
    """A shard left out of training (``train.on_bad_shard=skip``) and why."""

    id: int
    split: str
    n_images: int
    problem: str  #: the first problem found, naming the file


def bad_shards(data_dir: str | Path) -> list[BadShard]:
    """The train and val shards of ``data_dir`` that fail :func:`validate_shard` (every
    dataset read whole, so every chunk's Fletcher-32 checksum, then the content_sha256, the
    attributes and the layout), in id order."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    found = []
    for r in sorted(manifest["shards"], key=lambda r: r["id"]):
        if r["split"] in SPLITS:
            problems = validate_shard(data_dir / r["file"], manifest["config_hash"])
            if problems:
                found.append(BadShard(r["id"], r["split"], r["n_images"], problems[0]))
    return found


def unprotected_note(data_dir: str | Path) -> str | None:
    """A line on the train and val shard files written without Fletcher-32 checksums (whose
    damage no read notices), or None when every one has them."""
    data_dir = Path(data_dir)
    records = [r for r in read_manifest(data_dir)["shards"] if r["split"] in SPLITS]
    paths = [data_dir / r["file"] for r in records if (data_dir / r["file"]).is_file()]
    bare = [p for p in dict.fromkeys(paths) if file_unprotected(p)]
    if not bare:
        return None
    return (
        f"[train] {len(bare)} of {len(set(paths))} train/val shard file(s) have no {CHECKSUM} "
        f"checksums (written before them), so damage there reads unnoticed: `hpc-bliss validate "
        f"{data_dir}` checks them, `hpc-bliss validate --refresh {data_dir}` adds the checksums"
    )


def worker_message(err: Exception) -> str:
    """The message of an error raised in a DataLoader worker process: it reaches the main
    process as ``Caught ShardError in DataLoader worker process 0.`` and the traceback, whose
    last line is ``hpc_bliss.errors.ShardError: MESSAGE``; any other error's own message."""
    text = str(err)
    prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
    last = text.rstrip().rsplit("\n", 1)[-1]
    return last[len(prefix) :] if "\n" in text and last.startswith(prefix) else text


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
    """The train and val splits of ``cfg.data_dir``; ``skipped``: the bad shards left out
    (``train.on_bad_shard=skip``), each logged by ``log`` (rank 0 prints)."""

    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.log = log or rank_zero_only(lambda line: print(line, flush=True))
        self.train_set: Dataset | None = None
        self.val_set: ShardDataset | None = None
        self.skipped: list[BadShard] = []

    @property
    def skipped_images(self) -> int:
        return sum(b.n_images for b in self.skipped)

    def _check_shards(self) -> set[int]:
        """The ids of the shards to leave out: the bad ones with ``skip``; none with ``fail``
        (a damaged chunk stops training when read), noting shards without checksums."""
        if self.cfg.on_bad_shard != "skip":
            note = unprotected_note(self.cfg.data_dir)
            if note:
                self.log(note)
            return set()
        self.skipped = bad_shards(self.cfg.data_dir)
        for b in self.skipped:
            self.log(
                f"[train] skipping {b.split} shard {b.id:06d} ({b.n_images} images): {b.problem}"
            )
        return {b.id for b in self.skipped}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            exclude = self._check_shards()
            train = ShardDataset(self.cfg.data_dir, "train", exclude)
            self.n_train = len(train)
            self.train_set = Augmented(train) if self.cfg.augment else train
            self.val_set = ShardDataset(self.cfg.data_dir, "val", exclude)
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
