"""The `train` stage: `train(cfg)` fits the encoder on `train.data_dir`'s shards.

Runs as one process, as local DDP (`train.devices=2`: Lightning starts the other process), or
under SLURM/submitit (one process per task; Lightning's SLURMEnvironment finds its rank).
Rerunning with the same `train.output_dir` resumes from `last.ckpt`.
"""

from __future__ import annotations

import math
import socket
import warnings
from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)

from hpc_bliss.config import Config
from hpc_bliss.errors import ConfigError, LaunchError, ShardError
from hpc_bliss.io.manifest import read_manifest
from hpc_bliss.parallel.env import mpi_problem, under_mpi_launcher
from hpc_bliss.train.data import ShardDataModule, worker_message
from hpc_bliss.train.lit_module import EncoderModule
from hpc_bliss.train.ranks import RankReport


def _loggers(out: Path) -> list:
    loggers: list = [CSVLogger(out, name="logs")]
    try:
        import tensorboard  # noqa: F401
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(out, name="tensorboard"))
    except ImportError:
        pass
    return loggers


def cluster_environment() -> ClusterEnvironment:
    """Lightning's own choice (TorchElastic, SLURM, LSF, MPI, else local), except that MPI is
    asked only when an MPI launcher started this process: Lightning's MPI check imports
    mpi4py.MPI, which raises where no MPI library can be loaded."""
    for env_type in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment):
        if env_type.detect():
            return env_type()
    if under_mpi_launcher():
        problem = mpi_problem()
        if problem:
            raise LaunchError(f"train: started by an MPI launcher, but {problem}")
        if MPIEnvironment.detect():
            return MPIEnvironment()
    return LightningEnvironment()


def build_trainer(cfg: Config, total_steps: int) -> pl.Trainer:
    t = cfg.train
    out = Path(t.output_dir)
    world = t.devices * t.num_nodes
    # Both callbacks write last.ckpt, whichever saves the newer state; the names are fixed
    # (resume and evaluate look for them), so no "-v1" versions: without this, the second
    # writer went to last-v1.ckpt and a resumed run started from the older last.ckpt.
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor="val/loss",
        mode="min",
        save_last=True,
        enable_version_counter=False,
    )
    return pl.Trainer(
        default_root_dir=out,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy="ddp" if world > 1 else "auto",
        plugins=[cluster_environment()],
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        max_time=timedelta(minutes=t.max_minutes) if t.max_minutes > 0 else None,
        callbacks=[
            checkpoint,
            # last.ckpt mid-epoch too, so a preempted job loses at most this many steps
            ModelCheckpoint(
                dirpath=out / "checkpoints",
                save_top_k=0,
                save_last=True,
                every_n_train_steps=max(1, t.checkpoint_every_steps),
                enable_version_counter=False,
            ),
            RankReport(out, record_items=t.record_items),
        ],
        logger=_loggers(out),
        log_every_n_steps=max(1, min(50, total_steps // 10)),
        enable_progress_bar=True,
    )


def train(cfg: Config) -> dict:
    """Fit the encoder; returns the checkpoint paths, the global step and the last val metrics."""
    with warnings.catch_warnings():  # for this call only
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning-internal
        return _train(cfg)


def _train(cfg: Config) -> dict:
    t = cfg.train
    try:
        manifest = read_manifest(Path(t.data_dir))
    except ShardError as err:
        raise ConfigError(f"train.data_dir: {err}") from err
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = ShardDataModule(t)
    data.setup()
    steps_per_epoch = max(1, data.n_train // (t.batch_size * t.devices * t.num_nodes))
    total = t.max_steps if t.max_steps > 0 else steps_per_epoch * t.max_epochs
    module = build_module(cfg, data.n_bands, data.tile_slen, max(1, math.ceil(total)))
    module.data_config_yaml = manifest.get("config_yaml")  # checkpoints say what survey
    trainer = build_trainer(cfg, total)
    skipped = _skipped_metrics(data) if t.on_bad_shard == "skip" else {}
    for logger in trainer.loggers if skipped else []:  # metrics.csv (and TensorBoard), rank 0
        logger.log_metrics(skipped, step=0)
    last = Path(t.output_dir) / "checkpoints" / "last.ckpt"
    _fit(trainer, module, data, last if last.exists() else None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()} | skipped
    ckpt = trainer.checkpoint_callback
    return {
        "best": getattr(ckpt, "best_model_path", ""),
        "last": str(last),
        "global_step": trainer.global_step,
        "metrics": metrics,
        "skipped_shards": [b.id for b in data.skipped],
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "host": socket.gethostname(),
    }


def build_module(cfg: Config, n_bands: int, tile_slen: int, total_steps: int) -> EncoderModule:
    """The EncoderModule ``cfg`` trains on data of ``n_bands`` bands and ``tile_slen``-px tiles
    (the train section's sizes and rates, and :func:`model_arguments`)."""
    t = cfg.train
    return EncoderModule(
        n_bands=n_bands,
        tile_slen=tile_slen,
        hidden=t.hidden,
        n_blocks=t.n_blocks,
        border_tiles=t.border_tiles,
        learning_rate=t.learning_rate,
        min_flux_threshold=t.min_flux_threshold,
        total_steps=total_steps,
        **model_arguments(cfg),
    )


def model_arguments(cfg: Config) -> dict:
    """EncoderModule arguments from ``model``: the tiling (``tiling`` and ``colors``, only
    for the checkerboard: an independent encoder's hyperparameters are those of before), the
    flux heads' aperture anchor (only when on) and the lensing head's
    (:func:`lensing_arguments`)."""
    m = cfg.model
    tiling = {"tiling": m.tiling, "colors": m.colors} if m.tiling != "independent" else {}
    anchor = {"aperture_flux": True} if m.aperture_flux else {}
    return tiling | anchor | lensing_arguments(cfg)


def lensing_arguments(cfg: Config) -> dict:
    """The lensing head's EncoderModule arguments (none when ``model.lensing.enabled`` is
    false: the encoder and its loss are then exactly those without a lensing head)."""
    head = cfg.model.lensing
    if not head.enabled:
        return {}
    return {
        "lensing_tiles_per_cell": head.tiles_per_cell,
        "lensing_hidden": head.hidden,
        "lensing_weight": head.weight,
    }


def _skipped_metrics(data: ShardDataModule) -> dict[str, float]:
    """The logged metrics of ``train.on_bad_shard=skip``: bad shards and images left out."""
    return {
        "data/skipped_shards": float(len(data.skipped)),
        "data/skipped_images": float(data.skipped_images),
    }


def _fit(trainer: pl.Trainer, module: EncoderModule, data: ShardDataModule, ckpt: Path | None):
    """``trainer.fit``; a bad shard read (here or in a DataLoader worker, whose error comes
    wrapped in its traceback) is re-raised as one line naming the file, dataset and row."""
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt else None)
    except ShardError as err:
        skip = data.cfg.on_bad_shard == "skip"
        hint = "" if skip else " (or set train.on_bad_shard=skip to leave bad shards out)"
        raise ShardError(f"train: {worker_message(err)}{hint}") from err


def run(cfg: Config) -> int:
    """`hpc-bliss train`: train, then rank 0 prints the last validation numbers and where the
    checkpoints are."""
    result = train(cfg)
    if result["rank"] == 0:
        m = result["metrics"]
        acc = m.get("val/n_sources_accuracy")
        print(
            f"[train] step {result['global_step']}: val loss {m.get('val/loss', float('nan')):.4f}"
            + (f", val n_sources accuracy {acc:.4f}" if acc is not None else "")
        )
        print(f"[train] checkpoints: {result['best'] or '-'} (best), {result['last']} (last)")
        if "data/skipped_images" in m:
            print(
                f"[train] skipped {m['data/skipped_images']:.0f} images: "
                f"{len(result['skipped_shards'])} bad shard(s) {result['skipped_shards']} left out "
                "(train.on_bad_shard=skip)"
            )
    return 0
