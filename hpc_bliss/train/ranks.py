"""Who trains where: one line per training process at the start of a run, and optionally
(``train.record_items=true``) the training images each process read in each epoch.

On a cluster the line is the first thing to read when DDP misbehaves: every rank should show
its own host and device, the same world size and backend, and its share of the images. The
record, ``<train.output_dir>/items/rank-R.json``, shows that the ranks read disjoint parts of
the data set in every epoch::

    {"rank": 1, "world_size": 2, "host": "node2", "device": "cpu", "backend": "gloo",
     "epochs": {"0": [[shard_id, index_in_shard], ...], "1": [...]}}

It is rewritten at the end of every epoch; a resumed run adds its epochs to the same file.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytorch_lightning as pl
import torch

from hpc_bliss.io.manifest import write_json_atomic


def _backend() -> str:
    dist = torch.distributed
    return dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"


class RankReport(pl.Callback):
    """Prints ``[train rank R/W host device]`` and, with ``record_items``, writes
    ``items/rank-R.json`` under ``output_dir`` (see the module's docstring)."""

    def __init__(self, output_dir: str | Path, record_items: bool = False) -> None:
        self.output_dir = Path(output_dir)
        self.record_items = record_items
        self.record: dict = {}

    @property
    def path(self) -> Path:
        return self.output_dir / "items" / f"rank-{self.record['rank']}.json"

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        host, device = socket.gethostname(), str(module.device)
        self.record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "host": host,
            "device": device,
            "backend": _backend(),
            "epochs": {},
        }
        batches = trainer.num_training_batches
        loader = trainer.train_dataloader
        images = batches * loader.batch_size if loader is not None and loader.batch_size else "?"
        print(
            f"[train rank {trainer.global_rank}/{trainer.world_size} {host} {device}] "
            f"backend {self.record['backend']}; {batches} batches ({images} images) per epoch "
            f"on this rank",
            flush=True,
        )
        if self.record_items and self.path.is_file():  # a resumed run: keep earlier epochs
            self.record["epochs"] = json.loads(self.path.read_text())["epochs"]

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: pl.LightningModule, batch: dict, batch_idx: int
    ) -> None:
        if self.record_items:
            items = zip(batch["shard_id"].tolist(), batch["index_in_shard"].tolist(), strict=True)
            epoch = self.record["epochs"].setdefault(str(trainer.current_epoch), [])
            epoch.extend([s, i] for s, i in items)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.record_items:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, self.record)
