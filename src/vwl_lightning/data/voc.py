"""Data sets in the PASCAL VOC on-disk layout (spec §4, §5): classification (image-level labels) and
segmentation (masks). The layout itself and its readers live in :mod:`vwl_lightning.data.layout`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from vwl_lightning.data.image_labels import labels_to_multi_hot
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.data.layout import VOCLayout, load_mask_for, load_rgb
from vwl_lightning.errors import DataError

__all__ = ["ClassificationDataset", "SegmentationDataset", "VOCLayout", "load_mask_for", "load_rgb"]


class ClassificationDataset(Dataset):
    """Images with their multi-hot image-level labels (foreground classes only), for the classifier."""

    def __init__(
        self,
        layout: VOCLayout,
        split: str,
        num_classes: int,
        transform: Callable[[np.ndarray, np.ndarray | None], tuple[Any, Any]] | None = None,
    ) -> None:
        self.layout = layout
        self.split = split
        self.num_classes = num_classes
        self.transform = transform
        self.ids = layout.split_ids(split)
        labels = layout.image_labels(self.ids, num_classes)
        empty = [i for i in self.ids if not labels[i]]
        if empty:
            raise DataError(
                f"{layout.mask_path(empty[0])}: image '{empty[0]}' of split '{split}' has no foreground label "
                f"({len(empty)} such images); every training image needs at least one class"
            )
        self.labels = {i: labels_to_multi_hot(labels[i], num_classes) for i in self.ids}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = load_rgb(self.layout.image_path(image_id))
        if self.transform is not None:
            image, _ = self.transform(image, None)
        return {"image": image, "label": self.labels[image_id], "id": image_id}


class SegmentationDataset(Dataset):
    """Images with their label masks (ground truth or pseudo masks in ``mask_dir``)."""

    def __init__(
        self,
        layout: VOCLayout,
        split: str,
        transform: Callable[[np.ndarray, np.ndarray | None], tuple[Any, Any]] | None = None,
        mask_root: str | os.PathLike | None = None,
    ) -> None:
        self.layout = layout
        self.split = split
        self.transform = transform
        self.ids = layout.split_ids(split)
        self.mask_root = Path(mask_root) if mask_root is not None else layout.root / layout.mask_dir

    def __len__(self) -> int:
        return len(self.ids)

    def mask_path(self, image_id: str) -> Path:
        return self.mask_root / f"{image_id}.png"

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = load_rgb(self.layout.image_path(image_id))
        mask = read_label_png(self.mask_path(image_id))
        if mask.shape != image.shape[:2]:
            raise DataError(f"{self.mask_path(image_id)}: mask size {mask.shape[1]}x{mask.shape[0]} differs "
                            f"from its image's {image.shape[1]}x{image.shape[0]}")
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return {"image": image, "mask": mask, "id": image_id}
