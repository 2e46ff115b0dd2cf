"""Experiment loggers for the Lightning Trainer, chosen by ``logger.kind``: csv, wandb or none."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger

from vwl_lightning.errors import ConfigError


def build_logger(cfg: Any, save_dir: Path, stage: str, group: str) -> Logger | bool:
    """A logger writing under ``save_dir``; ``stage`` becomes the W&B job type, ``group`` its group."""
    kind = cfg.get("kind", "csv")
    if kind == "none":
        return False
    if kind == "csv":
        return CSVLogger(save_dir=str(save_dir), name="logs", version="")
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        mode = cfg.get("mode", "offline")
        if mode == "online" and not os.environ.get("WANDB_API_KEY"):
            mode = "offline"
        return WandbLogger(project=cfg.get("project", "vwl_lightning"), group=group, job_type=stage,
                           tags=list(cfg.get("tags", [])), save_dir=str(save_dir), mode=mode)
    raise ConfigError(f"logger.kind must be csv, wandb or none, got {kind!r}")
