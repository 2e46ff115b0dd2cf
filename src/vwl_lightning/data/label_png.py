"""Reading and writing label masks as palette ("P" mode) PNGs, the VOC convention."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from vwl_lightning.data.meta import voc_palette
from vwl_lightning.errors import DataError
from vwl_lightning.utils.io import atomic_path


def write_label_png(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write an ``(H, W)`` integer mask with values in [0, 255] as a VOC-palette PNG, atomically."""
    if mask.ndim != 2:
        raise ValueError(f"{path}: a label mask must be 2-D, got shape {mask.shape}")
    if mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
        raise ValueError(f"{path}: label values must lie in [0, 255]")
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(voc_palette().reshape(-1).tolist())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as an ``(H, W)`` uint8 array of class indices (palette indices, not colours)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: label mask not found")
    try:
        with Image.open(p) as image:
            if image.mode not in ("P", "L"):
                raise DataError(
                    f"{p}: label mask must be a palette (P) or grey (L) PNG of class indices, got mode {image.mode}"
                )
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{p}: cannot decode label mask ({exc})") from None
