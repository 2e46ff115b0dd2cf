"""Image/mask transforms of the classifier and segmenter (spec §4, §7).

Training (spec §4): random long-side resize to an integer in [lo, hi] (bicubic for the image, nearest
for the mask), horizontal flip with p = 0.5, ImageNet mean/std normalisation, then a random
``crop × crop`` crop with zero padding applied **after** normalisation (mask padded with 255).
Evaluation: resize the long side to ``size`` and pad to ``size × size`` (image 0 after normalisation,
mask 255), so a batch stacks and the padding is ignored by the metric.

Randomness comes from ``torch`` so that Lightning's per-worker seeding makes it reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vwl_lightning.data.meta import IGNORE_INDEX
from vwl_lightning.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,)).item())


def resize_long_side(image: np.ndarray, mask: np.ndarray | None, long_side: int
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize so that max(H, W) = ``long_side``; bicubic image, nearest mask."""
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    return image, mask


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(uint8 HWC / 255 − mean) / std as float32 HWC."""
    return (image.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def pad_to(image: np.ndarray, mask: np.ndarray | None, height: int, width: int
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad bottom/right to at least ``height × width``: image with 0, mask with 255."""
    h, w = image.shape[:2]
    ph, pw = max(0, height - h), max(0, width - w)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        if mask is not None:
            mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
    return image, mask


def random_crop(image: np.ndarray, mask: np.ndarray | None, crop: int
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Place the image at a random offset in a ``crop × crop`` window (zero/255 padded when smaller)."""
    h, w = image.shape[:2]
    out_img = np.zeros((crop, crop, image.shape[2]), dtype=image.dtype)
    out_mask = np.full((crop, crop), IGNORE_INDEX, dtype=np.uint8) if mask is not None else None
    # offsets: where the crop window starts in the image (if larger) or where the image starts in the window
    dy = _randint(0, abs(h - crop)) if h != crop else 0
    dx = _randint(0, abs(w - crop)) if w != crop else 0
    src_y, dst_y = (dy, 0) if h >= crop else (0, dy)
    src_x, dst_x = (dx, 0) if w >= crop else (0, dx)
    ch, cw = min(h, crop), min(w, crop)
    out_img[dst_y:dst_y + ch, dst_x:dst_x + cw] = image[src_y:src_y + ch, src_x:src_x + cw]
    if mask is not None and out_mask is not None:
        out_mask[dst_y:dst_y + ch, dst_x:dst_x + cw] = mask[src_y:src_y + ch, src_x:src_x + cw]
    return out_img, out_mask


def to_tensors(image: np.ndarray, mask: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HWC float → CHW tensor; mask → int64 tensor."""
    image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    mask_t = torch.from_numpy(mask.astype(np.int64)) if mask is not None else None
    return image_t, mask_t


@dataclass
class TrainTransform:
    """Random resize (long side in ``resize_long``), flip, normalise, random crop (spec §4)."""

    resize_long: tuple[int, int] = (320, 640)
    crop_size: int = 512
    hflip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        lo, hi = self.resize_long
        if not 0 < lo <= hi:
            raise ConfigError(f"data.train_transform.resize_long must be [lo, hi] with 0 < lo <= hi, "
                              f"got {list(self.resize_long)}")
        if self.crop_size <= 0:
            raise ConfigError(f"data.train_transform.crop_size must be > 0, got {self.crop_size}")

    def __call__(self, image: np.ndarray, mask: np.ndarray | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        image, mask = resize_long_side(image, mask, _randint(*self.resize_long))
        if self.hflip and torch.rand(()) < 0.5:
            image = image[:, ::-1]
            mask = mask[:, ::-1] if mask is not None else None
        image, mask = random_crop(normalise(image, self.mean, self.std), mask, self.crop_size)
        return to_tensors(image, mask)


@dataclass
class EvalTransform:
    """Resize the long side to ``size`` (0 keeps the image as it is), normalise, pad to ``size × size``."""

    size: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, image: np.ndarray, mask: np.ndarray | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.size > 0:
            image, mask = resize_long_side(image, mask, self.size)
            image, mask = pad_to(normalise(image, self.mean, self.std), mask, self.size, self.size)
        else:
            image = normalise(image, self.mean, self.std)
        return to_tensors(image, mask)
