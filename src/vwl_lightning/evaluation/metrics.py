"""Segmentation metrics in the WSSS convention (spec §5, "Eval set").

A confusion matrix ``conf[g, p]`` (rows: ground truth ``g``, columns: prediction ``p``) is accumulated over
the whole split, with ground-truth pixels equal to 255 ignored, and reduced once at the end:

* ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` with ``TP_c = conf[c, c]``, ``FP_c = sum_g conf[g, c] - TP_c``,
  ``FN_c = sum_p conf[c, p] - TP_c``;
* ``mIoU`` is the mean of ``IoU_c`` over the classes that **occur**, i.e. ``TP_c + FP_c + FN_c > 0`` (in the
  ground truth or in the prediction); a class absent from both is left out (NaN), not counted as 0 or 1;
* ``precision_c = TP_c / (TP_c + FP_c)``, ``recall_c = TP_c / (TP_c + FN_c)`` (NaN for a zero denominator);
* ``pixel_accuracy = trace(conf) / sum(conf)``.

Both metric classes are torchmetrics ``Metric`` s whose states are summed across DDP ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from vwl_lightning.data.meta import IGNORE_INDEX
from vwl_lightning.errors import ConfigError, DataError


def _to_numpy(array: Any) -> np.ndarray:
    """A NumPy view of an array or tensor (tensors are moved to the CPU)."""
    if isinstance(array, Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def check_target(target: np.ndarray, num_classes: int, shape: Sequence[int] | None, name: str | None,
                 ignore_index: int = IGNORE_INDEX) -> None:
    """DataError naming ``name`` unless ``target`` has ``shape`` and values in 0..C-1 or ``ignore_index``."""
    where = name if name is not None else "ground truth"
    if shape is not None and tuple(target.shape) != tuple(shape):
        raise DataError(f"{where}: ground-truth size {_size(target.shape)} differs from the prediction's "
                        f"{_size(shape)}")
    if not np.issubdtype(target.dtype, np.integer):
        raise DataError(f"{where}: ground truth must hold integer class indices, got {target.dtype}")
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bad.any():
        values = np.unique(target[bad])[:5].tolist()
        raise DataError(f"{where}: ground-truth values {values} are outside 0..{num_classes - 1} "
                        f"and {ignore_index}")


def _size(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in reversed(tuple(shape)))  # W x H like image tools print


def scores_from_confusion(conf: np.ndarray, unlabelled: np.ndarray | None = None) -> dict[str, Any]:
    """Scores of a ``(C, C)`` confusion matrix ``conf[gt, pred]`` (module docstring for the formulas).

    Returns ``miou``, ``pixel_accuracy`` and per-class arrays ``iou``, ``precision``, ``recall``,
    ``gt_pixels``, ``pred_pixels`` and ``present`` (TP+FP+FN > 0).  With ``unlabelled`` (``(C,)``: valid
    ground-truth pixels of each class that the prediction left unlabelled, 255) it also returns
    ``coverage`` = labelled / valid pixels, per-class ``coverage`` and ``miou_strict``, where unlabelled
    pixels count as false negatives: ``IoU_c = TP / (TP + FP + FN + unlabelled_c)``.
    """
    conf = np.asarray(conf, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {conf.shape}")
    tp = np.diag(conf)
    gt_pixels = conf.sum(axis=1)
    pred_pixels = conf.sum(axis=0)
    fp = pred_pixels - tp
    fn = gt_pixels - tp
    union = tp + fp + fn
    present = union > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, tp / union, np.nan)
        precision = np.where(pred_pixels > 0, tp / pred_pixels, np.nan)
        recall = np.where(gt_pixels > 0, tp / gt_pixels, np.nan)
    total = conf.sum()
    out: dict[str, Any] = {
        "miou": float(np.mean(iou[present])) if present.any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "iou": iou,
        "precision": precision,
        "recall": recall,
        "gt_pixels": gt_pixels.astype(np.int64),
        "pred_pixels": pred_pixels.astype(np.int64),
        "present": present,
    }
    if unlabelled is not None:
        unl = np.asarray(unlabelled, dtype=np.float64)
        valid = gt_pixels + unl
        strict_union = union + unl
        strict_present = strict_union > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            strict_iou = np.where(strict_present, tp / strict_union, np.nan)
            out["class_coverage"] = np.where(valid > 0, gt_pixels / valid, np.nan)
        out["coverage"] = float(total / valid.sum()) if valid.sum() > 0 else float("nan")
        out["miou_strict"] = (float(np.mean(strict_iou[strict_present])) if strict_present.any()
                              else float("nan"))
        out["iou_strict"] = strict_iou
        out["unlabelled_pixels"] = unl.astype(np.int64)
    return out


class SegmentationConfusion(MulticlassConfusionMatrix):
    """Confusion-matrix mIoU over a split (``MulticlassConfusionMatrix`` with ignore index 255).

    ``update(preds, target, name)`` checks the ground truth (same size as ``preds``, values in 0..C-1 or
    255; DataError naming ``name`` otherwise).  With ``pred_ignore_index`` set (e.g. 255 for confident-region
    pseudo masks), predicted pixels with that value are left out of the matrix and counted per ground-truth
    class in the ``unlabelled`` state, so :meth:`scores` also gives coverage and the strict mIoU.
    """

    unlabelled: Tensor

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 pred_ignore_index: int | None = None, **kwargs: Any) -> None:
        if num_classes < 2:
            raise ConfigError(f"num_classes: need at least 2 classes (background + 1), got {num_classes}")
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, validate_args=False, **kwargs)
        self.pred_ignore_index = pred_ignore_index
        self.add_state("unlabelled", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Any, target: Any, name: str | None = None, pred_name: str | None = None) -> None:
        """Add one image (or a batch) of integer predictions and ground truth to the matrix.

        Counted with ``np.bincount(gt * C + pred)`` on the CPU (much faster than torch there); the counts are
        added to the torch states, which DDP sums.
        """
        pred = _to_numpy(preds)
        gt = _to_numpy(target)
        c = self.num_classes
        check_target(gt, c, pred.shape, name, self.ignore_index)
        if not np.issubdtype(pred.dtype, np.integer):
            raise DataError(f"{pred_name or 'prediction'}: must hold integer class indices, got {pred.dtype}")
        valid = gt != self.ignore_index
        if self.pred_ignore_index is not None:
            unl = valid & (pred == self.pred_ignore_index)
            valid &= ~unl
            counts = np.bincount(gt[unl].astype(np.int64), minlength=c)
            self.unlabelled += torch.from_numpy(counts).to(self.unlabelled.device)
        pred_v, gt_v = pred[valid].astype(np.int64), gt[valid].astype(np.int64)
        outside = (pred_v < 0) | (pred_v >= c)
        if outside.any():
            raise DataError(f"{pred_name or name or 'prediction'}: predicted values "
                            f"{np.unique(pred_v[outside])[:5].tolist()} are outside 0..{c - 1}")
        counts = np.bincount(gt_v * c + pred_v, minlength=c * c).reshape(c, c)
        self.confmat += torch.from_numpy(counts).to(self.confmat.device)

    def scores(self) -> dict[str, Any]:
        """:func:`scores_from_confusion` of the matrix and unlabelled counts, both summed over DDP ranks."""
        with self.sync_context(should_sync=self._to_sync):
            conf = self.confmat.detach().cpu().numpy().copy()
            unl = self.unlabelled.detach().cpu().numpy().copy()
        return scores_from_confusion(conf, unl if self.pred_ignore_index is not None else None)


class BackgroundSweep(Metric):
    """Seed confusion matrices at many background scores in one pass (spec §5, "Background").

    For score ``s`` the seed is ``keys[argmax_k cam_k]`` where ``max_k cam_k > s`` and background otherwise,
    which is :func:`vwl_lightning.cam.files.cams_to_label` (float32 comparison, ties to background).  With
    the scores sorted, a pixel is foreground at score index ``i`` iff ``i < n``, ``n = #{s_j < max cam}``,
    so one histogram ``H[n, gt, label]`` over the pixels gives every matrix:
    ``conf[i, g, label>0] = sum_{n > i} H[n, g, label]`` and
    ``conf[i, g, 0] += sum_{n <= i} sum_l H[n, g, l]``.
    State: ``confmat`` ``(S, C, C)`` (rows gt, columns prediction), summed over DDP ranks.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    confmat: Tensor

    def __init__(self, num_classes: int, bg_scores: Sequence[float], ignore_index: int = IGNORE_INDEX,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        scores = np.asarray(list(bg_scores), dtype=np.float64)
        if scores.ndim != 1 or scores.size == 0:
            raise ConfigError("bg_scores: need a non-empty list of background scores")
        if np.any(np.diff(scores.astype(np.float32)) <= 0):
            raise ConfigError(f"bg_scores: must be strictly increasing (in float32), got {scores.tolist()}")
        if num_classes < 2:
            raise ConfigError(f"num_classes: need at least 2 classes (background + 1), got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.bg_scores = [float(s) for s in scores]
        self._scores32 = scores.astype(np.float32)
        self.add_state("confmat", torch.zeros(len(scores), num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, high_res: Any, keys: Any, target: Any, name: str | None = None,
               cam_name: str | None = None) -> None:
        """Add one image: ``high_res`` (K, H, W) CAMs, ``keys`` (K,) classes, ``target`` (H, W) labels.

        The histogram is counted in NumPy on the CPU and added to the torch state.
        """
        cams = _to_numpy(high_res).astype(np.float32, copy=False)
        keys_arr = _to_numpy(keys).astype(np.int64).reshape(-1)
        gt_all = _to_numpy(target)
        c, s = self.num_classes, len(self.bg_scores)
        if cams.ndim != 3 or cams.shape[0] != keys_arr.size:
            raise DataError(f"{cam_name or 'CAM'}: high_res shape {cams.shape} does not match "
                            f"{keys_arr.size} keys")
        if keys_arr.size and (keys_arr.min() < 1 or keys_arr.max() >= c):
            raise DataError(f"{cam_name or 'CAM'}: keys {keys_arr.tolist()} outside 1..{c - 1}")
        check_target(gt_all, c, cams.shape[1:], name, self.ignore_index)
        valid = gt_all != self.ignore_index
        gt = gt_all[valid].astype(np.int64)
        if keys_arr.size:
            label = keys_arr[cams.argmax(axis=0)[valid]]  # first maximum, as argmax over [s, CAMs]
            n_fg = np.searchsorted(self._scores32, cams.max(axis=0)[valid], side="left")  # #{s_j < max}
        else:
            label = np.zeros_like(gt)
            n_fg = np.zeros_like(gt)
        hist = np.bincount((n_fg * c + gt) * c + label, minlength=(s + 1) * c * c).reshape(s + 1, c, c)
        above = np.cumsum(hist[::-1], axis=0)[::-1][1:]  # conf_fg[i] = sum over n > i, i = 0..S-1
        below = np.cumsum(hist.sum(axis=2), axis=0)[:s]  # per gt class, sum over n <= i
        conf = above.copy()
        conf[:, :, 0] += below  # foreground labels are >= 1, so column 0 of `above` is empty
        self.confmat += torch.from_numpy(conf).to(self.confmat.device)

    def compute(self) -> Tensor:
        """The ``(S, C, C)`` confusion matrices, one per background score."""
        return self.confmat

    def curve(self) -> list[float]:
        """mIoU at every background score."""
        conf = self.compute().cpu().numpy()
        return [scores_from_confusion(m)["miou"] for m in conf]

    def index_of(self, bg_score: float, atol: float = 1e-9) -> int:
        """Index of ``bg_score`` among the swept scores (ConfigError if it was not swept)."""
        hits = np.flatnonzero(np.isclose(self.bg_scores, bg_score, rtol=0.0, atol=atol))
        if hits.size == 0:
            raise ConfigError(f"bg_score {bg_score} is not among the swept scores {self.bg_scores}")
        return int(hits[0])

    def summary(self, configured_score: float | None = None) -> dict[str, Any]:
        """Best score, best mIoU, the whole curve and (if given) the mIoU at ``configured_score``."""
        curve = self.curve()
        values = np.asarray(curve, dtype=np.float64)
        best = int(np.nanargmax(values)) if np.isfinite(values).any() else 0
        out: dict[str, Any] = {
            "bg_scores": list(self.bg_scores),
            "miou": curve,
            "best_bg_score": self.bg_scores[best],
            "best_miou": curve[best],
        }
        if configured_score is not None:
            index = self.index_of(configured_score)
            out["configured_bg_score"] = self.bg_scores[index]
            out["miou_at_configured"] = curve[index]
        return out
