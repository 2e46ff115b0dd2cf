"""IRN pseudo masks (``pseudo.mode=irn``, spec §10): confident seeds → boundary branch → random walk → masks.

Three steps, each in its own folder with a manifest written last (so each resumes and is skipped once done):

1. ``<irn.out_dir>/seeds``: IRN's confident seeds of the training split (``make_pseudo_labels`` in
   ``confident`` mode: label-CRF at ``fg_thres`` 0.30 / ``bg_thres`` 0.05, 255 between; spec §10.2).
2. ``<irn.out_dir>/train``: the boundary branch (``modules/irn.py``) trained on those seeds;
   ``irn.ckpt`` + a resume point ``checkpoints/last.ckpt`` (rewritten every epoch); the manifest records a
   ``run_id`` and the CAM folder the seeds came from.
3. ``<pseudo.out_dir>``: for every image of ``pseudo.split``, the boundary map (image + flip, spec §10.6
   step 2), the sparse random walk of the stride-4 CAMs (``pseudo/random_walk.py``) and the label map
   (global max, 0.25 background plane) as ``masks/<id>.png`` (atomic); images of one size are walked
   together in batches of ``irn.walk.batch_size``.  Scored like the other pseudo masks.

Under DDP every rank takes part (:mod:`vwl_lightning.utils.distributed`): the confident seeds and the walk
shard their images over the ranks (each mask written once, the matrices summed once), and the boundary branch
trains with the run's DDP trainer on ``irn.batch_size`` split over the ranks; in one process it trains on one
device whatever the trainer says.

Bad input is refused before any work: CAMs of another split / data root (the CAM manifest), a boundary
checkpoint trained on other CAMs or an output folder made with another checkpoint or settings.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from vwl_lightning.cam.files import cam_path, check_cam_manifest, load_cam_file, resolve_class_names
from vwl_lightning.data.batching import image_size
from vwl_lightning.data.datamodule import per_device_batch, train_loader
from vwl_lightning.data.label_png import write_label_png
from vwl_lightning.data.layout import VOCLayout, load_rgb
from vwl_lightning.data.pseudo_mask_data import ScaleCropTransform
from vwl_lightning.data.source import ResolvedData
from vwl_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalise
from vwl_lightning.data.voc import SegmentationDataset
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.models.backbone import weights_from_checkpoint
from vwl_lightning.models.irnet import boundary_map
from vwl_lightning.modules.irn import IRNModule
from vwl_lightning.pseudo.affinity import source_box
from vwl_lightning.pseudo.random_walk import check_walk_settings, random_walk, walk_to_labels
from vwl_lightning.stages.make_pseudo_masks import (
    _check_previous_run,
    _remove_stale_temporaries,
    evaluate_pseudo_labels,
    is_complete_mask,
    make_pseudo_labels,
)
from vwl_lightning.tracking.loggers import build_callbacks, build_logger
from vwl_lightning.tracking.wandb_runs import cam_overlay, log_masks, stage_run, uses_wandb, wandb_image
from vwl_lightning.utils.distributed import (
    barrier,
    gather_counts,
    is_main,
    is_sharded,
    on_zero,
    rank_and_world,
    shard,
)
from vwl_lightning.utils.io import write_json_atomic
from vwl_lightning.utils.manifest import read_manifest, write_manifest

log = logging.getLogger(__name__)

FINAL_CHECKPOINT = "irn.ckpt"
MASKS_DIR = "masks"


def seeds_dir(cfg: DictConfig) -> Path:
    return Path(str(cfg.irn.out_dir)) / "seeds"


def train_dir(cfg: DictConfig) -> Path:
    return Path(str(cfg.irn.out_dir)) / "train"


def make_irn_seeds(cfg: DictConfig, data: ResolvedData) -> dict[str, Any]:
    """Step 1: confident seeds of ``irn.train_split`` (spec §10.2); skipped when its manifest is complete."""
    i = cfg.irn
    done = read_manifest(seeds_dir(cfg))
    if done is not None:
        return done
    s = i.seeds
    return make_pseudo_labels(
        i.cam_dir, data.layout, str(i.train_split), seeds_dir(cfg), mode="confident", crf_params=str(s.crf_preset),
        fg_thres=float(s.fg_thres), bg_thres=float(s.bg_thres), gt_prob=float(s.gt_prob),
        num_workers=int(s.num_workers), class_names=list(data.meta.class_names), evaluate=bool(s.evaluate),
        dataset=data.meta.name, progress=bool(cfg.trainer.enable_progress_bar))


def check_irn(cfg: DictConfig) -> None:
    """The start-up checks of IRN's ``_target_`` nodes and settings (one line naming ``irn.<key>``), read from the
    classes themselves; nothing is built."""
    i = OmegaConf.to_container(cfg.irn, resolve=True)
    IRNModule.check_arguments(i["backbone"], i["net"], i["optimizer"], i["scheduler"], i["backbone_source"],
                              i["radius"])


def _module_kwargs(cfg: DictConfig, run_id: str) -> dict[str, Any]:
    i = OmegaConf.to_container(cfg.irn, resolve=True)
    return {"backbone": i["backbone"], "net": i["net"], "optimizer": i["optimizer"], "scheduler": i["scheduler"],
            "backbone_source": i["backbone_source"], "classifier_dir": i["classifier_dir"], "radius": i["radius"],
            "cam_dir": str(Path(str(i["cam_dir"])).resolve()), "run_id": run_id}


def train_irn(cfg: DictConfig, data: ResolvedData) -> dict[str, Any]:
    """Step 2: train the boundary branch on the seeds (resumes from ``checkpoints/last.ckpt``)."""
    i = cfg.irn
    out = train_dir(cfg)
    done = read_manifest(out)
    if done is not None and Path(done["checkpoint"]).is_file():
        return done
    seeds = read_manifest(seeds_dir(cfg))
    if seeds is None:
        raise DataError(f"{seeds_dir(cfg)}: no completed IRN seed folder (manifest.json missing); run step 1")

    def read_run_id() -> str:
        out.mkdir(parents=True, exist_ok=True)
        id_file = out / "run_id.txt"  # kept across a kill so a resumed run keeps its id
        if not id_file.is_file():
            id_file.write_text(uuid.uuid4().hex + "\n")
        return id_file.read_text().strip()

    run_id = on_zero(read_run_id)
    pl.seed_everything(int(cfg.seed), workers=True)
    module = IRNModule(**_module_kwargs(cfg, run_id))
    transform = ScaleCropTransform(scales=tuple(float(v) for v in i.scales), crop_size=int(i.crop_size), hflip=True)
    dataset = SegmentationDataset(data.layout, str(i.train_split), transform, mask_root=Path(seeds["mask_dir"]))
    world = rank_and_world()[1]
    loader = train_loader(dataset, per_device_batch(int(i.batch_size), world, "irn.batch_size"), int(i.num_workers),
                          bool(cfg.data.pin_memory))
    args: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)
    args.update(max_epochs=int(i.max_epochs), limit_val_batches=0)
    if not is_sharded():  # one process: one device whatever the trainer says (no ranks to launch mid-stage)
        args.update(devices=1, num_nodes=1, strategy="auto")
    callbacks = build_callbacks(cfg.get("callbacks"), out, None)
    trainer = pl.Trainer(**args, default_root_dir=str(out), callbacks=callbacks,
                         logger=build_logger(cfg.logger, out, stage="irn", group=str(cfg.name)))
    resume = out / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(resume) if resume.is_file() else None,
                    weights_only=True)
    seconds = round(time.perf_counter() - started, 2)
    final = out / FINAL_CHECKPOINT
    partial = out / f".tmp-{FINAL_CHECKPOINT}"
    trainer.save_checkpoint(partial, weights_only=True)
    if trainer.is_global_zero:
        partial.replace(final)
        write_manifest(out, "irn_train", checkpoint=str(final), run_id=run_id, cam_dir=module.hparams.cam_dir,
                       seeds_dir=str(seeds_dir(cfg)), train_split=str(i.train_split),
                       backbone_source=str(i.backbone_source), images=len(dataset), seconds=seconds, ranks=world,
                       images_per_second=round(len(dataset) * int(i.max_epochs) / max(seconds, 1e-9), 2),
                       resumed_from=str(resume) if resume.is_file() else None,
                       metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
                       config=OmegaConf.to_container(cfg.irn, resolve=True))
    trainer.strategy.barrier()
    return read_manifest(out) or {"checkpoint": str(final), "run_id": run_id}


def load_irn(path: str | Path, cam_dir: str | Path) -> IRNModule:
    """Our boundary checkpoint, refused (one line) when it is not one or was trained on other CAMs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"irn.checkpoint {path}: boundary checkpoint not found; train IRN first (pseudo.mode=irn)")
    try:
        with weights_from_checkpoint():
            module = IRNModule.load_from_checkpoint(path, map_location="cpu", backbone_source="scratch",
                                                    classifier_dir=None, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not one of ours
        raise DataError(f"{path}: not a vwl_lightning IRN checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]})") from None
    trained_on = str(module.hparams.get("cam_dir", ""))
    if Path(trained_on).resolve() != Path(cam_dir).resolve():
        raise DataError(f"irn.checkpoint {path}: trained on the CAMs in {trained_on}, not {Path(cam_dir).resolve()}"
                        f" (a boundary map of another run); set irn.checkpoint or irn.cam_dir to match")
    return module.eval()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _batches(layout: VOCLayout, ids: Sequence[str], batch_size: int) -> list[list[str]]:
    """Ids grouped by image size, then cut into batches (one canvas per batch)."""
    groups: dict[tuple[int, int], list[str]] = defaultdict(list)
    for image_id in ids:
        groups[image_size(layout.image_path(image_id))].append(image_id)
    return [g[k:k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)]


def walk_batch(module: IRNModule, layout: VOCLayout, cam_dir: Path, ids: Sequence[str], num_classes: int,
               walk: dict[str, Any], device: torch.device) -> tuple[list[np.ndarray], torch.Tensor]:
    """Labels ``(H, W)`` of images of one size, and their boundary maps ``(N, h, w)``."""
    images = [load_rgb(layout.image_path(i)) for i in ids]
    records = [load_cam_file(cam_path(cam_dir, i), num_classes) for i in ids]
    height, width = images[0].shape[:2]
    for image_id, image, record in zip(ids, images, records, strict=True):
        if record.image_shape != image.shape[:2]:
            raise DataError(f"{cam_path(cam_dir, image_id)}: CAM size {record.image_shape[1]}x{record.image_shape[0]}"
                            f" differs from image {layout.image_path(image_id)} ({image.shape[1]}x{image.shape[0]})")
    x = torch.from_numpy(np.stack([normalise(im, IMAGENET_MEAN, IMAGENET_STD) for im in images])).permute(0, 3, 1, 2)
    with torch.no_grad():
        boundary = boundary_map(module.model, x.to(device), walk.get("pad_to"))
        k = max(1, max(r.keys.size for r in records))
        h, w = boundary.shape[-2:]
        cams = torch.zeros(len(ids), k, h, w, device=device)
        for n, r in enumerate(records):
            if r.keys.size:
                cams[n, : r.keys.size] = torch.from_numpy(np.asarray(r.cam, dtype=np.float32)).to(device)
        walked = random_walk(cams, boundary, float(walk["beta"]), int(walk["exp_times"]), int(walk["radius"]))
    labels = [walk_to_labels(walked[n, : r.keys.size].cpu(), r.keys, (height, width), float(walk["bg_thres"]))
              for n, r in enumerate(records)]
    return labels, boundary.cpu()


def make_irn_labels(cfg: DictConfig, data: ResolvedData) -> dict[str, Any]:
    """Step 3: the walk's pseudo masks of ``pseudo.split`` in ``pseudo.out_dir`` (resumable), scored."""
    i, p = cfg.irn, cfg.pseudo
    walk = OmegaConf.to_container(i.walk, resolve=True)
    check_walk_settings(walk["beta"], walk["exp_times"], walk["radius"], walk["bg_thres"])
    cam_dir, out_dir = Path(str(i.cam_dir)), Path(str(p.out_dir))
    if not cam_dir.is_dir():
        raise DataError(f"{cam_dir}: CAM directory not found")
    split = str(p.split)
    check_cam_manifest(cam_dir, split, data.layout.root, data.meta.name)
    names = resolve_class_names(cam_dir, list(data.meta.class_names))
    ids = data.layout.split_ids(split)
    missing = [m for m in ids if not cam_path(cam_dir, m).is_file()]
    if missing:
        raise DataError(f"{cam_path(cam_dir, missing[0])}: CAM file not found ({len(missing)} of {len(ids)} "
                        f"images of split '{split}' have none)")
    checkpoint = Path(str(i.checkpoint)) if i.get("checkpoint") else train_dir(cfg) / FINAL_CHECKPOINT
    module = load_irn(checkpoint, cam_dir)
    settings = {"cam_dir": str(cam_dir.resolve()), "split": split, "mode": "irn",
                "irn_run_id": str(module.hparams.get("run_id", "")), "walk": walk}
    mask_dir = out_dir / MASKS_DIR

    def prepare() -> tuple[int, list[str]]:
        mask_dir.mkdir(parents=True, exist_ok=True)
        _check_previous_run(out_dir, settings)
        removed = _remove_stale_temporaries(mask_dir)
        return removed, [m for m in ids if not is_complete_mask(mask_dir / f"{m}.png")]

    stale, todo = on_zero(prepare)  # one list for every rank, made before any rank writes
    device = _device(str(walk.get("device", "auto")))
    module = module.to(device)
    progress = bool(cfg.trainer.enable_progress_bar)
    started = time.perf_counter()
    mine = shard(todo)
    bar = tqdm(total=len(mine), desc="IRN random walk", unit="img", disable=not progress)
    for batch in _batches(data.layout, mine, int(walk["batch_size"])):
        labels, _ = walk_batch(module, data.layout, cam_dir, batch, len(names), walk, device)
        for image_id, mask in zip(batch, labels, strict=True):
            write_label_png(mask_dir / f"{image_id}.png", mask)
        bar.update(len(batch))
    bar.close()
    per_rank = gather_counts(len(mine))  # also waits for the slowest rank, so the time is the stage's
    seconds = time.perf_counter() - started
    manifest: dict[str, Any] = {
        **settings, "checkpoint": str(checkpoint), "data_root": str(data.layout.root), "mask_dir": str(mask_dir),
        "class_names": list(names),
        "counts": {"images": len(ids), "written": len(todo), "skipped": len(ids) - len(todo),
                   "written_per_rank": per_rank, "stale_temporaries_removed": stale},
        "walk_seconds": round(seconds, 2), "walk_images_per_second": round(len(todo) / max(seconds, 1e-9), 2),
        "device": str(device), "ranks": len(per_rank),
    }
    gt_missing = [m for m in ids if not data.layout.mask_path(m).is_file()]
    if bool(p.evaluate) and not gt_missing:
        metrics = evaluate_pseudo_labels(mask_dir, data.layout, ids, names, out_dir, allow_unlabelled=False,
                                         title=f"Pseudo labels (irn), {split} ({len(ids)} images)", progress=progress,
                                         extra={"mode": "irn", "split": split})
        manifest["metrics"] = {k: metrics[k] for k in ("miou", "pixel_accuracy") if k in metrics}
    elif bool(p.evaluate):
        manifest["metrics"] = None
    manifest.update(stage="pseudo", status="complete")
    if is_main():
        log_boundary_maps(cfg, data, module, cam_dir, ids, len(names), walk, device, out_dir)
        write_json_atomic(out_dir / "manifest.json", manifest)
    barrier()
    return manifest


def log_boundary_maps(cfg: DictConfig, data: ResolvedData, module: IRNModule, cam_dir: Path, ids: Sequence[str],
                      num_classes: int, walk: dict[str, Any], device: torch.device, out_dir: Path) -> None:
    """W&B: the first ``logger.max_images`` images with their boundary map B (jet overlay) and the walk's mask."""
    if not uses_wandb(cfg.logger) or int(cfg.logger.get("max_images", 0)) <= 0:
        return
    shown = [m for m in ids[: int(cfg.logger.max_images)]]
    items = []
    for batch in _batches(data.layout, shown, int(walk["batch_size"])):
        labels, boundary = walk_batch(module, data.layout, cam_dir, batch, num_classes, walk, device)
        for image_id, mask, b in zip(batch, labels, boundary, strict=True):
            image = load_rgb(data.layout.image_path(image_id))
            up = torch.nn.functional.interpolate(b[None, None], scale_factor=4, mode="bilinear",
                                                 align_corners=False)[0, 0, : image.shape[0], : image.shape[1]]
            items.append((image_id, cam_overlay(image, up.numpy()), image, mask))
    with stage_run(cfg.logger, "irn", str(cfg.name), out_dir, {"stage": "irn"}, finish=False) as run:
        run.log({"irn/boundary_maps": [wandb_image(overlay, caption=i) for i, overlay, _, _ in items]})
        log_masks(run, "irn/refined_masks", [im for _, _, im, _ in items], data.meta.class_names,
                  irn=[m for _, _, _, m in items])


def run_irn(cfg: DictConfig, data: ResolvedData) -> dict[str, Any]:
    """The three steps in order (each skipped once complete); with ``irn.checkpoint`` set only the walk runs.

    Returns the pseudo stage's manifest (with the seed metrics and the training speed under ``irn``).
    """
    seeds: dict[str, Any] = {}
    trained: dict[str, Any] = {}
    if not cfg.irn.get("checkpoint"):
        if str(cfg.irn.backbone_source) == "classifier" and not cfg.irn.get("classifier_dir"):
            raise ConfigError("irn.classifier_dir: backbone_source=classifier needs the classifier stage folder")
        grid = -(-int(cfg.irn.crop_size) // 4)
        try:
            source_box(grid, grid, int(cfg.irn.radius))
        except ConfigError as exc:
            raise ConfigError(f"irn.radius / irn.crop_size: {exc}") from None
        seeds = make_irn_seeds(cfg, data)
        trained = train_irn(cfg, data)
    manifest = make_irn_labels(cfg, data)
    manifest["irn"] = {"seed_metrics": seeds.get("metrics"), "train_seconds": trained.get("seconds"),
                       "train_images_per_second": trained.get("images_per_second")}
    if is_main():
        write_json_atomic(Path(str(cfg.pseudo.out_dir)) / "manifest.json", manifest)
    barrier()
    return manifest
