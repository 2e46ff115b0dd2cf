"""Does the embedded benchmark show the two CAM failure modes, and does a method counter them?
(issue: ablation; the failure modes are built into :mod:`vwl_lightning.data.synthetic`).

The generator knows what the masks do not: which pixels of an object are its class-unique badge (the
discriminative part) and whether the image's background is its primary class's typical scene. Each image
is re-rendered from its seed (:func:`~vwl_lightning.data.synthetic.render_indexed`) to recover both. For
the normalised CAM ``cam_c`` of each labelled class c:

* **badge / body activation**: the mean of ``cam_c`` over the badge pixels of class-c objects and over
  their other (body) pixels. Partial activation shows as badge ≫ body; a method that widens CAMs to whole
  objects lowers the ratio badge / body towards 1. With class-specific bodies (``part_sharing < 1``) the body
  splits into its class-specific pixels and its shared ones: ``own_body_activation`` and
  ``shared_body_activation`` (NaN at ``part_sharing = 1``, where no pixel is class-specific).
* **spill on typical vs other scenes**: the background spill (fraction of CAM mass on background pixels,
  as in :mod:`vwl_lightning.evaluation.diagnostics`) of the primary class, split by whether the image sits on that
  class's typical scene. Background co-occurrence shows as higher spill on typical scenes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vwl_lightning.cam.files import cam_path, load_cam_file
from vwl_lightning.data.layout import VOCLayout
from vwl_lightning.data.meta import IGNORE_INDEX
from vwl_lightning.errors import DataError
from vwl_lightning.utils.io import read_json


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def mechanism_checks(cam_dir: str | Path, root: str | Path, split: str) -> dict[str, Any]:
    """Badge/body activation and typical/other-scene spill of the CAMs in ``cam_dir`` (synthetic data only)."""
    from vwl_lightning.data.synthetic import SyntheticConfig, render_indexed

    info = read_json(Path(root) / "dataset.json")
    if info.get("name") != "synthetic" or "generator" not in info:
        raise DataError(f"{Path(root) / 'dataset.json'}: mechanism checks need the embedded synthetic benchmark")
    config = SyntheticConfig(**info["generator"])
    layout = VOCLayout.at(root)
    badge, body, own, shared, spill_typical, spill_other = [], [], [], [], [], []
    for image_id in layout.split_ids(split):
        sample = render_indexed(config, split, int(image_id.rsplit("_", 1)[1]))
        record = load_cam_file(cam_path(cam_dir, image_id))
        valid = sample.mask != IGNORE_INDEX
        for cam, cls in zip(np.asarray(record.high_res, np.float32), record.keys, strict=True):
            objects = sample.mask == cls
            on_badge, on_body = objects & sample.part_mask, objects & ~sample.part_mask
            if on_badge.any() and on_body.any():
                badge.append(float(cam[on_badge].mean()))
                body.append(float(cam[on_body].mean()))
            on_own, on_shared = on_body & sample.own_mask, on_body & ~sample.own_mask
            if on_own.any() and on_shared.any():
                own.append(float(cam[on_own].mean()))
                shared.append(float(cam[on_shared].mean()))
            mass = float(cam[valid].sum())
            if cls == sample.primary_class and mass > 0:
                spill = float(cam[sample.mask == 0].sum()) / mass
                (spill_typical if sample.scene_is_typical else spill_other).append(spill)
    return {
        "badge_activation": _mean(badge), "body_activation": _mean(body),
        "badge_to_body_ratio": _mean(badge) / _mean(body) if body and _mean(body) > 0 else float("nan"),
        "own_body_activation": _mean(own), "shared_body_activation": _mean(shared),
        "spill_typical_scene": _mean(spill_typical), "spill_other_scene": _mean(spill_other),
        "objects": len(badge), "images_typical": len(spill_typical), "images_other": len(spill_other),
    }
