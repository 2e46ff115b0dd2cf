"""Task: train the classifier stage and leave ``<run_dir>/classifier/`` with the final checkpoint.

Outputs::

    classifier/checkpoints/last.ckpt   Lightning's rolling checkpoint (resume point)
    classifier/classifier.ckpt         the final weights (written atomically when training ends)
    classifier/manifest.json           written last: config, data set, metrics, checkpoint path

Run again with the same ``run_dir``: a completed stage is skipped; an interrupted one resumes from
``last.ckpt``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from vwl_lightning.data.datamodule import ClassificationDataModule
from vwl_lightning.modules.classifier import ClassifierModule
from vwl_lightning.tracking.loggers import build_callbacks, build_logger
from vwl_lightning.tracking.wandb_runs import finish_active_run, log_artifact
from vwl_lightning.utils.checkpoints import AtomicCheckpointIO, usable_resume_checkpoint
from vwl_lightning.utils.instantiate import build, check_node
from vwl_lightning.utils.manifest import read_manifest, write_manifest

log = logging.getLogger(__name__)

STAGE = "classifier"
STAGE_SETTINGS = ("max_epochs", "checkpoint_every_n_steps")  # model.* keys that are the stage's schedule
FINAL_CHECKPOINT = "classifier.ckpt"


def build_datamodule(cfg: DictConfig) -> ClassificationDataModule:
    d = cfg.data
    return ClassificationDataModule(
        source=OmegaConf.to_container(d.source, resolve=True), train_split=d.train_split,
        val_split=d.val_split, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers, train_transform=OmegaConf.to_container(d.train_transform, resolve=True),
        eval_size=d.eval_size, pin_memory=d.pin_memory, normalise=OmegaConf.to_container(d.normalise, resolve=True),
    )


def module_node(cfg: DictConfig) -> dict[str, Any]:
    """The ``model`` node without the stage's own settings: the module's ``_target_`` node."""
    return {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in STAGE_SETTINGS}


def check_classifier(cfg: DictConfig) -> None:
    """The start-up checks of the ``model`` node: its arguments' names, and every ``_target_`` node checked by its
    class (one line naming ``model.<key>``); nothing is built."""
    check_node(module_node(cfg), "model")


def build_module(cfg: DictConfig, num_foreground: int, class_names: list[str]) -> ClassifierModule:
    """``model`` (:class:`~vwl_lightning.modules.classifier.ClassifierModule`) for the data set's classes."""
    return build(module_node(cfg), "model", num_classes=num_foreground, class_names=class_names,
                 log_images=int(cfg.logger.get("max_images", 0)))


def build_trainer(cfg: DictConfig, stage_dir: Path, stage: str, max_epochs: int,
                  callbacks: list[pl.Callback]) -> pl.Trainer:
    trainer_args: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)
    return pl.Trainer(
        **trainer_args, max_epochs=max_epochs, default_root_dir=str(stage_dir),
        logger=build_logger(cfg.logger, stage_dir, stage=stage, group=str(cfg.name)), callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )


def train_classifier(cfg: DictConfig) -> Path:
    """Train (or resume, or skip) the classifier; return the final checkpoint path."""
    stage_dir = Path(cfg.run_dir) / STAGE
    final = stage_dir / FINAL_CHECKPOINT
    done = read_manifest(stage_dir)
    if done is not None and final.is_file():
        log.info("classifier: complete in %s, skipping", stage_dir)
        return final
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    meta = datamodule.data.meta
    module = build_module(cfg, meta.num_foreground, list(meta.class_names))
    callbacks = build_callbacks(cfg.get("callbacks"), stage_dir, cfg.model.get("checkpoint_every_n_steps"))
    trainer = build_trainer(cfg, stage_dir, STAGE, int(cfg.model.max_epochs), callbacks)
    resume = stage_dir / "checkpoints" / "last.ckpt"
    resumed = usable_resume_checkpoint(resume) is not None
    log.info("classifier: training, outputs in %s%s", stage_dir, f" (resuming from {resume})" if resumed else "")
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resumed else None, weights_only=True)
    # every rank takes part in save_checkpoint; rank 0 writes, then renames (atomic)
    partial = stage_dir / f".tmp-{FINAL_CHECKPOINT}"
    trainer.save_checkpoint(partial, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        os.replace(partial, final)
        write_manifest(stage_dir, STAGE, checkpoint=str(final), data_root=str(datamodule.data.layout.root),
                       dataset=meta.name, class_names=list(meta.class_names), metrics=metrics,
                       epochs=trainer.current_epoch, global_step=trainer.global_step,
                       resumed_from=str(resume) if resumed else None,
                       config=OmegaConf.to_container(cfg, resolve=True))
        if isinstance(trainer.logger, WandbLogger) and cfg.logger.get("log_artifacts", False):
            log_artifact(trainer.logger.experiment, final, f"{cfg.name}-classifier", "model")
            log_artifact(trainer.logger.experiment, stage_dir / "manifest.json", f"{cfg.name}-classifier-manifest",
                         "manifest")
    trainer.strategy.barrier()
    finish_active_run()
    return final
