"""Dense-CRF pseudo labels from CAM files (spec §6), one palette PNG per image, resumable.

Two modes:

* ``"crf"`` (spec §6, v2/crf.py): unary = softmax over ``[bg_score, CAMs]``, dense CRF (preset ``vwl_cam``
  by default), argmax mapped through ``keys`` — a full mask with no ignored pixels.
* ``"confident"`` (spec §6, IRN ``cam_to_ir_label``): label-CRF of the seeds at ``fg_thres`` and at
  ``bg_thres`` (preset ``irn_label``); confident foreground, confident background, 255 in between.

Output: ``<out_dir>/masks/<id>.png`` (written atomically), then ``<out_dir>/manifest.json`` last, so a
manifest with ``status: complete`` means a complete run; while it runs, the manifest holds the settings with
``status: running``.  A re-run with the same settings skips images whose PNG exists and decodes and redoes
the rest; a re-run with other settings over an interrupted or finished folder is refused (no mixed masks).

Scoring against ground truth (when every mask of the split exists and ``evaluate``): the same confusion
matrix mIoU as the seeds (255 in the ground truth ignored).  Pixels a confident-region mask leaves at 255
are *not* predictions: they are left out of the matrix (so ``miou`` is the mIoU on labelled pixels), and
the report adds ``coverage`` = labelled / valid ground-truth pixels and ``miou_strict``, which counts every
unlabelled pixel as a miss of its ground-truth class (``IoU_c = TP / (TP + FP + FN + unlabelled_c)``).

Under DDP (:mod:`vwl_lightning.utils.distributed`) rank 0 checks the folder and lists the images still to
do, every rank writes its strided share of them (each mask once) and scores its share of the split; the
matrices are summed over ranks and rank 0 writes the report and the manifest (``counts.written_per_rank``).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vwl_lightning.cam.files import cam_path, check_cam_manifest, load_cam_file, resolve_class_names
from vwl_lightning.data.label_png import read_label_png, write_label_png
from vwl_lightning.data.layout import VOCLayout, load_rgb
from vwl_lightning.data.meta import IGNORE_INDEX
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.pseudo.confident_seeds import confident_region_labels
from vwl_lightning.pseudo.crf_masks import cam_crf_pseudo_mask
from vwl_lightning.pseudo.dense_crf import CRFParams, crf_params_from_config
from vwl_lightning.utils.distributed import barrier, collective_device, gather_counts, is_main, on_zero, shard
from vwl_lightning.utils.io import read_json, write_json_atomic

MASKS_DIR = "masks"
MANIFEST = "manifest.json"
MODES = ("crf", "confident")
DEFAULT_PRESET = {"crf": "vwl_cam", "confident": "irn_label"}


@dataclass(frozen=True)
class PseudoLabelJob:
    """Everything one worker needs for one image (picklable, so it works with the spawn start method)."""

    image_id: str
    image_path: str
    cam_file: str
    out_path: str
    mode: str
    bg_score: float
    params: CRFParams
    fg_thres: float
    bg_thres: float
    gt_prob: float
    num_classes: int
    ignore_index: int = IGNORE_INDEX


def make_one_pseudo_label(job: PseudoLabelJob) -> str:
    """Read the image and its CAM file, build the pseudo mask, write the PNG atomically; return the id."""
    image = load_rgb(Path(job.image_path))
    record = load_cam_file(job.cam_file, job.num_classes)
    if image.shape[:2] != record.image_shape:
        raise DataError(f"{job.cam_file}: CAM size {record.image_shape[1]}x{record.image_shape[0]} differs "
                        f"from image {job.image_path} ({image.shape[1]}x{image.shape[0]})")
    if job.mode == "crf":
        mask = cam_crf_pseudo_mask(image, record.high_res, record.keys, job.bg_score, job.params)
    else:
        mask = confident_region_labels(image, record.high_res, record.keys, job.fg_thres, job.bg_thres,
                                       job.params, job.gt_prob, job.ignore_index)
    write_label_png(job.out_path, mask)
    return job.image_id


def is_complete_mask(path: str | os.PathLike) -> bool:
    """True when ``path`` exists and decodes as a label PNG."""
    if not Path(path).is_file():
        return False
    try:
        read_label_png(path)
    except DataError:
        return False
    return True


def _remove_stale_temporaries(folder: Path) -> int:
    """Delete ``.tmp-*`` files a killed run left behind (atomic writes never leave them under final names)."""
    removed = 0
    for tmp in folder.glob(".tmp-*"):
        if tmp.is_file():
            tmp.unlink()
            removed += 1
    return removed


def _check_previous_run(out_dir: Path, settings: Mapping[str, Any]) -> None:
    """DataError if ``out_dir`` holds masks (finished or interrupted) made with other settings; else record
    ``settings`` with ``status: running``, so that an interrupted run is recognised by the next one and a
    complete manifest is present only after this run completes.

    A folder with masks but no manifest (made before the running record existed) is refused too: its masks
    could have been made with any settings.
    """
    path = out_dir / MANIFEST
    masks = out_dir / MASKS_DIR
    if path.is_file():
        previous = read_json(path)
        old = previous if isinstance(previous, dict) else {}
        for key, value in settings.items():
            if old.get(key, "<unset>") != value:
                state = "finished" if old.get("status") == "complete" else "interrupted"
                raise DataError(f"{path}: the pseudo labels there ({state} run) were made with "
                                f"{key}={old.get(key, '<unset>')!r}, not {value!r}; choose another output folder "
                                f"or delete it")
    elif masks.is_dir() and any(masks.glob("*.png")):
        raise DataError(f"{masks}: holds masks but {path} is missing, so their settings are unknown; choose another "
                        f"output folder or delete it")
    write_json_atomic(path, {**settings, "stage": "pseudo", "status": "running"})


def _validate(mode: str, bg_score: float, fg_thres: float, bg_thres: float, num_workers: int) -> None:
    if mode not in MODES:
        raise ConfigError(f"mode: unknown pseudo-label mode '{mode}'; choose from {list(MODES)}")
    if not 0.0 <= float(bg_score) <= 1.0:
        raise ConfigError(f"bg_score: need a value in [0, 1], got {bg_score}")
    if mode == "confident" and not 0.0 <= bg_thres < fg_thres <= 1.0:
        raise ConfigError(f"fg_thres/bg_thres: need 0 <= bg_thres < fg_thres <= 1, got {bg_thres}/{fg_thres}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"num_workers: need an integer >= 0, got {num_workers!r}")


def _run_jobs(jobs: list[PseudoLabelJob], num_workers: int, start_method: str, progress: bool) -> int:
    """Run ``jobs`` inline (``num_workers`` 0 or 1) or over a process pool; return how many ran."""
    bar = tqdm(total=len(jobs), desc="pseudo labels", unit="img", disable=not progress)
    done = 0
    try:
        if num_workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                make_one_pseudo_label(job)
                done += 1
                bar.update()
        else:
            context = multiprocessing.get_context(start_method)
            with context.Pool(processes=min(num_workers, len(jobs))) as pool:
                for _ in pool.imap_unordered(make_one_pseudo_label, jobs, chunksize=1):
                    done += 1
                    bar.update()
    finally:
        bar.close()
    return done


def evaluate_pseudo_labels(
    mask_dir: str | os.PathLike,
    layout: VOCLayout,
    ids: Sequence[str],
    class_names: Sequence[str],
    out_dir: str | os.PathLike,
    allow_unlabelled: bool,
    title: str,
    progress: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the masks in ``mask_dir`` against the layout's ground truth and write the report (module doc).

    Under DDP each rank scores its share of ``ids``; the matrix is summed over ranks and rank 0 writes.
    """
    from vwl_lightning.evaluation.metrics import SegmentationConfusion
    from vwl_lightning.evaluation.reports import build_metrics_dict, write_segmentation_report

    metric = SegmentationConfusion(len(class_names), pred_ignore_index=IGNORE_INDEX if allow_unlabelled else None
                                   ).to(collective_device())
    for image_id in tqdm(shard(ids), desc="score pseudo labels", unit="img", disable=not progress):
        pred_path = Path(mask_dir) / f"{image_id}.png"
        gt_path = layout.mask_path(image_id)
        metric.update(read_label_png(pred_path), read_label_png(gt_path), name=str(gt_path),
                      pred_name=str(pred_path))
    scores = metric.scores()
    if not is_main():
        return build_metrics_dict(scores, class_names, title=title, extra=extra)
    return write_segmentation_report(out_dir, scores, class_names, title=title, extra=extra)


def make_pseudo_labels(
    cam_dir: str | os.PathLike,
    layout: VOCLayout,
    split: str,
    out_dir: str | os.PathLike,
    *,
    bg_score: float = 0.15,
    crf_params: CRFParams | str | Mapping[str, Any] | None = None,
    mode: str = "crf",
    fg_thres: float = 0.30,
    bg_thres: float = 0.05,
    gt_prob: float = 0.7,
    num_workers: int = 0,
    class_names: Sequence[str] | None = None,
    evaluate: bool = True,
    dataset: str | None = None,
    start_method: str = "spawn",
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``<out_dir>/masks/<id>.png`` for every image of ``split``, then score and write the manifest.

    ``crf_params``: a :class:`CRFParams`, a preset name, a mapping, or None for the mode's default preset
    (``vwl_cam`` for ``crf``, ``irn_label`` for ``confident``).  ``bg_score`` is used by ``crf`` mode
    (spec §6: 0.15 in v2/crf.py), ``fg_thres``/``bg_thres``/``gt_prob`` by ``confident`` mode (IRN: 0.30,
    0.05, 0.7).  Returns the manifest dict (settings, counts, and the metrics when evaluated).
    """
    _validate(mode, bg_score, fg_thres, bg_thres, num_workers)
    params = crf_params_from_config(crf_params, default=DEFAULT_PRESET[mode])
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    if not cam_dir.is_dir():
        raise DataError(f"{cam_dir}: CAM directory not found")
    check_cam_manifest(cam_dir, split, layout.root, dataset)
    names = resolve_class_names(cam_dir, class_names)
    ids = layout.split_ids(split)
    missing = [i for i in ids if not cam_path(cam_dir, i).is_file()]
    if missing:
        raise DataError(f"{cam_path(cam_dir, missing[0])}: CAM file not found ({len(missing)} of {len(ids)} "
                        f"images of split '{split}' have none)")

    settings: dict[str, Any] = {
        "cam_dir": str(cam_dir.resolve()),
        "split": split,
        "mode": mode,
        "crf_params": dataclasses.asdict(params),
    }
    if mode == "crf":
        settings["bg_score"] = float(bg_score)
    else:
        settings.update(fg_thres=float(fg_thres), bg_thres=float(bg_thres), gt_prob=float(gt_prob))
    mask_dir = out_dir / MASKS_DIR

    def prepare() -> tuple[int, list[str]]:
        out_dir.mkdir(parents=True, exist_ok=True)
        _check_previous_run(out_dir, settings)
        mask_dir.mkdir(parents=True, exist_ok=True)
        removed = _remove_stale_temporaries(mask_dir)
        return removed, [i for i in ids if not is_complete_mask(mask_dir / f"{i}.png")]

    stale, todo = on_zero(prepare)  # one list for every rank, made before any rank writes
    jobs = [
        PseudoLabelJob(
            image_id=i, image_path=str(layout.image_path(i)), cam_file=str(cam_path(cam_dir, i)),
            out_path=str(mask_dir / f"{i}.png"), mode=mode, bg_score=float(bg_score), params=params,
            fg_thres=float(fg_thres), bg_thres=float(bg_thres), gt_prob=float(gt_prob),
            num_classes=len(names),
        )
        for i in shard(todo)
    ]
    per_rank = gather_counts(_run_jobs(jobs, num_workers, start_method, progress))
    written = sum(per_rank)

    manifest: dict[str, Any] = {
        **settings,
        "data_root": str(layout.root),
        "mask_dir": str(mask_dir),
        "class_names": list(names),
        "num_workers": num_workers,
        "counts": {"images": len(ids), "written": written, "skipped": len(ids) - written,
                   "written_per_rank": per_rank, "stale_temporaries_removed": stale},
    }
    gt_missing = [i for i in ids if not layout.mask_path(i).is_file()]
    if evaluate and not gt_missing:
        metrics = evaluate_pseudo_labels(
            mask_dir, layout, ids, names, out_dir, allow_unlabelled=mode == "confident",
            title=f"Pseudo labels ({mode}), {split} ({len(ids)} images)", progress=progress,
            extra={"mode": mode, "split": split,
                   "unlabelled_rule": "pseudo-mask 255 left out of the matrix; see coverage and miou_strict"})
        manifest["metrics"] = {k: metrics[k] for k in ("miou", "pixel_accuracy", "coverage", "miou_strict")
                               if k in metrics}
    elif evaluate:
        manifest["metrics"] = None
        manifest["evaluation_skipped"] = (f"{len(gt_missing)} of {len(ids)} ground-truth masks missing, "
                                          f"e.g. {layout.mask_path(gt_missing[0])}")
    manifest.update(stage="pseudo", status="complete")
    if is_main():
        write_json_atomic(out_dir / MANIFEST, manifest)
    barrier()  # the next step may read the manifest on any rank
    return manifest
