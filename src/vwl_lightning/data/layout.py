"""The PASCAL VOC on-disk layout and its image/mask readers (spec §4, §5), free of torch so that CRF pool
workers start fast.

The layout, relative to a root folder (``VOCdevkit/VOC2012`` for the real data, the cache folder for
the embedded benchmark)::

    JPEGImages/<id>.jpg
    SegmentationClassAug/<id>.png        palette PNG: 0 background, 1..C-1 classes, 255 ignore
    ImageSets/Segmentation/<split>.txt   one image id per line
    cls_labels.json                      image-level labels derived from the masks (cached)

The embedded synthetic benchmark is written in exactly this layout, so this code reads both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vwl_lightning.data.image_labels import (
    LABELS_FILENAME,
    derive_image_labels,
    load_image_labels,
    save_image_labels,
)
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.errors import DataError


@dataclass(frozen=True)
class VOCLayout:
    """Paths of a data set in the VOC layout. ``root`` is the folder that holds ``JPEGImages``."""

    root: Path
    image_dir: str = "JPEGImages"
    mask_dir: str = "SegmentationClassAug"
    split_dir: str = "ImageSets/Segmentation"
    image_suffix: str = ".jpg"
    labels_file: str = LABELS_FILENAME
    _checked: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def at(cls, root: str | os.PathLike, **kwargs: Any) -> VOCLayout:
        """Build a layout and check that its root and image folder exist."""
        layout = cls(Path(root).expanduser(), **kwargs)
        if not layout.root.is_dir():
            raise DataError(f"data root {layout.root} does not exist; set data.root to the folder that holds "
                            f"{layout.image_dir}/")
        if not (layout.root / layout.image_dir).is_dir():
            raise DataError(f"data root {layout.root} has no {layout.image_dir}/ folder; expected the VOC layout "
                            f"(run `python -m vwl_lightning.data.check_layout {layout.root}`)")
        return layout

    def image_path(self, image_id: str) -> Path:
        return self.root / self.image_dir / f"{image_id}{self.image_suffix}"

    def mask_path(self, image_id: str) -> Path:
        return self.root / self.mask_dir / f"{image_id}.png"

    def split_path(self, split: str) -> Path:
        return self.root / self.split_dir / f"{split}.txt"

    @property
    def labels_path(self) -> Path:
        return self.root / self.labels_file

    def split_ids(self, split: str) -> list[str]:
        """Image ids of ``split``, in file order."""
        path = self.split_path(split)
        if not path.is_file():
            raise DataError(f"split list {path} not found; expected one image id per line")
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
        if not ids:
            raise DataError(f"split list {path} is empty")
        return ids

    def image_labels(self, image_ids: list[str], num_classes: int) -> dict[str, list[int]]:
        """Image-level labels of ``image_ids``, from the cache, deriving and caching the missing ones."""
        cached: dict[str, list[int]] = {}
        if self.labels_path.is_file():
            cached = load_image_labels(self.labels_path, num_classes)
        missing = [i for i in image_ids if i not in cached]
        if missing:
            cached.update(derive_image_labels(self.root / self.mask_dir, missing, num_classes))
            save_image_labels(self.labels_path, cached, num_classes)
        return {i: cached[i] for i in image_ids}


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image file as an ``(H, W, 3)`` uint8 RGB array, naming the file if it cannot be read."""
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None


def load_mask_for(layout: VOCLayout, image_id: str, image_shape: tuple[int, int]) -> np.ndarray:
    """Read the mask of ``image_id`` and check that its size matches the image's."""
    path = layout.mask_path(image_id)
    mask = read_label_png(path)
    if mask.shape != image_shape:
        raise DataError(f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image's "
                        f"{image_shape[1]}x{image_shape[0]}")
    return mask
