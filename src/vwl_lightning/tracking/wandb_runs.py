"""Weights & Biases for every stage: one W&B run per stage (``job_type`` = stage, ``group`` = experiment),
offline when there is no API key or no network, finished at the end of the stage so that multirun jobs
and stages stay separate runs. ``logger=csv|none`` turn all of this off.

What is logged beyond Lightning's scalars: CAM overlays and seed / pseudo / predicted masks as
``wandb.Image`` with masks and class labels (at most ``logger.max_images`` per epoch or stage), per-class
IoU as a ``wandb.Table``, the background-score curve, and (optionally) checkpoints and stage manifests as
artifacts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.data.layout import load_rgb
from vwl_lightning.data.source import ResolvedData
from vwl_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vwl_lightning.errors import ConfigError
from vwl_lightning.tracking.pictures import cam_overlay  # noqa: F401 - logged overlays are the on-disk ones

MODES = ("offline", "online", "disabled")


def wandb_mode(logger_cfg: Mapping[str, Any]) -> str:
    """``online`` only when asked for and an API key is present (``WANDB_MODE`` wins); else ``offline``."""
    mode = os.environ.get("WANDB_MODE") or str(logger_cfg.get("mode", "offline"))
    if mode not in MODES:
        raise ConfigError(f"logger.mode must be one of {MODES}, got {mode!r}")
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or Path.home().joinpath(".netrc").is_file()):
        return "offline"
    return mode


def is_wandb(logger_cfg: Mapping[str, Any]) -> bool:
    """The ``logger`` node is Lightning's W&B logger."""
    return str(logger_cfg.get("_target_", "")).rsplit(".", 1)[-1] == "WandbLogger"


def uses_wandb(logger_cfg: Mapping[str, Any]) -> bool:
    return is_wandb(logger_cfg) and wandb_mode(logger_cfg) != "disabled"


def init_kwargs(logger_cfg: Mapping[str, Any], stage: str, group: str, save_dir: Path) -> dict[str, Any]:
    """Arguments of ``wandb.init`` (and ``WandbLogger``) for one stage."""
    save_dir.mkdir(parents=True, exist_ok=True)
    return {
        "project": str(logger_cfg.get("project", "vwl_lightning")),
        "entity": logger_cfg.get("entity"),
        "group": group,
        "job_type": stage,
        "name": f"{group}/{stage}",
        "tags": [str(t) for t in logger_cfg.get("tags", [])],
        "dir": str(save_dir),
        "mode": wandb_mode(logger_cfg),
        "reinit": "finish_previous",
    }


def log_masks(run: Any, key: str, images: Sequence[np.ndarray], class_names: Sequence[str],
              **masks: Sequence[np.ndarray | None]) -> None:
    """A list of ``wandb.Image`` with mask layers (one list per keyword, aligned with ``images``)."""
    items = [mask_image(image, class_names, **{name: layers[i] for name, layers in masks.items()})
             for i, image in enumerate(images)]
    if items:
        run.log({key: items})


@contextlib.contextmanager
def stage_run(logger_cfg: Mapping[str, Any], stage: str, group: str, save_dir: Path,
              config: Mapping[str, Any] | None = None, finish: bool = True) -> Iterator[Any]:
    """A W&B run for a stage that has no Lightning trainer (seeds, pseudo labels); ``None`` when W&B is off."""
    if not uses_wandb(logger_cfg):
        yield None
        return
    import wandb

    # a stage trained with Lightning's WandbLogger still has its run open: add to it, then finish it
    run = wandb.run or wandb.init(config=dict(config or {}), **init_kwargs(logger_cfg, stage, group, save_dir))
    try:
        yield run
    finally:
        if finish:
            run.finish()


def finish_active_run() -> None:
    """End the W&B run a ``WandbLogger`` started, so the next stage or multirun job opens its own."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        return
    if wandb.run is not None:
        wandb.run.finish()


def denormalise(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
                ) -> np.ndarray:
    """CHW normalised float → HWC uint8 for display."""
    hwc = np.transpose(image, (1, 2, 0)) * np.asarray(std) + np.asarray(mean)
    return (np.clip(hwc, 0, 1) * 255).astype(np.uint8)


def wandb_image(image: np.ndarray, caption: str = "") -> Any:
    import wandb

    return wandb.Image(image, caption=caption)


def mask_image(image: np.ndarray, class_names: Sequence[str], caption: str = "",
               **masks: np.ndarray | None) -> Any:
    """``wandb.Image`` of ``image`` with one mask layer per keyword (e.g. prediction=..., ground_truth=...)."""
    import wandb

    labels = {i: name for i, name in enumerate(class_names)}
    labels[255] = "ignore"
    layers = {name: {"mask_data": np.asarray(m, dtype=np.uint8), "class_labels": labels}
              for name, m in masks.items() if m is not None}
    return wandb.Image(image, masks=layers, caption=caption)


def log_report(run: Any, metrics: Mapping[str, Any], prefix: str) -> None:
    """Headline numbers, the per-class IoU table and (for seeds) the background-score curve."""
    import wandb

    headline = {f"{prefix}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    per_class = metrics.get("per_class") or {}
    if per_class:
        table = wandb.Table(columns=["class", "iou", "precision", "recall"])
        for name, row in per_class.items():
            table.add_data(name, row.get("iou"), row.get("precision"), row.get("recall"))
        headline[f"{prefix}/per_class_iou"] = table
    curve = metrics.get("curve")
    if curve:
        table = wandb.Table(columns=["bg_score", "miou"], data=[[c["bg_score"], c["miou"]] for c in curve])
        headline[f"{prefix}/bg_score_curve"] = wandb.plot.line(table, "bg_score", "miou",
                                                               title="seed mIoU vs background score")
    run.log(headline)
    run.summary.update({k: v for k, v in headline.items() if isinstance(v, (int, float))})


def log_artifact(run: Any, path: Path, name: str, kind: str) -> None:
    """Attach a file (checkpoint, manifest) to the run as a W&B artifact."""
    import wandb

    artifact = wandb.Artifact(name=name.replace("/", "-"), type=kind)
    artifact.add_file(str(path))
    run.log_artifact(artifact)


def track_stage(cfg: DictConfig, stage: str, out_dir: Path, metrics: dict[str, Any], data: ResolvedData,
                split: str, prefix: str | None = None, finish: bool = True,
                **mask_sources: Callable[[str], np.ndarray]) -> None:
    """Log a stage's report (headline, per-class IoU table, background curve) and up to
    ``logger.max_images`` images with their masks (and ground truth) to W&B; nothing when W&B is off."""
    if not uses_wandb(cfg.logger) or rank_zero_only.rank != 0:
        return
    with stage_run(cfg.logger, stage, str(cfg.name), out_dir, {"stage": stage, "split": split}, finish) as run:
        log_report(run, metrics, prefix or stage)
        ids = data.layout.split_ids(split)[: int(cfg.logger.get("max_images", 0))]
        images = [load_rgb(data.layout.image_path(i)) for i in ids]
        truth = [read_label_png(data.layout.mask_path(i)) if data.layout.mask_path(i).is_file() else None
                 for i in ids]
        log_masks(run, f"{prefix or stage}/masks", images, data.meta.class_names, ground_truth=truth,
                  **{name: [source(i) for i in ids] for name, source in mask_sources.items()})
        if cfg.logger.get("log_artifacts", False) and (out_dir / "manifest.json").is_file():
            log_artifact(run, out_dir / "manifest.json", f"{cfg.name}-{stage}-manifest", "manifest")


def log_cam_grid(cfg: DictConfig, cam_dir: Path, grid_path: Path) -> None:
    """The CAM stage's overlay grid (``overlays.png``) in the stage's own W&B run; nothing when W&B is off."""
    from PIL import Image

    if not uses_wandb(cfg.logger):
        return
    with stage_run(cfg.logger, "cams", str(cfg.name), cam_dir, {"stage": "cams", "split": str(cfg.cam.split)}
                   ) as run:
        run.log({"cams/overlays": wandb_image(np.asarray(Image.open(grid_path).convert("RGB")),
                                              caption="image | CAM per labelled class | seed")})
