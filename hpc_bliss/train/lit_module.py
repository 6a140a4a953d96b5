"""The LightningModule: the encoder, its double-detection loss (plus, with a lensing head, its
weighted lensing NLL), Adam with a cosine schedule, and validation n_sources accuracy merged
across processes as sums."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from hpc_bliss.catalog import TileCatalog
from hpc_bliss.evaluate.metrics import TileCounts
from hpc_bliss.model import Encoder, double_detection_nll
from hpc_bliss.model.lensing import lensing_target

#: the checkpoint key recording the training data's resolved config (``{"config_yaml": str}``),
#: so that a checkpoint says what survey it was trained for
PROVENANCE_KEY = "hpc_bliss_data"


class EncoderModule(pl.LightningModule):
    def __init__(
        self,
        n_bands: int,
        tile_slen: int,
        hidden: int = 64,
        n_blocks: int = 4,
        border_tiles: int = 1,
        learning_rate: float = 1e-3,
        min_flux_threshold: float = 0.0,
        total_steps: int = 1000,
        lensing_tiles_per_cell: int = 0,
        lensing_hidden: int = 32,
        lensing_weight: float = 1.0,
        tiling: str = "independent",
        colors: int = 4,
        aperture_flux: bool = False,
    ) -> None:
        super().__init__()
        # plain numbers and strings only: checkpoints load with weights_only; a checkpoint of
        # before the tiling option has neither tiling nor colors and loads as independent, and
        # one of before the aperture-flux anchor has no aperture_flux and loads without it
        self.save_hyperparameters()
        self.encoder = Encoder(
            n_bands,
            tile_slen,
            hidden,
            n_blocks,
            border_tiles,
            lensing_tiles_per_cell=lensing_tiles_per_cell,
            lensing_hidden=lensing_hidden,
            tiling=tiling,
            colors=colors,
            aperture_flux=aperture_flux,
        )
        self.tile_slen, self.border_tiles = tile_slen, border_tiles
        self.min_flux_threshold, self.learning_rate = min_flux_threshold, learning_rate
        self.total_steps, self.lensing_weight = total_steps, lensing_weight
        #: the training data's config YAML (its manifest's), saved under PROVENANCE_KEY
        self.data_config_yaml: str | None = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.data_config_yaml is not None:
            checkpoint[PROVENANCE_KEY] = {"config_yaml": self.data_config_yaml}

    def on_load_checkpoint(self, checkpoint: dict) -> None:  # a resumed run keeps the record
        record = checkpoint.get(PROVENANCE_KEY)
        if record and self.data_config_yaml is None:
            self.data_config_yaml = record["config_yaml"]

    def _catalog(self, batch: dict) -> TileCatalog:
        return TileCatalog(self.tile_slen, dict(batch["tile_catalog"]))

    def _losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """``loss``: the detection NLL (mean over tiles), plus with a lensing head
        ``lensing_weight`` × its NLL (mean over cells); then the parts, for the logs."""
        images, target = batch["images"], self._catalog(batch)
        features = self.encoder(images)
        nll = double_detection_nll(self.encoder, features, target, self.min_flux_threshold)
        detection = nll.mean()
        head = self.encoder.lensing_head
        if head is None:
            return {"loss": detection}
        q = self.encoder.lensing(features, images)
        truth = lensing_target(target, head.tiles_per_cell)
        lensing = q.nll(truth).mean()
        return {
            "loss": detection + self.lensing_weight * lensing,
            "detection_nll": detection.detach(),
            "lensing_nll": lensing.detach(),
            "shear_mse": ((q.mean - truth)[..., :2] ** 2).mean().detach(),
        }

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses, n = self._losses(batch), batch["images"].shape[0]
        loss = losses.pop("loss")
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for key, value in losses.items():
            self.log(f"train/{key}", value, batch_size=n)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        n = batch["images"].shape[0]
        for key, value in self._losses(batch).items():
            self.log(f"val/{key}", value, prog_bar=key == "loss", sync_dist=True, batch_size=n)
        truth = self._catalog(batch)
        if self.min_flux_threshold > 0:
            truth = truth.filter_by_flux(self.min_flux_threshold)
        pred = self.encoder.sample(batch["images"], use_mode=True)
        counts = TileCounts(max_count=0)  # the one count metric; no confusion matrix needed here
        counts.update_catalogs(pred, truth, self.border_tiles)
        self._val_counts += torch.tensor(
            [counts.correct, counts.within1, counts.total],
            dtype=torch.float64,
            device=self._val_counts.device,
        )

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(3, dtype=torch.float64, device=self.device)

    def on_validation_epoch_end(self) -> None:
        # counts merge across processes as sums, never as averages of per-rank rates
        correct, within1, total = self.trainer.strategy.reduce(
            self._val_counts, reduce_op="sum"
        ).tolist()
        if total > 0:
            # already summed over processes: every rank logs the same value
            self.log("val/n_sources_accuracy", correct / total, prog_bar=True, sync_dist=True)
            self.log("val/n_sources_within_1", within1 / total, sync_dist=True)
            self.log("val/tiles", total, sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.learning_rate)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt,
            T_max=max(int(self.total_steps), 1),
            eta_min=0.05 * self.learning_rate,
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
