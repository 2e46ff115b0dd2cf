"""Seed evaluation: the mIoU of CAM seeds against ground truth over a background-score sweep (spec §5).

For every image of the split, its CAM file (``high_res``, ``keys``) and ground-truth mask are read once;
:class:`~vwl_lightning.evaluation.metrics.BackgroundSweep` accumulates a confusion matrix per background score, and
the report gives the mIoU at every score, the best one, and the per-class scores at the configured score
(spec §5: 0.13 for v2; the sweep default is 0.05..0.60 step 0.01, :func:`sweep_scores`).

Under DDP each rank scores its share of the images (:mod:`vwl_lightning.utils.distributed`); the matrices are
summed over ranks by the metric's synchronisation and rank 0 writes the report, so the numbers equal one
process's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vwl_lightning.cam.files import cam_path, check_cam_manifest, load_cam_file, resolve_class_names
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.data.layout import VOCLayout
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.evaluation.metrics import BackgroundSweep, scores_from_confusion
from vwl_lightning.evaluation.reports import build_metrics_dict, write_segmentation_report
from vwl_lightning.utils.distributed import collective_device, is_main, shard

log = logging.getLogger(__name__)

DEFAULT_SWEEP = {"start": 0.05, "stop": 0.60, "step": 0.01}  # conf/seeds/default.yaml's seeds.sweep


def sweep_scores(sweep: Mapping[str, Any] = DEFAULT_SWEEP) -> list[float]:
    """The background scores of ``seeds.sweep`` ({start, stop, step}): ``start, start+step, ...`` up to and
    including ``stop``, each rounded to 6 decimals."""
    start, stop, step = float(sweep["start"]), float(sweep["stop"]), float(sweep["step"])
    if step <= 0 or stop < start:
        raise ConfigError(f"seeds.sweep must have step > 0 and stop >= start, got "
                          f"{ {'start': start, 'stop': stop, 'step': step} }")
    return [round(float(v), 6) for v in np.arange(start, stop + step / 2, step)]


def sweep_scores_with(bg_scores: Sequence[float] | None, configured_score: float) -> list[float]:
    """The swept scores, sorted, with ``configured_score`` added if it is not already among them."""
    scores = list(sweep_scores() if bg_scores is None else bg_scores)
    if not any(abs(s - configured_score) < 1e-9 for s in scores):
        scores.append(float(configured_score))
    return sorted(float(s) for s in scores)


def evaluate_seeds(
    cam_dir: str | os.PathLike,
    layout: VOCLayout,
    split: str,
    out_dir: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    bg_scores: Sequence[float] | None = None,
    configured_score: float = 0.13,
    dataset: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the CAM seeds of ``split`` in one pass and write the report into ``out_dir``.

    Seed at score ``s``: ``argmax [s, CAMs]`` mapped through ``keys`` (ties to background).  Returns the
    metrics dict of ``metrics.json``: ``best_bg_score``, ``best_miou``, ``miou_at_configured``, the curve,
    and per-class IoU/precision/recall at the configured score (headline ``miou`` = the configured one).
    A missing or corrupt CAM file, a CAM manifest for another split/data set, or a ground-truth mask of the
    wrong size or with bad values raises DataError naming the file.
    """
    cam_dir = Path(cam_dir)
    if not cam_dir.is_dir():
        raise DataError(f"{cam_dir}: CAM directory not found")
    check_cam_manifest(cam_dir, split, layout.root, dataset)
    names = resolve_class_names(cam_dir, class_names)
    num_classes = len(names)
    ids = layout.split_ids(split)
    missing = [i for i in ids if not cam_path(cam_dir, i).is_file()]
    if missing:
        raise DataError(f"{cam_path(cam_dir, missing[0])}: CAM file not found ({len(missing)} of {len(ids)} "
                        f"images of split '{split}' have none)")
    sweep = BackgroundSweep(num_classes, sweep_scores_with(bg_scores, configured_score)).to(collective_device())
    for image_id in tqdm(shard(ids), desc=f"seed eval {split}", unit="img", disable=not progress):
        path = cam_path(cam_dir, image_id)
        record = load_cam_file(path, num_classes)
        gt_path = layout.mask_path(image_id)
        gt = read_label_png(gt_path)
        sweep.update(record.high_res, record.keys, gt, name=str(gt_path), cam_name=str(path))
    summary = sweep.summary(configured_score)
    conf = sweep.compute().cpu().numpy()[sweep.index_of(configured_score)]
    scores = scores_from_confusion(conf)
    extra = {
        "cam_dir": str(cam_dir),
        "split": split,
        "num_images": len(ids),
        "seed_rule": "argmax over [bg_score, CAMs] (float32), ties to background",
        "confusion_at_configured": np.asarray(conf, dtype=np.int64).tolist(),
    }
    title = f"CAM seeds, {split} ({len(ids)} images), bg score {configured_score:.2f}"
    if not is_main():  # the same numbers on every rank; rank 0 writes them
        return build_metrics_dict(scores, names, summary, configured_score, title, extra)
    metrics = write_segmentation_report(out_dir, scores, names, sweep=summary, configured_score=configured_score,
                                        title=title, extra=extra)
    if metrics.get("best_at_sweep_edge"):
        log.warning("seeds: the best background score %.2f is the %s end of the sweep %.2f-%.2f; the optimum may "
                    "lie outside it (widen seeds.sweep)", metrics["best_bg_score"], metrics["best_at_sweep_edge"],
                    min(bg_scores), max(bg_scores))
    return metrics
