"""Experiment loggers for the Lightning Trainer, chosen by ``logger.kind``: wandb, csv or none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger

from vwl_lightning.errors import ConfigError
from vwl_lightning.tracking.wandb_runs import init_kwargs, uses_wandb


def build_logger(cfg: Any, save_dir: Path, stage: str, group: str) -> Logger | bool:
    """A logger writing under ``save_dir``; ``stage`` becomes the W&B job type, ``group`` its group."""
    kind = cfg.get("kind", "csv")
    if kind == "none":
        return False
    if kind == "csv":
        return CSVLogger(save_dir=str(save_dir), name="logs", version="")
    if kind == "wandb":
        if not uses_wandb(cfg):
            return False
        from pytorch_lightning.loggers import WandbLogger

        kwargs = init_kwargs(cfg, stage, group, save_dir)
        kwargs["save_dir"] = kwargs.pop("dir")
        logger = WandbLogger(log_model=False, **kwargs)
        # Lightning always passes anonymous=None, which current W&B answers with a deprecation notice per run
        if getattr(logger, "_wandb_init", {}).get("anonymous", 0) is None:
            logger._wandb_init.pop("anonymous")
        return logger
    raise ConfigError(f"logger.kind must be csv, wandb or none, got {kind!r}")
