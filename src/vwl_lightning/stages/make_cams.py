"""Stage 2a: multi-scale + flip CAMs for every image of a split, one file per image (spec §5).

Lightning's predict loop runs a :class:`CamPredictor`; a :class:`CamFileWriter` (a
``BasePredictionWriter``) writes ``<out_dir>/<id>.npz`` atomically (format: :mod:`vwl_lightning.cam.files`).

* Batching: images of one size are batched together (:class:`SameSizeBatches`); at each scale the batch
  and its mirror images run in one forward pass, under ``inference_mode`` and optionally channels-last
  and bf16 autocast (``trainer.precision``).
* Resume: images whose file is complete are skipped; missing or unreadable ones are redone.
* DDP: each rank takes a disjoint, strided share of the images still to do, so every image is written
  exactly once (Lightning's own distributed sampler is turned off).
* Rescaling (``cam.resize``, spec §5.1): ``pil_bicubic`` (default, the official inference) resizes the uint8
  image with PIL bicubic in the loader workers and then normalises; ``tensor_bicubic`` resizes the normalised
  batch with ``F.interpolate(bicubic)`` on the device.
* ``manifest.json`` names the checkpoint (and its SHA-256), data set, split, scales, fusion, resize and dtype;
  a directory made from another checkpoint or data set is refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from vwl_lightning.cam.files import CAM_MANIFEST, cam_path, is_complete_cam_file
from vwl_lightning.cam.inputs import CamDataModule, check_resize
from vwl_lightning.cam.writer import DTYPES, CamFileWriter
from vwl_lightning.data.source import ResolvedData, resolve_data
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.models.weight_files import sha256_of
from vwl_lightning.modules.cam_predictor import CamPredictor
from vwl_lightning.modules.classifier import load_classifier
from vwl_lightning.utils.io import read_json, write_json_atomic
from vwl_lightning.utils.manifest import read_manifest
from vwl_lightning.utils.precision import resolve_precision

log = logging.getLogger(__name__)

STAGE = "cams"


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
        if manifest.get("stage") != "classifier" or not manifest.get("checkpoint"):
            raise DataError(f"{classifier_dir / 'manifest.json'}: is the manifest of stage "
                            f"{manifest.get('stage')!r}, not of a classifier (cam.classifier_dir should name the "
                            f"classifier stage folder, e.g. runs/<name>/<tag>/classifier)")
        path = Path(str(manifest["checkpoint"]))
    if not path.is_file():
        raise DataError(f"{path}: classifier checkpoint not found (cam.checkpoint / cam.classifier_dir)")
    return path


def check_or_start_manifest(out_dir: Path, identity: dict[str, Any]) -> None:
    """Refuse a directory whose manifest names another checkpoint or data set; else record ours."""
    path = out_dir / CAM_MANIFEST
    if path.is_file():
        previous = read_json(path)
        for key in ("checkpoint_sha256", "dataset", "data_root", "split"):
            if str(previous.get(key)) != str(identity[key]):
                raise DataError(f"{path}: this CAM directory holds CAMs made with {key}={previous.get(key)}, "
                                f"not {identity[key]}; use another cam.out_dir or delete the folder")
        # fold_batchnorm is recorded only when true: absent means false (folders made before the knob existed)
        recorded = {**previous, "fold_batchnorm": previous.get("fold_batchnorm", False)}
        wanted = {**identity, "fold_batchnorm": identity.get("fold_batchnorm", False)}
        for key in ("scales", "flip", "flip_fusion", "resize", "dtype", "fold_batchnorm"):
            if recorded.get(key) != wanted[key]:
                raise DataError(f"{path}: CAMs here were made with {key}={recorded.get(key)}, not "
                                f"{wanted[key]}; use another cam.out_dir")
        if previous.get("status") == "complete":
            return
    write_json_atomic(path, {**identity, "status": "running"})


def make_cams(cfg: DictConfig, data: ResolvedData | None = None) -> Path:
    """Write the CAM files of ``cfg.cam.split`` into ``cfg.cam.out_dir``; return that folder."""
    c = cfg.cam
    out_dir = Path(str(c.out_dir))
    if c.dtype not in DTYPES:
        raise ConfigError(f"cam.dtype must be float16 or float32, got {c.dtype!r}")
    resize = check_resize(str(c.resize))
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
        "resize": resize, "dtype": str(c.dtype),
    }
    module = load_classifier(checkpoint)
    if module.hparams.num_classes != meta.num_foreground:
        raise DataError(f"{checkpoint}: classifier has {module.hparams.num_classes} classes but data set "
                        f"'{meta.name}' has {meta.num_foreground}")
    predictor = CamPredictor(module.model, c.scales, c.flip, c.flip_fusion, c.channels_last, resize,
                             bool(c.fold_batchnorm))
    if c.fold_batchnorm:
        identity["fold_batchnorm"] = True               # absent: false (folders made before the knob existed)
        log.info("cams: %d BatchNorms folded into their convolutions", predictor.folded_batchnorms)
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    precision = resolve_precision(str(c.precision), str(trainer_args.get("accelerator", "auto")))
    log.info("cams: precision %s (cam.precision=%s)", precision, c.precision)
    trainer_args.update(precision=precision, logger=False, use_distributed_sampler=False,
                        default_root_dir=str(out_dir), enable_checkpointing=False)
    # the CAMs cover every image of the split: the training loop's settings and debug limits do not apply
    for key in ("check_val_every_n_epoch", "limit_train_batches", "limit_val_batches", "log_every_n_steps",
                "fast_dev_run", "overfit_batches", "limit_predict_batches", "limit_test_batches"):
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
                                   normalise=OmegaConf.to_container(cfg.data.normalise, resolve=True),
                                   scales=[float(s) for s in c.scales], resize=resize)
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
