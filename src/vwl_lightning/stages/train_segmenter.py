"""Task: train the segmenter (``segmenter.arch``: DeepLabV2, spec §7 / §12, or EMANet, spec §11) on the pseudo
masks and evaluate it on val, without and with CRF (spec §7).

Outputs, under ``segmenter.out_dir`` (default ``<run_dir>/segmenter/``)::

    checkpoints/last.ckpt          Lightning's rolling checkpoint (resume point after a kill)
    segmenter.ckpt                 the final weights (written atomically when training ends)
    eval/predictions/<id>.png      test-time predictions, VOC palette
    eval/metrics.{json,md}, per_class_iou.png
    eval_crf/...                   the same after dense-CRF post-processing (when segmenter.eval.crf)
    manifest.json                  written last: inputs, settings, training and evaluation metrics

Test-time prediction (spec §7, :func:`~vwl_lightning.evaluation.multiscale.predict_probs`): multi-scale
(``eval.scales``) + flip (``eval.flip``) logits fused by ``eval.fusion``; P = softmax(fused logits),
prediction = argmax P.
CRF variant: ``Q = CRF(image, P)`` with ``eval.crf_preset`` (spec §7: ``deeplab_test``;
:func:`vwl_lightning.pseudo.dense_crf.crf_from_probs`, unary −log P), prediction = argmax Q.
Scores: :class:`~vwl_lightning.evaluation.metrics.SegmentationConfusion` (255 ignored, mIoU over the classes that
occur), reported by :func:`~vwl_lightning.evaluation.reports.write_segmentation_report`.

Run again with the same folder: a completed stage is skipped; an interrupted one resumes training from
``last.ckpt``, or, when ``segmenter.ckpt`` already exists, only redoes the evaluation.  Bad pseudo masks
(folder missing or empty, names or sizes that do not match the images) are reported before training.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vwl_lightning.data.datamodule import collate
from vwl_lightning.data.label_png import read_label_png, write_label_png
from vwl_lightning.data.layout import VOCLayout, load_rgb
from vwl_lightning.data.pseudo_mask_data import SegmenterDataModule, check_pseudo_masks, resolve_mask_dir
from vwl_lightning.data.source import ResolvedData, resolve_data
from vwl_lightning.data.transforms import EvalTransform
from vwl_lightning.errors import ConfigError, DataError, load_error_text
from vwl_lightning.evaluation.metrics import SegmentationConfusion
from vwl_lightning.evaluation.multiscale import predict_probs
from vwl_lightning.evaluation.reports import write_segmentation_report
from vwl_lightning.models.caffe_deeplab import CAFFE_BACKBONE, caffe_input_norm
from vwl_lightning.modules.emanet import EMANetModule
from vwl_lightning.modules.segmenter import SegmenterModule
from vwl_lightning.pseudo.dense_crf import CRFParams, crf_from_probs, crf_params_from_config
from vwl_lightning.tracking.loggers import build_callbacks, build_logger
from vwl_lightning.utils.checkpoints import AtomicCheckpointIO, usable_resume_checkpoint
from vwl_lightning.utils.manifest import read_manifest, write_manifest

log = logging.getLogger(__name__)

STAGE = "segmenter"
FINAL_CHECKPOINT = "segmenter.ckpt"
EVAL_DIR = "eval"
EVAL_CRF_DIR = "eval_crf"
PREDICTIONS = "predictions"
FUSIONS = ("max", "mean")
ARCHS = ("deeplabv2", "emanet")


# ----------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class EvalSettings:
    """Test-time settings (``segmenter.eval``): split, scales, flip, fusion, batch, CRF and its workers."""

    split: str
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    fusion: str = "max"
    batch_size: int = 1
    crf: bool = True
    crf_params: CRFParams = dataclasses.field(default_factory=CRFParams)
    crf_workers: int = 0

    @classmethod
    def from_config(cls, e: Any) -> EvalSettings:
        scales = tuple(float(s) for s in e.scales)
        if not scales or any(s <= 0 for s in scales):
            raise ConfigError(f"segmenter.eval.scales must be a non-empty list of positive numbers, got {list(scales)}")
        if e.fusion not in FUSIONS:
            raise ConfigError(f"segmenter.eval.fusion must be one of {FUSIONS}, got {e.fusion!r}")
        if int(e.batch_size) < 1:
            raise ConfigError(f"segmenter.eval.batch_size must be >= 1, got {e.batch_size}")
        workers = e.crf_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"segmenter.eval.crf_workers must be an integer >= 0, got {workers!r}")
        params = crf_params_from_config(
            {"preset": str(e.crf_preset), **(OmegaConf.to_container(e.crf_params, resolve=True) or {})},
            default="deeplab_test", prefix="segmenter.eval.crf_params")
        return cls(split=str(e.split), scales=scales, flip=bool(e.flip), fusion=str(e.fusion),
                   batch_size=int(e.batch_size), crf=bool(e.crf), crf_params=params, crf_workers=workers)


def segmenter_arch(cfg: DictConfig) -> str:
    """``segmenter.arch``: ``deeplabv2`` (spec §7, §12) or ``emanet`` (spec §11)."""
    arch = str(cfg.segmenter.arch)
    if arch not in ARCHS:
        raise ConfigError(f"segmenter.arch must be one of {ARCHS}, got {arch!r}")
    return arch


SEGMENTER_NODES = {"deeplabv2": ("backbone", "aspp", "msc", "loss", "optimizer", "scheduler", "groups"),
                   "emanet": ("backbone", "head", "loss", "optimizer", "scheduler", "groups")}


def check_segmenter(cfg: DictConfig) -> None:
    """The start-up checks of the segmenter's ``_target_`` nodes (one line naming ``segmenter.<key>``), read from
    the classes themselves; nothing is built."""
    arch = segmenter_arch(cfg)
    s = OmegaConf.to_container(cfg.segmenter, resolve=True)
    cls = EMANetModule if arch == "emanet" else SegmenterModule
    cls.check_arguments(**{name: s[name] for name in SEGMENTER_NODES[arch]})


def build_module(cfg: DictConfig, num_classes: int, class_names: list[str]) -> SegmenterModule | EMANetModule:
    """The LightningModule of ``segmenter.arch`` from the ``segmenter`` config."""
    s = OmegaConf.to_container(cfg.segmenter, resolve=True)
    arch = segmenter_arch(cfg)
    common = {"init_checkpoint": s["init_checkpoint"], "backbone_init": s["backbone_init"],
              "channels_last": bool(s["channels_last"]), "class_names": class_names}
    nodes = {name: s[name] for name in SEGMENTER_NODES[arch]}
    if arch == "emanet":
        return EMANetModule(num_classes=num_classes, **nodes, eval_pad_8k1=bool(s["eval"]["pad_8k1"]), **common)
    return SegmenterModule(num_classes=num_classes, **nodes, **common)


def input_norm(cfg: DictConfig) -> dict[str, tuple[float, ...]]:
    """Mean/std of the data transforms (in units of the /255 image): the weight file's convention.

    The caffe DeepLab trunk (spec §12.6) expects ``x − mean_RGB`` on 0-255 pixels whatever the data set says
    (its conv1 is flipped to RGB at load time); every other trunk uses ``segmenter.train_transform.mean/std``.
    """
    s = cfg.segmenter
    if str(s.backbone.get("name", "")) == CAFFE_BACKBONE:
        return caffe_input_norm()
    return {"mean": tuple(float(v) for v in s.train_transform.mean),
            "std": tuple(float(v) for v in s.train_transform.std)}


def build_datamodule(cfg: DictConfig, data: ResolvedData, mask_dir: Path) -> SegmenterDataModule:
    s = cfg.segmenter
    transform = {**OmegaConf.to_container(s.train_transform, resolve=True), **input_norm(cfg)}
    return SegmenterDataModule(
        layout=data.layout, mask_root=mask_dir, num_classes=data.meta.num_classes, train_split=str(s.train_split),
        val_split=str(s.val.split), batch_size=int(s.batch_size), eval_batch_size=int(s.val.batch_size),
        num_workers=int(s.num_workers), train_transform=transform,
        eval_size=int(s.val.eval_size), pin_memory=bool(cfg.data.pin_memory),
    )


def build_trainer(cfg: DictConfig, stage_dir: Path, callbacks: list[pl.Callback]) -> pl.Trainer:
    """Trainer from ``cfg.trainer`` with the segmenter's schedule (``segmenter.max_steps`` / ``max_epochs``) and
    validation cadence (``segmenter.val``); ``trainer.limit_val_batches`` applies as in every stage."""
    s = cfg.segmenter
    args: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)
    args.update(max_epochs=int(s.max_epochs), max_steps=int(s.max_steps))
    if int(s.max_epochs) < 0 and int(s.max_steps) < 0:
        raise ConfigError("segmenter: set segmenter.max_epochs or segmenter.max_steps (both are -1)")
    if bool(s.val.enabled):
        args.update(check_val_every_n_epoch=int(s.val.every_n_epochs))
    else:
        args.update(limit_val_batches=0)
    return pl.Trainer(**args, default_root_dir=str(stage_dir), callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                      logger=build_logger(cfg.logger, stage_dir, stage=STAGE, group=str(cfg.name)))


# ---------------------------------------------------------------------------------------------- evaluation


class EvalImages(Dataset):
    """Full-size normalised images (no resize, no padding) with their ids, for test-time prediction."""

    def __init__(self, layout: VOCLayout, ids: Sequence[str], transform: EvalTransform) -> None:
        self.layout, self.ids, self.transform = layout, list(ids), transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, _ = self.transform(load_rgb(self.layout.image_path(self.ids[index])), None)
        return {"image": image, "id": self.ids[index]}


@dataclass(frozen=True)
class CrfJob:
    """One image's CRF post-processing (picklable for worker processes)."""

    image_path: str
    probs: np.ndarray
    params: CRFParams
    out_path: str


def run_crf_job(job: CrfJob) -> np.ndarray:
    """``argmax CRF(image, P)`` as uint8, also written to ``out_path`` (atomic palette PNG)."""
    image = load_rgb(Path(job.image_path))
    prediction = np.argmax(crf_from_probs(image, job.probs, job.params), axis=0).astype(np.uint8)
    write_label_png(job.out_path, prediction)
    return prediction


def _same_size_batches(layout: VOCLayout, ids: Sequence[str], batch_size: int) -> Iterator[list[int]]:
    from vwl_lightning.data.batching import SameSizeBatches, image_size

    return iter(SameSizeBatches([image_size(layout.image_path(i)) for i in ids], batch_size))


def evaluate_segmenter(module: SegmenterModule, layout: VOCLayout, stage_dir: Path, class_names: Sequence[str],
                       settings: EvalSettings, mean: Sequence[float], std: Sequence[float],
                       num_workers: int = 0, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Predict every image of ``settings.split``, write the PNGs and reports (module docstring).

    Returns ``{"eval": metrics, "eval_crf": metrics}`` (the latter only with ``settings.crf``), each the
    dict written to ``metrics.json``.
    """
    ids = layout.split_ids(settings.split)
    missing_gt = [i for i in ids if not layout.mask_path(i).is_file()]
    if missing_gt:
        raise DataError(f"{layout.mask_path(missing_gt[0])}: ground truth not found ({len(missing_gt)} of "
                        f"{len(ids)} images of split '{settings.split}'); evaluation needs every mask")
    device = next(module.parameters()).device
    module.eval()
    dataset = EvalImages(layout, ids, EvalTransform(size=0, mean=tuple(mean), std=tuple(std)))
    loader = DataLoader(dataset, batch_sampler=list(_same_size_batches(layout, ids, settings.batch_size)),
                        num_workers=num_workers, collate_fn=collate)
    num_classes = len(class_names)
    plain, refined = (SegmentationConfusion(num_classes, sync_on_compute=False),  # rank 0 sees every image
                      SegmentationConfusion(num_classes, sync_on_compute=False))
    plain_dir, crf_dir = stage_dir / EVAL_DIR, stage_dir / EVAL_CRF_DIR
    pool = None
    if settings.crf and settings.crf_workers > 0:
        pool = multiprocessing.get_context("spawn").Pool(settings.crf_workers)
    try:
        for batch in tqdm(loader, desc=f"segmenter eval {settings.split}", unit="batch", disable=not progress):
            probs = predict_probs(module, batch["image"].to(device), settings.scales, settings.flip,
                                  settings.fusion).cpu().numpy()
            jobs = []
            for image_id, p in zip(batch["id"], probs, strict=True):
                gt_path = layout.mask_path(image_id)
                gt = read_label_png(gt_path)
                prediction = p.argmax(axis=0).astype(np.uint8)
                write_label_png(plain_dir / PREDICTIONS / f"{image_id}.png", prediction)
                plain.update(prediction, gt, name=str(gt_path))
                if settings.crf:
                    jobs.append(CrfJob(str(layout.image_path(image_id)), p, settings.crf_params,
                                       str(crf_dir / PREDICTIONS / f"{image_id}.png")))
            results = pool.map(run_crf_job, jobs) if pool is not None else [run_crf_job(j) for j in jobs]
            for job, prediction in zip(jobs, results, strict=True):
                image_id = Path(job.out_path).stem
                gt_path = layout.mask_path(image_id)
                refined.update(prediction, read_label_png(gt_path), name=str(gt_path))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    common = {"split": settings.split, "num_images": len(ids), "scales": list(settings.scales),
              "flip": settings.flip, "fusion": settings.fusion, "msc": bool(module.model.msc_scales)}
    out = {EVAL_DIR: write_segmentation_report(
        plain_dir, plain.scores(), class_names, title=f"Segmenter, {settings.split} ({len(ids)} images)",
        extra={**common, "crf": None})}
    if settings.crf:
        out[EVAL_CRF_DIR] = write_segmentation_report(
            crf_dir, refined.scores(), class_names,
            title=f"Segmenter + CRF, {settings.split} ({len(ids)} images)",
            extra={**common, "crf": dataclasses.asdict(settings.crf_params)})
    return out


def _eval_device(cfg: DictConfig) -> torch.device:
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------------- stage


def _summary(manifest: dict[str, Any]) -> dict[str, Any]:
    ev = manifest.get("eval") or {}
    return {"checkpoint": manifest["checkpoint"], "miou": (ev.get(EVAL_DIR) or {}).get("miou"),
            "miou_crf": (ev.get(EVAL_CRF_DIR) or {}).get("miou"), "stage_dir": manifest.get("out_dir")}


def load_segmenter(path: Path, arch: str | None = None) -> SegmenterModule | EMANetModule:
    """Load our segmenter checkpoint (``arch`` None: read from its hyper-parameters); anything else is
    reported as a foreign checkpoint."""
    from vwl_lightning.models.backbone import weights_from_checkpoint

    try:
        if arch is None:
            hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters") or {}
            arch = "emanet" if "head" in hparams else "deeplabv2"
        cls = EMANetModule if arch == "emanet" else SegmenterModule
        # the checkpoint holds every weight: no hub, no ImageNet file, no initialisation files
        with weights_from_checkpoint():
            return cls.load_from_checkpoint(path, map_location="cpu", weights_only=True,
                                            init_checkpoint=None, backbone_init=None)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not one of ours
        raise DataError(f"{path}: not a vwl_lightning segmenter checkpoint ({load_error_text(exc)})") from None


def train_segmenter(cfg: DictConfig, data: ResolvedData | None = None) -> dict[str, Any]:
    """Train (or resume, or skip) the segmenter and evaluate it; return ``checkpoint``, ``miou``,
    ``miou_crf`` (None without CRF) and ``stage_dir``."""
    s = cfg.segmenter
    stage_dir = Path(str(s.out_dir))
    final = stage_dir / FINAL_CHECKPOINT
    done = read_manifest(stage_dir)
    if done is not None and final.is_file():
        log.info("segmenter: complete in %s, skipping", stage_dir)
        return _summary(done)
    settings = EvalSettings.from_config(s.eval)
    data = data or resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    meta = data.meta
    mask_dir = resolve_mask_dir(str(s.pseudo_dir))
    num_masks = check_pseudo_masks(mask_dir, data.layout, str(s.train_split))
    pseudo_manifest = read_manifest(Path(str(s.pseudo_dir))) or {}  # absent for a plain folder of masks
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg, data, mask_dir)
    resume = stage_dir / "checkpoints" / "last.ckpt"
    training: dict[str, Any] = {}
    trainer: pl.Trainer | None = None
    if final.is_file():
        log.info("segmenter: %s exists, redoing the evaluation only", final)
        module = load_segmenter(final, segmenter_arch(cfg))
        is_zero = True
        training["resumed_from"] = str(final)
    else:
        module = build_module(cfg, meta.num_classes, list(meta.class_names))
        callbacks = build_callbacks(cfg.get("callbacks"), stage_dir, s.get("checkpoint_every_n_steps"))
        trainer = build_trainer(cfg, stage_dir, callbacks)
        resumable = usable_resume_checkpoint(resume) is not None
        log.info("segmenter: training on %d pseudo masks from %s, outputs in %s%s", num_masks, mask_dir, stage_dir,
                 f" (resuming from {resume})" if resumable else "")
        training["resumed_from"] = str(resume) if resumable else None
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resumable else None, weights_only=True)
        training["seconds"] = round(time.perf_counter() - started, 2)
        partial = stage_dir / f".tmp-{FINAL_CHECKPOINT}"
        trainer.save_checkpoint(partial, weights_only=True)
        is_zero = trainer.is_global_zero
        training.update(metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
                        epochs=trainer.current_epoch, global_step=trainer.global_step)
        if is_zero:
            os.replace(partial, final)
    if is_zero:
        module = module.to(_eval_device(cfg))
        started = time.perf_counter()
        evaluation = evaluate_segmenter(
            module, data.layout, stage_dir, list(meta.class_names), settings,
            mean=datamodule.train_transform.mean, std=datamodule.train_transform.std,
            num_workers=int(s.num_workers), progress=bool(cfg.trainer.enable_progress_bar))
        eval_seconds = round(time.perf_counter() - started, 2)
        headline = {name: {k: m[k] for k in ("miou", "pixel_accuracy")} for name, m in evaluation.items()}
        manifest = write_manifest(
            stage_dir, STAGE, checkpoint=str(final), out_dir=str(stage_dir), pseudo_dir=str(s.pseudo_dir),
            mask_dir=str(mask_dir), num_pseudo_masks=num_masks, pseudo_metrics=pseudo_manifest.get("metrics"),
            train_split=str(s.train_split),
            data_root=str(data.layout.root), dataset=meta.name, class_names=list(meta.class_names),
            training=training, eval=headline, eval_seconds=eval_seconds, eval_settings=dataclasses.asdict(settings),
            config=OmegaConf.to_container(cfg, resolve=True))
        log.info("segmenter: val mIoU %s, with CRF %s -> %s", headline[EVAL_DIR]["miou"],
                 (headline.get(EVAL_CRF_DIR) or {}).get("miou"), manifest)
    if trainer is not None:
        trainer.strategy.barrier()  # the other ranks wait for rank 0's evaluation and manifest
    return _summary(read_manifest(stage_dir) or {"checkpoint": str(final)})
