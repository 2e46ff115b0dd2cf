"""The Lightning logger and callbacks of a trained stage, from the ``logger`` and ``callbacks`` ``_target_``
nodes (``conf/logger/``, ``conf/callbacks/``).

The stage supplies what only it knows: the logger's ``save_dir`` (and, for W&B, the run's ``name``, ``group`` and
``job_type``); the resume checkpoint's folder and cadence. ``logger.max_images`` and ``logger.log_artifacts``
say what the stages log beyond scalars and are not logger arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf
from pytorch_lightning.loggers import Logger

from vwl_lightning.tracking.wandb_runs import init_kwargs, is_wandb, uses_wandb
from vwl_lightning.utils.instantiate import build

MEDIA_KEYS = ("max_images", "log_artifacts", "mode")  # logger.* keys the stages read themselves
RESUME_CHECKPOINT = "resume_checkpoint"


def _plain(cfg: Any) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg or {})


def build_logger(cfg: Any, save_dir: Path, stage: str, group: str) -> Logger | bool:
    """The ``logger`` node's Lightning logger writing under ``save_dir`` (False: none); for W&B, ``stage`` becomes
    the job type and ``group`` the group, and the mode is :func:`~vwl_lightning.tracking.wandb_runs.wandb_mode`."""
    node = _plain(cfg)
    if "_target_" not in node:
        return False
    if is_wandb(node):
        if not uses_wandb(node):
            return False
        kwargs = init_kwargs(node, stage, group, save_dir)
        kwargs["save_dir"] = kwargs.pop("dir")
        logger = build({k: v for k, v in node.items() if k not in (*MEDIA_KEYS, "project", "entity", "tags")},
                       "logger", **kwargs)
        # Lightning always passes anonymous=None, which current W&B answers with a deprecation notice per run
        if getattr(logger, "_wandb_init", {}).get("anonymous", 0) is None:
            logger._wandb_init.pop("anonymous")
        return logger
    return build({k: v for k, v in node.items() if k not in MEDIA_KEYS}, "logger", supplied={"save_dir": str(save_dir)})


def build_callbacks(cfg: Any, stage_dir: Path, every_n_steps: int | None) -> list[pl.Callback]:
    """Every ``callbacks`` node; the resume checkpoint (``<stage_dir>/checkpoints/last.ckpt``) gets its folder and
    cadence: every ``every_n_steps`` training steps, or every epoch when None."""
    callbacks = []
    for name, node in _plain(cfg).items():
        if not isinstance(node, Mapping) or "_target_" not in node:
            continue
        extra: dict[str, Any] = {}
        if name == RESUME_CHECKPOINT:
            every = {"every_n_train_steps": int(every_n_steps)} if every_n_steps else {"every_n_epochs": 1}
            extra = {"dirpath": str(stage_dir / "checkpoints"), **every}
        callbacks.append(build(node, f"callbacks.{name}", **extra))
    return callbacks
