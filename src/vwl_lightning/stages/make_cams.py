"""Stage 2a: multi-scale + flip CAMs for every image of a split, one file per image (spec §5).

Lightning's predict loop runs a :class:`CamPredictor`; a :class:`CamFileWriter` (a
``BasePredictionWriter``) writes ``<out_dir>/<id>.npz`` atomically (format: :mod:`vwl_lightning.cam_files`).

* Batching: images of one size are batched together (:class:`SameSizeBatches`); at each scale the batch
  and its mirror images run in one forward pass, under ``inference_mode`` and optionally channels-last
  and bf16 autocast (``trainer.precision``).
* Resume: images whose file is complete are skipped; missing or unreadable ones are redone.
* DDP: each rank takes a disjoint, strided share of the images still to do, so every image is written
  exactly once (Lightning's own distributed sampler is turned off).
* ``manifest.json`` names the checkpoint (and its SHA-256), data set, split, scales, fusion and dtype;
  a directory made from another checkpoint or data set is refused.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset, Sampler

from vwl_lightning.cam import keep_labelled, multiscale_cams
from vwl_lightning.cam_files import CAM_MANIFEST, cam_path, is_complete_cam_file, save_cam_file, stride4_shape
from vwl_lightning.data.datamodule import collate
from vwl_lightning.data.layout import VOCLayout, load_rgb
from vwl_lightning.data.source import ResolvedData, resolve_data
from vwl_lightning.data.transforms import EvalTransform
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.models.backbone import sha256_of, weights_from_checkpoint
from vwl_lightning.models.classifier import VWLClassifier
from vwl_lightning.stages.classifier import ClassifierModule
from vwl_lightning.utils.io import read_json, write_json_atomic
from vwl_lightning.utils.manifest import read_manifest
from vwl_lightning.utils.precision import resolve_precision

log = logging.getLogger(__name__)

STAGE = "cams"
DTYPES = {"float16": np.float16, "float32": np.float32}


class CamInputs(Dataset):
    """Normalised full-size images with their 0-based foreground label indices."""

    def __init__(self, layout: VOCLayout, ids: Sequence[str], labels: dict[str, list[int]],
                 normalise: dict[str, Sequence[float]] | None = None) -> None:
        self.layout = layout
        self.ids = list(ids)
        self.labels = labels
        self.transform = EvalTransform(size=0, **{k: tuple(v) for k, v in (normalise or {}).items()})

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image, _ = self.transform(load_rgb(self.layout.image_path(image_id)), None)
        return {"image": image, "keys": torch.tensor([c - 1 for c in self.labels[image_id]]), "id": image_id}


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) read from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image header ({exc})") from None


class SameSizeBatches(Sampler[list[int]]):
    """Batches of up to ``batch_size`` indices whose images share one size, in a fixed order."""

    def __init__(self, sizes: Sequence[tuple[int, int]], batch_size: int) -> None:
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, size in enumerate(sizes):
            groups[size].append(index)
        self.batches = [members[i:i + batch_size] for members in groups.values()
                        for i in range(0, len(members), batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def collate_cams(items: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [item.pop("keys") for item in items]
    batch = collate(items)
    batch["keys"] = keys
    return batch


class CamDataModule(pl.LightningDataModule):
    """Serves this rank's share (``todo[rank::world]``) of the images that still need a CAM file."""

    def __init__(self, layout: VOCLayout, todo: list[str], labels: dict[str, list[int]], batch_size: int,
                 num_workers: int, normalise: dict[str, Sequence[float]] | None = None) -> None:
        super().__init__()
        self.layout, self.todo, self.labels, self.normalise = layout, todo, labels, normalise
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        share = self.todo[rank::world]
        dataset = CamInputs(self.layout, share, self.labels, self.normalise)
        sizes = [image_size(self.layout.image_path(i)) for i in share]
        return DataLoader(dataset, batch_sampler=SameSizeBatches(sizes, self.batch_size),
                          num_workers=self.num_workers, collate_fn=collate_cams)


class CamPredictor(pl.LightningModule):
    """Runs :func:`~vwl_lightning.cam.multiscale_cams` and keeps each image's labelled classes."""

    def __init__(self, classifier: VWLClassifier, scales: Sequence[float], flip: bool, flip_fusion: str,
                 channels_last: bool) -> None:
        super().__init__()
        if flip_fusion not in ("max", "sum"):
            raise ConfigError(f"cam.flip_fusion must be 'max' (VWL) or 'sum' (IRN), got {flip_fusion!r}")
        if not scales or any(s <= 0 for s in scales):
            raise ConfigError(f"cam.scales must be a non-empty list of positive numbers, got {list(scales)}")
        self.classifier = classifier.eval()
        self.scales = tuple(float(s) for s in scales)
        self.flip, self.flip_fusion, self.channels_last = flip, flip_fusion, channels_last
        if channels_last:
            self.classifier = self.classifier.to(memory_format=torch.channels_last)

    def _cam(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.classifier.cam(images)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        images = batch["image"]
        low_size = stride4_shape(*images.shape[-2:])
        high, low = multiscale_cams(self._cam, images, self.scales, self.flip, self.flip_fusion, low_size)
        results = []
        for i, image_id in enumerate(batch["id"]):
            keys = batch["keys"][i].to(high.device)
            results.append({
                "id": image_id,
                "keys": (keys + 1).cpu().numpy(),
                "high_res": keep_labelled(high[i], keys).cpu().numpy(),
                "cam": keep_labelled(low[i], keys).cpu().numpy(),
            })
        return results


class CamFileWriter(BasePredictionWriter):
    """Writes each predicted image's CAMs to ``<out_dir>/<id>.npz`` (atomic rename)."""

    def __init__(self, out_dir: Path, dtype: str) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = out_dir
        self.dtype = DTYPES[dtype]
        self.written = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        for item in prediction:
            save_cam_file(cam_path(self.out_dir, item["id"]), item["keys"], item["high_res"], item["cam"],
                          dtype=self.dtype)
            self.written += 1


def resolve_checkpoint(cam_cfg: Any) -> Path:
    """``cam.checkpoint`` if set, else the one named by the classifier stage's manifest."""
    if cam_cfg.get("checkpoint"):
        path = Path(str(cam_cfg.checkpoint)).expanduser()
    else:
        classifier_dir = Path(str(cam_cfg.classifier_dir))
        manifest = read_manifest(classifier_dir)
        if manifest is None:
            raise DataError(f"{classifier_dir}: no completed classifier stage (manifest.json missing); "
                            "train it first or set cam.checkpoint")
        path = Path(manifest["checkpoint"])
    if not path.is_file():
        raise DataError(f"{path}: classifier checkpoint not found (cam.checkpoint / cam.classifier_dir)")
    return path


def load_classifier(path: Path) -> ClassifierModule:
    """Load our classifier checkpoint; anything else is reported as a foreign checkpoint."""
    try:
        with weights_from_checkpoint():  # the checkpoint holds every weight: no hub, no weight file
            return ClassifierModule.load_from_checkpoint(path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not one of ours
        raise DataError(f"{path}: not a vwl_lightning classifier checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]})") from None


def check_or_start_manifest(out_dir: Path, identity: dict[str, Any]) -> None:
    """Refuse a directory whose manifest names another checkpoint or data set; else record ours."""
    path = out_dir / CAM_MANIFEST
    if path.is_file():
        previous = read_json(path)
        for key in ("checkpoint_sha256", "dataset", "data_root", "split"):
            if str(previous.get(key)) != str(identity[key]):
                raise DataError(f"{path}: this CAM directory holds CAMs made with {key}={previous.get(key)}, "
                                f"not {identity[key]}; use another cam.out_dir or delete the folder")
        for key in ("scales", "flip", "flip_fusion", "dtype"):
            if previous.get(key) != identity[key]:
                raise DataError(f"{path}: CAMs here were made with {key}={previous.get(key)}, not "
                                f"{identity[key]}; use another cam.out_dir")
        if previous.get("status") == "complete":
            return
    write_json_atomic(path, {**identity, "status": "running"})


def make_cams(cfg: DictConfig, data: ResolvedData | None = None) -> Path:
    """Write the CAM files of ``cfg.cam.split`` into ``cfg.cam.out_dir``; return that folder."""
    c = cfg.cam
    out_dir = Path(str(c.out_dir))
    if c.dtype not in DTYPES:
        raise ConfigError(f"cam.dtype must be float16 or float32, got {c.dtype!r}")
    checkpoint = resolve_checkpoint(c)
    data = data or resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    meta = data.meta
    ids = data.layout.split_ids(c.split)
    labels = data.layout.image_labels(ids, meta.num_classes)
    identity = {
        "stage": STAGE, "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_of(checkpoint),
        "dataset": meta.name, "data_root": str(data.layout.root), "split": c.split,
        "class_names": list(meta.class_names), "num_classes": meta.num_classes,
        "scales": [float(s) for s in c.scales], "flip": bool(c.flip), "flip_fusion": str(c.flip_fusion),
        "dtype": str(c.dtype),
    }
    module = load_classifier(checkpoint)
    if module.hparams.num_classes != meta.num_foreground:
        raise DataError(f"{checkpoint}: classifier has {module.hparams.num_classes} classes but data set "
                        f"'{meta.name}' has {meta.num_foreground}")
    predictor = CamPredictor(module.model, c.scales, c.flip, c.flip_fusion, c.channels_last)
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    precision = resolve_precision(str(c.precision), str(trainer_args.get("accelerator", "auto")))
    log.info("cams: precision %s (cam.precision=%s)", precision, c.precision)
    trainer_args.update(precision=precision, logger=False, use_distributed_sampler=False,
                        default_root_dir=str(out_dir), enable_checkpointing=False)
    for key in ("check_val_every_n_epoch", "limit_train_batches", "limit_val_batches", "log_every_n_steps"):
        trainer_args.pop(key, None)
    writer = CamFileWriter(out_dir, c.dtype)
    trainer = pl.Trainer(**trainer_args, callbacks=[writer])
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        check_or_start_manifest(out_dir, identity)
        for stale in out_dir.glob(".tmp-*"):
            stale.unlink(missing_ok=True)
    todo = [i for i in ids if not is_complete_cam_file(cam_path(out_dir, i))]
    log.info("cams: %d of %d images of '%s' to do, writing to %s", len(todo), len(ids), c.split, out_dir)
    if todo:
        datamodule = CamDataModule(data.layout, todo, labels, int(c.batch_size), int(c.num_workers),
                                   normalise=OmegaConf.to_container(cfg.data.normalise, resolve=True))
        trainer.predict(predictor, datamodule=datamodule, return_predictions=False)
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        incomplete = [i for i in ids if not is_complete_cam_file(cam_path(out_dir, i))]
        if incomplete:
            raise DataError(f"{cam_path(out_dir, incomplete[0])}: {len(incomplete)} CAM files missing after the run")
        write_json_atomic(out_dir / CAM_MANIFEST, {
            **identity, "status": "complete", "counts": {"images": len(ids), "written_this_run": len(todo)},
        })
    trainer.strategy.barrier()
    return out_dir


def cam_files_written(out_dir: str | os.PathLike) -> list[str]:
    """Ids of the complete CAM files in ``out_dir`` (for reports and tests)."""
    return sorted(p.stem for p in Path(out_dir).glob("*.npz") if is_complete_cam_file(p))
