"""The segmenter's data: images with pseudo masks for training, with ground truth for validation (spec §7).

Also the checks run before training: every image of the split has a readable pseudo mask of its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vwl_lightning.data.batching import image_size
from vwl_lightning.data.datamodule import eval_loader, per_device_batch, train_loader
from vwl_lightning.data.meta import IGNORE_INDEX
from vwl_lightning.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    normalise,
    random_crop,
    resize_long_side,
    to_tensors,
)
from vwl_lightning.data.voc import SegmentationDataset, VOCLayout
from vwl_lightning.errors import ConfigError, DataError

MASKS_SUBDIR = "masks"


@dataclass
class ScaleCropTransform:
    """deeplab-pytorch's training augmentation (spec §7): rescale by a factor drawn uniformly from
    ``scales`` (bicubic image, nearest mask), horizontal flip with p = 0.5, normalise, then a random
    ``crop_size`` crop, padding the image with 0 after normalisation (= the mean colour) and the mask with 255.
    """

    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
    crop_size: int = 321
    hflip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        self.scales = tuple(float(s) for s in self.scales)
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ConfigError(f"segmenter.train_transform.scales must be positive numbers, got {list(self.scales)}")
        if self.crop_size <= 0:
            raise ConfigError(f"segmenter.train_transform.crop_size must be > 0, got {self.crop_size}")

    def __call__(self, image: np.ndarray, mask: np.ndarray | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        scale = self.scales[int(torch.randint(len(self.scales), ()).item())]
        if scale != 1.0:
            image, mask = resize_long_side(image, mask, max(1, round(max(image.shape[:2]) * scale)))
        if self.hflip and torch.rand(()) < 0.5:
            image = image[:, ::-1]
            mask = mask[:, ::-1] if mask is not None else None
        image, mask = random_crop(normalise(image, self.mean, self.std), mask, self.crop_size)
        return to_tensors(image, mask)


class CheckedMasks(Dataset):
    """A :class:`SegmentationDataset` whose masks must hold 0..C-1 or 255 (DataError naming the file)."""

    def __init__(self, dataset: SegmentationDataset, num_classes: int, what: str) -> None:
        self.dataset = dataset
        self.num_classes = num_classes
        self.what = what

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        mask = item["mask"]
        bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= self.num_classes))
        if bool(bad.any()):
            values = sorted({int(v) for v in mask[bad].flatten()[:1000].tolist()})[:5]
            raise DataError(f"{self.dataset.mask_path(item['id'])}: {self.what} values {values} are outside "
                            f"0..{self.num_classes - 1} and {IGNORE_INDEX}")
        return item


class SegmenterDataModule(pl.LightningDataModule):
    """Training: images with pseudo masks from ``mask_root`` (:class:`ScaleCropTransform`); validation:
    images with their ground truth (``EvalTransform(eval_size)``: long side resized, padded with 255).

    ``batch_size`` is the **global** batch; each device gets ``batch_size / world_size``.
    """

    def __init__(self, layout: VOCLayout, mask_root: Path, num_classes: int, train_split: str, val_split: str,
                 batch_size: int, eval_batch_size: int, num_workers: int, train_transform: dict,
                 eval_size: int, pin_memory: bool = False) -> None:
        super().__init__()
        self.layout, self.mask_root, self.num_classes = layout, Path(mask_root), num_classes
        self.train_split, self.val_split = train_split, val_split
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.train_transform = ScaleCropTransform(**{k: tuple(v) if isinstance(v, list) else v
                                                     for k, v in train_transform.items()})
        self.eval_transform = EvalTransform(size=eval_size, mean=self.train_transform.mean,
                                            std=self.train_transform.std)

    def setup(self, stage: str | None = None) -> None:
        world = self.trainer.world_size if self.trainer is not None else 1
        self.device_batch = per_device_batch(self.batch_size, world, "segmenter.batch_size")
        self.device_eval_batch = max(1, self.eval_batch_size // world)
        self.train_set = CheckedMasks(SegmentationDataset(self.layout, self.train_split, self.train_transform,
                                                          mask_root=self.mask_root), self.num_classes,
                                      "pseudo-mask")
        self.val_set = CheckedMasks(SegmentationDataset(self.layout, self.val_split, self.eval_transform),
                                    self.num_classes, "ground-truth")

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train_set, self.device_batch, self.num_workers, self.pin_memory)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.val_set, self.device_eval_batch, self.num_workers, self.pin_memory)


# -------------------------------------------------------------------------------------- pseudo-mask checks


def resolve_mask_dir(pseudo_dir: str | Path) -> Path:
    """The folder of ``<id>.png`` pseudo masks: ``<pseudo_dir>/masks`` (the pseudo stage's layout) when
    it exists, else ``pseudo_dir`` itself.  DataError when the folder does not exist."""
    folder = Path(pseudo_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"segmenter.pseudo_dir {folder}: pseudo-mask folder not found; run the pseudo stage "
                        f"first or point segmenter.pseudo_dir at a folder of <image id>.png masks")
    sub = folder / MASKS_SUBDIR
    return sub if sub.is_dir() else folder


def _png_header(path: Path) -> tuple[tuple[int, int], str]:
    try:
        with Image.open(path) as image:
            return (image.height, image.width), image.mode
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read pseudo mask ({exc})") from None


def check_pseudo_masks(mask_dir: Path, layout: VOCLayout, split: str) -> int:
    """Before training: every image of ``split`` has a palette/grey ``<id>.png`` in ``mask_dir`` of the
    image's size.  Reads headers only.  Returns the number of masks checked; DataError names the problem
    (empty folder, first missing mask with an example of what is there instead, first size mismatch)."""
    found = sorted(p.name for p in mask_dir.glob("*.png") if not p.name.startswith(".tmp-"))
    if not found:
        raise DataError(f"{mask_dir}: pseudo-mask folder is empty (no <image id>.png files); "
                        f"run the pseudo stage or set segmenter.pseudo_dir")
    ids = layout.split_ids(split)
    have = set(found)
    missing = [i for i in ids if f"{i}.png" not in have]
    if missing:
        wanted = {f"{i}.png" for i in ids}
        strays = [name for name in found if name not in wanted]
        example = f"; the folder holds e.g. '{strays[0]}', which names no image of the split" if strays else ""
        raise DataError(f"{mask_dir / (missing[0] + '.png')}: no pseudo mask for image '{missing[0]}' of split "
                        f"'{split}' ({len(missing)} of {len(ids)} images have none){example}")
    for image_id in ids:
        path = mask_dir / f"{image_id}.png"
        size, mode = _png_header(path)
        if mode not in ("P", "L"):
            raise DataError(f"{path}: a pseudo mask must be a palette (P) or grey (L) PNG of class indices, "
                            f"got mode {mode}")
        expected = image_size(layout.image_path(image_id))
        if size != expected:
            raise DataError(f"{path}: pseudo mask size {size[1]}x{size[0]} differs from its image's "
                            f"{expected[1]}x{expected[0]} ({layout.image_path(image_id)})")
    return len(ids)
