"""Image-level labels derived from segmentation masks (spec §4: the classifier sees only these).

A class is present in an image when at least one pixel of its mask carries it (255 and 0 are not
classes). The labels of a split are cached as JSON beside the data set, so they are computed once:

    {"num_classes": C, "labels": {"<image id>": [c1, c2, ...]}}

where class indices are in label space (1..C-1; 0 is background).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.data.meta import IGNORE_INDEX
from vwl_lightning.errors import DataError
from vwl_lightning.utils.io import read_json, write_json_atomic

LABELS_FILENAME = "cls_labels.json"


def classes_in_mask(mask: np.ndarray, num_classes: int, source: str = "mask") -> list[int]:
    """Sorted foreground classes present in ``mask``; raises if a value is neither a class nor 255."""
    values = np.unique(mask)
    bad = [int(v) for v in values if v != IGNORE_INDEX and v >= num_classes]
    if bad:
        raise DataError(
            f"{source}: values {bad} are not classes; expected 0..{num_classes - 1} or {IGNORE_INDEX}"
        )
    return [int(v) for v in values if 0 < v < num_classes]


def derive_image_labels(
    mask_dir: str | os.PathLike, image_ids: Iterable[str], num_classes: int
) -> dict[str, list[int]]:
    """Read each ``<mask_dir>/<id>.png`` and list its foreground classes."""
    mask_dir = Path(mask_dir)
    return {
        image_id: classes_in_mask(read_label_png(mask_dir / f"{image_id}.png"), num_classes,
                                  str(mask_dir / f"{image_id}.png"))
        for image_id in image_ids
    }


def save_image_labels(path: str | os.PathLike, labels: dict[str, list[int]], num_classes: int) -> Path:
    """Write the label cache atomically."""
    return write_json_atomic(path, {"num_classes": num_classes, "labels": labels})


def load_image_labels(path: str | os.PathLike, num_classes: int) -> dict[str, list[int]]:
    """Read the label cache, checking that it was made for ``num_classes`` classes."""
    blob = read_json(path)
    if not isinstance(blob, dict) or "labels" not in blob:
        raise DataError(f"{path}: expected an object with a 'labels' key")
    if blob.get("num_classes") != num_classes:
        raise DataError(
            f"{path}: made for {blob.get('num_classes')} classes, but the data set has {num_classes}"
        )
    return {str(k): [int(c) for c in v] for k, v in blob["labels"].items()}


def labels_to_multi_hot(classes: list[int], num_classes: int) -> np.ndarray:
    """Multi-hot vector over the ``num_classes - 1`` foreground classes (class c sits at c - 1)."""
    vector = np.zeros(num_classes - 1, dtype=np.float32)
    for c in classes:
        vector[c - 1] = 1.0
    return vector
