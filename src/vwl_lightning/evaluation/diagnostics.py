"""CAM diagnostics that show *why* seeds improve (the two failure modes the paper attacks, spec §2–3).

For an image with normalised CAMs ``cam_c`` (labelled classes only, each in [0, 1]) and ground truth ``y``
(255 ignored), with a fixed background score ``s``:

* **object completeness** of class c present in the image: the fraction of its ground-truth pixels that its
  CAM covers, |{p : y_p = c, cam_c(p) > s}| / |{p : y_p = c}|. Partial activation (CAMs on the most
  discriminative part only) keeps this low. Each (image, class) region counts once ("object").
* **background spill** of class c: the fraction of its CAM mass that falls on background pixels,
  Σ_{p : y_p = 0} cam_c(p) / Σ_{p : y_p ≠ 255} cam_c(p). Background co-occurrence drives it up.

Both are averaged over all (image, labelled class) pairs of a split; classes whose CAM is all zero on the
valid pixels are left out of the spill average.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vwl_lightning.cam.files import cam_path, load_cam_file
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.data.layout import VOCLayout
from vwl_lightning.data.meta import IGNORE_INDEX
from vwl_lightning.errors import DataError


@dataclass
class CamDiagnostics:
    """Running sums of per-object completeness and per-class spill."""

    completeness: list[float] = field(default_factory=list)
    spill: list[float] = field(default_factory=list)

    def update(self, high_res: np.ndarray, keys: np.ndarray, gt: np.ndarray, bg_score: float) -> None:
        """Add one image: ``high_res`` (K, H, W) normalised CAMs of classes ``keys`` (label space)."""
        cams = np.asarray(high_res, dtype=np.float32)
        if cams.shape[1:] != gt.shape:
            raise DataError(f"CAM size {cams.shape[1:]} differs from the ground truth's {gt.shape}")
        valid = gt != IGNORE_INDEX
        background = gt == 0
        for cam, cls in zip(cams, np.asarray(keys).reshape(-1), strict=True):
            region = gt == cls
            if region.any():
                self.completeness.append(float((cam[region] > bg_score).mean()))
            mass = float(cam[valid].sum())
            if mass > 0:
                self.spill.append(float(cam[background].sum()) / mass)

    def summary(self) -> dict[str, float]:
        """Mean object completeness and background spill (NaN when nothing was measured)."""
        return {
            "object_completeness": float(np.mean(self.completeness)) if self.completeness else float("nan"),
            "background_spill": float(np.mean(self.spill)) if self.spill else float("nan"),
            "objects": len(self.completeness),
        }


def diagnose_cams(cam_dir: str | Path, layout: VOCLayout, split: str, bg_score: float) -> dict[str, float]:
    """:class:`CamDiagnostics` over every image of ``split`` that has a ground-truth mask."""
    diagnostics = CamDiagnostics()
    for image_id in layout.split_ids(split):
        mask_path = layout.mask_path(image_id)
        record = load_cam_file(cam_path(cam_dir, image_id))
        gt = read_label_png(mask_path)
        if record.high_res.shape[1:] != gt.shape:
            raise DataError(f"{mask_path}: size {gt.shape} differs from its CAM's {record.high_res.shape[1:]}")
        diagnostics.update(record.high_res, record.keys, gt, bg_score)
    return diagnostics.summary()
